"""The run directory: config.yaml, metrics.jsonl, checkpoints/, best.pt, final.pt, summary.json.

Every file is written to a temporary name and renamed, so a killed run never leaves a torn file;
a rerun of the same command finds the latest checkpoint and continues from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from adr_scale.config import ConfigError, RunConfig, dump_yaml, to_dict
from adr_scale.run.lock import is_no_space, no_space

# Settings that change how a run is executed, not what it computes: a resume may change them.
OPERATIONAL_KEYS = {("train", "device"), ("train", "log_every"), ("train", "keep_checkpoints")}
EXECUTOR_FILE = "executor.json"  # where this run's checkpoints live (see RunDir.prepare)
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.pt$")


@contextlib.contextmanager
def _no_space_is_one_line(tmp: Path, flag: str = "--out"):
    """A full disk or quota is the user's to fix: one line naming the place, no torn file."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        # torch.save's zip writer reports the file's OSError as RuntimeError("unexpected pos")
        if not is_no_space(exc if isinstance(exc, OSError) else exc.__context__):
            raise
        tmp.unlink(missing_ok=True)
        raise no_space(flag, tmp.parent, tmp.name.removeprefix(".").removesuffix(".tmp"),
                       resume=True) from None


def atomic_write_text(path: Path, text: str, flag: str = "--out") -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with _no_space_is_one_line(tmp, flag):
        tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path, flag: str = "--out") -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with _no_space_is_one_line(tmp, flag), tmp.open("wb") as f:
        torch.save(obj, f)  # through a Python file, so a full disk is an OSError with its errno
    os.replace(tmp, path)


def atomic_copy(src: Path, dst: Path, flag: str = "--out") -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    with _no_space_is_one_line(tmp, flag):
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = []
    for section in sorted(set(a) | set(b)):
        va, vb = a.get(section), b.get(section)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += [f"{section}.{k}" for k in sorted(set(va) | set(vb))
                     if (section, k) not in OPERATIONAL_KEYS and va.get(k) != vb.get(k)]
        elif va != vb:
            keys.append(section)
    return keys


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    def prepare(self, cfg: RunConfig, executor: dict[str, Any]) -> None:
        """Create the directory, or check that an existing run was made with the same config and
        resumes from the same place. `executor` says where the checkpoints live:
        {"executor": "process"} (OUT/checkpoints/) or {"executor": "ray", "storage", "name"}.

        A directory without a finished epoch (a start that failed) is not a run yet: its
        config.yaml is replaced, so the corrected rerun is not refused.
        """
        config_file = self.path / "config.yaml"
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out: {str(self.path)!r} is a file; allowed: a directory "
                              "(new or a run directory)")
        if self.has_progress():
            self.check_executor(executor)
            if config_file.exists():
                self.check_config(self._read_config(config_file), cfg, "config.yaml")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config_file, dump_yaml(cfg))
        atomic_write_text(self.path / EXECUTOR_FILE, json.dumps(executor) + "\n")

    def _read_config(self, config_file: Path) -> dict[str, Any]:
        import yaml

        try:
            old = yaml.safe_load(config_file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict):
            raise ConfigError(f"--out: {str(config_file)!r} is not a config written by adr_scale "
                              "(unreadable YAML); restore it from a checkpoint or use another --out")
        return old

    def check_config(self, old: dict[str, Any], cfg: RunConfig, where: str) -> None:
        changed = config_differences(old, to_dict(cfg))
        if changed:
            raise ConfigError(f"--out: {str(self.path)!r} holds a run with another config "
                              f"(differs in {', '.join(changed)}) according to its {where}; use "
                              "another --out or delete that directory")

    def has_progress(self) -> bool:
        """Whether an epoch finished here (its row, checkpoint, best.pt or final.pt exists)."""
        return (bool(self._epoch_checkpoints()) or (self.path / "best.pt").exists()
                or (self.path / "final.pt").exists() or self._has_metric_rows())

    def _has_metric_rows(self) -> bool:
        try:
            return any((self.path / "metrics.jsonl").read_text().splitlines())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            return True  # a torn or unreadable metrics file still means rows were written

    def check_executor(self, executor: dict[str, Any]) -> None:
        """One resume source per run: the in-process and the Ray path keep their checkpoints in
        different places, so switching would retrain from scratch over best.pt and final.pt."""
        before = self._recorded_executor()
        if before is None or before == executor:
            return
        if before["executor"] != executor["executor"]:
            how = {"process": "in this process (--workers 0)", "ray": "on Ray (--workers >= 1)"}
            raise ConfigError(
                f"--workers: {str(self.path)!r} was trained {how[before['executor']]} and resumes "
                f"only that way (its checkpoints are not where {how[executor['executor']]} looks); "
                "rerun with the same --workers kind or use another --out")
        for key in ("storage", "name"):
            if key in before and before[key] != executor.get(key):
                flag = "--storage-path" if key == "storage" else "--name"
                raise ConfigError(f"{flag}: {str(self.path)!r} keeps its Ray checkpoints under "
                                  f"{key} {before.get(key)!r}, not {executor.get(key)!r}; rerun "
                                  f"with {flag} as before or use another --out")

    def _recorded_executor(self) -> dict[str, Any] | None:
        file = self.path / EXECUTOR_FILE
        if file.is_file():
            try:
                return json.loads(file.read_text())
            except (OSError, ValueError):
                return None
        # A run directory from before executor.json: its checkpoints say which path made it.
        if self._epoch_checkpoints():
            return {"executor": "process"}
        if (self.path / "ray").is_dir():
            return {"executor": "ray"}  # storage and name unknown: not compared
        return None

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self._epoch_checkpoints())
        return found[-1][1] if found else None

    def checkpoints_newest_first(self) -> list[Path]:
        return [p for _, p in sorted(self._epoch_checkpoints(), reverse=True)]

    def _epoch_checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoints.is_dir():
            return []
        return [(int(m.group(1)), p) for p in self.checkpoints.iterdir()
                if (m := _EPOCH_FILE.search(p.name))]

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch:04d}.pt"

    def save_epoch(self, state: dict[str, Any], epoch: int, keep: int) -> Path:
        self.checkpoints.mkdir(exist_ok=True)
        path = self.epoch_checkpoint(epoch)
        atomic_torch_save(state, path)
        for _, old in sorted(self._epoch_checkpoints())[:-keep]:
            old.unlink(missing_ok=True)
        return path
