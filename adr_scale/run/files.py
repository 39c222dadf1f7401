"""The files a Ray Train run and a Tune trial leave in their checkpoints, their writers and readers.

No Ray here: the drivers (`train`, `search.driver`) write these files and the reports
(`search.report`) read them, so imports go one way. Storage is a local directory, s3:// or
gs:// (pyarrow.fs).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from adr_scale.config import ConfigError

STATE_FILE = "state.pt"  # the engine's checkpoint inside each Ray Train checkpoint directory
HISTORY_FILE = "history.json"  # the epoch rows, small, so the driver need not fetch state.pt
CONFIG_FILE = "config.json"  # the resolved config, so the driver compares it before a resume
SEGMENTS_FILE = "segments.json"  # a PBT trial's learned schedule, in its Tune checkpoints
DIVERGED_FILE = ".diverged"  # the workers' divergence line, handed to the driver by the callback
FINISHED_FILE = "finished.json"  # beside a run's checkpoints once its Train run ended normally
# {file name: size in bytes} of the other files of a Ray Train checkpoint. Ray copies a checkpoint
# file by file, in no fixed order, so a copy cut short (a signal, a full disk) shows as a file
# missing or shorter than listed here, or as a missing or torn manifest.
MANIFEST_FILE = "manifest.json"

# Ray Train checkpoint directory names (train.py): epoch-0003, or epoch-0003-r01 for epoch 3
# trained again after a resume fell back past a torn epoch-0003 (names sort in training order)
CHECKPOINT_DIR = re.compile(r"epoch-\d+(-r\d+)?")


def checkpoint_dir_name(epoch: int, taken: frozenset[str] | set[str] = frozenset()) -> str:
    """The first of epoch-NNNN, epoch-NNNN-r01, ... not in `taken`: a resume that fell back past
    torn checkpoints must not report under their names, or Ray Train, evicting the torn entry,
    deletes the directory the new checkpoint was just written to."""
    name, again = f"epoch-{epoch:04d}", 0
    while name in taken:
        again += 1
        name = f"epoch-{epoch:04d}-r{again:02d}"
    return name


def storage_filesystem(storage: str):
    """(pyarrow filesystem, root path) of a storage path: local, s3:// or gs://."""
    import pyarrow.fs as pafs

    if "://" in storage:
        return pafs.FileSystem.from_uri(storage)
    return pafs.LocalFileSystem(), str(Path(storage).resolve())


def read_json(fs, path: str) -> Any:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def copy_from_storage(fs, src: str, dst: Path) -> None:
    """File `src` of filesystem `fs` copied to `dst` whole or not at all (a temporary beside it)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    with fs.open_input_stream(src) as fin, tmp.open("wb") as fout:
        while chunk := fin.read(1 << 24):
            fout.write(chunk)
    os.replace(tmp, dst)


def checkpoint_dirs(storage: str, run_name: str) -> tuple[Any, list[str]]:
    """(filesystem, full paths of run `run_name`'s checkpoint directories, oldest first)."""
    import pyarrow.fs as pafs

    fs, root = storage_filesystem(storage)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{run_name}", allow_not_found=True))
    return fs, sorted(i.path for i in infos if i.type == pafs.FileType.Directory
                      and CHECKPOINT_DIR.fullmatch(i.base_name))


def older_checkpoint_dirs(fs, path: str) -> list[str]:
    """The checkpoint directories beside checkpoint `path` (same run) that are older than it,
    newest first: where a resume falls back when `path` is unreadable."""
    import pyarrow.fs as pafs

    parent, name = path.rstrip("/").rsplit("/", 1)
    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    return sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                   and CHECKPOINT_DIR.fullmatch(i.base_name) and i.base_name < name),
                  reverse=True)


def stored_checkpoint_config(storage: str, run_name: str) -> tuple[str, dict[str, Any]] | None:
    """(directory name, config) of the newest checkpoint of run `run_name` that carries its
    config; None before the first epoch."""
    fs, dirs = checkpoint_dirs(storage, run_name)
    for path in reversed(dirs):
        try:
            return Path(path).name, read_json(fs, f"{path}/{CONFIG_FILE}")
        except (OSError, ValueError):  # an older checkpoint without config.json, or torn
            continue
    return None


