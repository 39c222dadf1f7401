"""The files a Ray run and a Tune trial leave: written and read back without Ray."""

import json
import types

import torch

from adr_scale.run import files as runfiles


def _checkpoint(root, run, epoch, history, config=None):
    directory = root / run / runfiles.checkpoint_dir_name(epoch)
    directory.mkdir(parents=True)
    runfiles.write_checkpoint_files(directory, {"config": config or {"seed": epoch}}, history)
    return directory


def test_latest_history_and_config_come_from_the_newest_checkpoint(tmp_path):
    _checkpoint(tmp_path, "run", 1, [{"epoch": 1}])
    newest = _checkpoint(tmp_path, "run", 2, [{"epoch": 1}, {"epoch": 2}])
    (tmp_path / "run" / "epoch-0003.tmp").mkdir()  # not a checkpoint directory name
    assert runfiles.latest_history(str(tmp_path), "run") == [{"epoch": 1}, {"epoch": 2}]
    assert runfiles.stored_checkpoint_config(str(tmp_path), "run") == ("epoch-0002", {"seed": 2})
    assert torch.load(newest / runfiles.STATE_FILE) == {"config": {"seed": 2}}


def test_a_checkpoint_without_config_falls_back_to_an_older_one(tmp_path):
    _checkpoint(tmp_path, "run", 1, [])
    (_checkpoint(tmp_path, "run", 2, []) / runfiles.CONFIG_FILE).unlink()
    assert runfiles.stored_checkpoint_config(str(tmp_path), "run") == ("epoch-0001", {"seed": 1})


def test_a_run_without_checkpoints_reads_as_empty(tmp_path):
    assert runfiles.latest_history(str(tmp_path), "absent") == []
    assert runfiles.stored_checkpoint_config(str(tmp_path), "absent") is None
    assert runfiles.tune_checkpoint_files(None) == {}


def test_segment_files_round_trip_through_a_tune_checkpoint(tmp_path):
    src = _checkpoint(tmp_path, "run", 1, [{"epoch": 1}])
    dst = tmp_path / "tune"
    dst.mkdir()
    segments = [[0.0, 1.5, 1.0, 0.0, 0.5], [0.5, 2.0, 1.0, 0.1, 0.6]]
    lineage = [{"trial": "a", "from": 0, "until": 1, "run": "smoke-a-from0000-0123abcd"}]
    runfiles.write_segment_files(src, dst, segments, epoch=1, lineage=lineage)
    assert runfiles.read_segments(dst) == (segments, 1)
    assert runfiles.read_lineage(dst) == lineage
    fs, _ = runfiles.storage_filesystem(str(tmp_path))
    saved = runfiles.tune_checkpoint_files(types.SimpleNamespace(filesystem=fs, path=str(dst)))
    assert saved == {"history": [{"epoch": 1}],
                     "segments": {"segments": segments, "epoch": 1, "lineage": lineage}}
    assert json.loads((dst / runfiles.HISTORY_FILE).read_text()) == [{"epoch": 1}]


def test_an_epoch_retrained_after_a_fallback_gets_a_fresh_name_that_sorts_after_the_torn_one(
        tmp_path):
    assert runfiles.checkpoint_dir_name(3) == "epoch-0003"
    again = runfiles.checkpoint_dir_name(3, {"epoch-0003", "epoch-0004"})
    assert again == "epoch-0003-r01"
    assert runfiles.checkpoint_dir_name(3, {"epoch-0003", again}) == "epoch-0003-r02"
    assert runfiles.checkpoint_dir_name(5, {"epoch-0003", again}) == "epoch-0005"
    for name in ("epoch-0002", "epoch-0003", again, "epoch-0004"):
        (tmp_path / "run" / name).mkdir(parents=True)
    fs, dirs = runfiles.checkpoint_dirs(str(tmp_path), "run")
    assert [d.rsplit("/", 1)[1] for d in dirs] == ["epoch-0002", "epoch-0003", again, "epoch-0004"]
    older = runfiles.older_checkpoint_dirs(fs, dirs[2])  # a torn epoch-0003-r01 falls back
    assert [d.rsplit("/", 1)[1] for d in older] == ["epoch-0003", "epoch-0002"]


def test_a_torn_ray_record_is_set_aside_and_a_readable_one_kept(tmp_path):
    from adr_scale.run.files import RAY_SNAPSHOT_FILE, set_aside_torn_record

    run = tmp_path / "run"
    run.mkdir()
    assert set_aside_torn_record(str(tmp_path), "run") is None  # no record yet
    record = run / RAY_SNAPSHOT_FILE
    record.write_text('{"checkpoint_results": []}')
    assert set_aside_torn_record(str(tmp_path), "run") is None and record.exists()
    for torn in ("", '{"checkpoint_results": [{"checkpoint_di'):  # cut short by a kill
        record.write_text(torn)
        assert set_aside_torn_record(str(tmp_path), "run") == str(record.resolve())
        assert not record.exists() and (run / f"{RAY_SNAPSHOT_FILE}.torn").read_text() == torn