def latest_run(storage: str, run_name: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(path of run `run_name`'s latest checkpoint, its epoch rows); (None, []) if none."""
    fs, dirs = checkpoint_dirs(storage, run_name)
    if not dirs:
        return None, []
    try:
        return dirs[-1], read_json(fs, f"{dirs[-1]}/{HISTORY_FILE}")
    except (FileNotFoundError, OSError):
        return dirs[-1], []


def latest_history(storage: str, run_name: str) -> list[dict[str, Any]]:
    """The epoch rows in the latest checkpoint of run `run_name` ([] if none)."""
    return latest_run(storage, run_name)[1]


def mark_finished(storage: str, run_name: str, record: dict[str, Any]) -> None:
    """Record that run `run_name` trained to its end (written once its Train run returned)."""
    fs, root = storage_filesystem(storage)
    fs.create_dir(f"{root}/{run_name}", recursive=True)
    with fs.open_output_stream(f"{root}/{run_name}/{FINISHED_FILE}") as f:
        f.write(json.dumps(record).encode())


def is_finished(storage: str, run_name: str) -> bool:
    """Whether run `run_name` carries the record `mark_finished` writes."""
    import pyarrow.fs as pafs

    fs, root = storage_filesystem(storage)
    return fs.get_file_info(f"{root}/{run_name}/{FINISHED_FILE}").type == pafs.FileType.File


def dir_name(path: str) -> str:
    """The last component of a checkpoint directory's path (local or a URI's)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def write_checkpoint_files(directory: Path, ckpt: dict[str, Any],
                           history: list[dict[str, Any]]) -> None:
    """A Ray Train checkpoint's contents: the engine state, its epoch rows and its config."""
    import torch

    torch.save(ckpt, directory / STATE_FILE)
    (directory / HISTORY_FILE).write_text(json.dumps(history))
    (directory / CONFIG_FILE).write_text(json.dumps(ckpt["config"]))
    sizes = {n: (directory / n).stat().st_size for n in (STATE_FILE, HISTORY_FILE, CONFIG_FILE)}
    (directory / MANIFEST_FILE).write_text(json.dumps(sizes))


def incomplete(fs, path: str) -> str | None:
    """Why checkpoint directory `path` is not completely in storage, or None when its manifest
    reads and every file it lists is there with its size (no state.pt is read)."""
    import pyarrow.fs as pafs

    try:
        sizes = read_json(fs, f"{path}/{MANIFEST_FILE}")
    except FileNotFoundError:
        return f"{MANIFEST_FILE} is missing"
    except (OSError, ValueError):
        return f"{MANIFEST_FILE} is torn"
    infos = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))}
    for name, size in sizes.items():
        info = infos.get(name)
        if info is None or info.type != pafs.FileType.File:
            return f"{name} is missing"
        if info.size != size:
            return f"{name} holds {info.size} of its {size} bytes"
    return None


def newest_complete(storage: str, run_name: str) -> tuple[str, list[dict[str, Any]]] | None:
    """(path, epoch rows) of run `run_name`'s newest checkpoint that is completely in storage,
    whether or not Ray Train's checkpoint manager recorded it (reports queue behind the uploads,
    so a stopped run can leave newer checkpoints than it recorded); None if none. Reads no
    state.pt, so it is cheap on s3:// too; a checkpoint from before manifests does not count."""
    fs, dirs = checkpoint_dirs(storage, run_name)
    for path in reversed(dirs):
        if incomplete(fs, path) is None:
            try:
                return path, read_json(fs, f"{path}/{HISTORY_FILE}")
            except (OSError, ValueError):
                continue
    return None


RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


def set_aside_torn_record(storage: str, run_name: str) -> str | None:
    """Ray Train's record of run `run_name`'s checkpoints, when a kill cut its write short (an
    empty or partial JSON file), makes every rerun's controller fail as it starts
    (JSONDecodeError). Such a record is renamed `<name>.torn`, so Ray Train starts a new record;
    returns its path (None when it reads, or there is none). A run of `adr_scale.train` still
    resumes where it was: its workers take the newest readable checkpoint directory in storage,
    listed or not (`ray_adapter.newest_readable`); a Tune trial's run starts over."""
    fs, root = storage_filesystem(storage)
    path = f"{root}/{run_name}/{RAY_SNAPSHOT_FILE}"
    try:
        read_json(fs, path)
        return None
    except FileNotFoundError:
        return None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        fs.move(path, f"{path}.torn")
        return path


def drop_untracked(storage: str, run_name: str) -> list[str]:
    """Delete the checkpoint directories of a finished run that Ray Train's checkpoint manager
    does not track (a stopped run's unrecorded or torn ones; Ray never evicts them); returns
    their names. Nothing is deleted when the record is missing or unreadable."""
    fs, dirs = checkpoint_dirs(storage, run_name)
    try:
        record = read_json(fs, f"{storage_filesystem(storage)[1]}/{run_name}/{RAY_SNAPSHOT_FILE}")
        tracked = {r["checkpoint_dir_name"] for r in record["checkpoint_results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not tracked:
        return []
    dropped = [d for d in dirs if dir_name(d) not in tracked]
    for path in dropped:
        fs.delete_dir(path)
    return [dir_name(d) for d in dropped]


T = TypeVar("T")


def first_readable(candidates: Sequence[T], load: Callable[[T], Any], *, label: Callable[[T], str],
                   where: str, warn: bool = True) -> tuple[int, Any] | None:
    """(index, load(candidate)) of the first of `candidates` (newest first) that loads; None when
    there are none. Each one that does not load (a file torn by a full disk, a signal or a copy
    cut short) is named in one warning line (when `warn`) and skipped, so the run resumes one
    checkpoint earlier instead of stopping. Raises ConfigError when none loads. The one fall-back
    of the in-process run (drivers.newest_readable_checkpoint) and of the Ray Train workers
    (ray_adapter.newest_readable)."""
    for k, candidate in enumerate(candidates):
        try:
            return k, load(candidate)
        except Exception as exc:  # torch.load raises RuntimeError, EOFError, OSError, pickle errors
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
            if warn:
                print(f"warning: checkpoint {label(candidate)} is unreadable ({why}); trying the "
                      "one before it", file=sys.stderr, flush=True)
    if candidates:
        raise ConfigError(f"--out: none of the {len(candidates)} checkpoints in {where!r} is "
                          "readable; use another --out (or delete them to start over)")
    return None


def write_segment_files(src: Path, dst: Path, segments: list[list[float]], epoch: int,
                        lineage: list[dict[str, Any]] | None = None) -> None:
    """A PBT trial's Tune checkpoint: its Train checkpoint's state and rows plus the schedule
    learned so far (`segments`, after `epoch` epochs) and the segment runs that trained this
    state (`lineage`: trial, from, until, run; a donor's entries name the donor)."""
    for name in (STATE_FILE, HISTORY_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    (dst / SEGMENTS_FILE).write_text(json.dumps({"segments": segments, "epoch": epoch,
                                                 "lineage": lineage or []}))


def read_segments(directory: Path) -> tuple[list[list[float]], int]:
    """(segments, epochs done) of a PBT trial's Tune checkpoint directory."""
    saved = json.loads((directory / SEGMENTS_FILE).read_text())
    return saved["segments"], saved["epoch"]


def read_lineage(directory: Path) -> list[dict[str, Any]]:
    """The segment runs behind a PBT trial's Tune checkpoint ([] for an older checkpoint)."""
    return json.loads((directory / SEGMENTS_FILE).read_text()).get("lineage", [])


def tune_checkpoint_files(checkpoint) -> dict[str, Any]:
    """history.json and segments.json of a trial's last Tune checkpoint ({} if none); duck-typed
    on the checkpoint's `filesystem` and `path`, so no Ray import."""
    if checkpoint is None:
        return {}
    out = {}
    for key, name in (("history", HISTORY_FILE), ("segments", SEGMENTS_FILE)):
        try:
            out[key] = read_json(checkpoint.filesystem, f"{checkpoint.path}/{name}")
        except (FileNotFoundError, OSError):
            pass
    return out
