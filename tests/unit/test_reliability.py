"""Real faults (a NaN run, a torn checkpoint, a crafted pickle, a bad input) end in one line and
never in lost, mixed or non-finite results; the faults that need a second process are in
tests/integration/test_reliability_processes.py."""

import os
from pathlib import Path

import pytest
import torch

from adr_scale import evaluate as ev
from adr_scale import train as train_cli
from adr_scale.checkpoint import checkpoint_state, load_checkpoint
from adr_scale.config import ConfigError, apply_overrides, get_preset
from adr_scale.data import load_splits
from adr_scale.drivers import fit
from adr_scale.engine import build_state, run_epochs
from adr_scale.run.lock import LOCK_FILE, TrainingDiverged

pytestmark = pytest.mark.usefixtures("no_run_plots")  # tests/unit/conftest.py

# 1400 training images at batch 512: 2 steps per epoch, so a run of a few epochs takes ~1 s.
FAST = ["train.device=cpu", "train.batch_size=512", "data.val_size=100", "attack.steps=2",
        "attack.eval_steps=2", "train.log_every=1"]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def digits(one_thread):
    return load_splits(get_preset("smoke").data)


def _cfg(*overrides):
    return apply_overrides(get_preset("smoke"), [*FAST, *overrides])


def _cli(out, *overrides, workers=0):
    args = ["--preset", "smoke", "--out", str(out), "--workers", str(workers), "--no-progress"]
    for item in [*FAST, *overrides]:
        args += ["--set", item]
    return train_cli.main(args)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


# -- a diverged run stops, saves nothing non-finite, and evaluate refuses NaN weights ------


def test_nan_run_stops_with_one_line_and_saves_nothing(digits, tmp_path, capsys):
    out = tmp_path / "nan"
    # 21 steps per epoch, checked every 2: the loss is NaN from step 6 of epoch 1 on (warm-up
    # lr 1e6 * 6 / 21)
    assert _cli(out, "optim.lr=1e6", "train.batch_size=64", "train.log_every=2") == 1
    line = _error_line(capsys)
    assert "training diverged at step 6 (epoch 1): loss nan, lr 2.857e+05" in line
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "executor.json"]


def test_nonfinite_weights_after_a_finite_loss_are_never_saved(digits):
    cfg = _cfg("train.epochs=2")
    state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
    weight = dict(state.model.named_parameters())["net.features.0.weight"]

    def poison_last_step(state):  # the last update of epoch 1 leaves an inf weight
        if state.step == state.steps_per_epoch:
            with torch.no_grad():
                weight[0, 0, 0, 0] = float("inf")

    state.after_step = poison_last_step
    saved = []
    with pytest.raises(TrainingDiverged, match=r"by step 2 \(epoch 1\): the student weights "
                                                r"'net.features.0.weight' are non-finite"):
        run_epochs(state, digits.train, digits.val, lambda *a: saved.append(a))
    assert saved == [] and state.epoch == 0


def test_evaluate_refuses_a_checkpoint_with_nan_weights(digits, tmp_path):
    state = build_state(_cfg(), digits.info, len(digits.train), torch.device("cpu"))
    ckpt = checkpoint_state(state)
    ckpt["ema"]["net.features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "final.pt")
    with pytest.raises(ConfigError, match=r"non-finite ema weights \(1 tensors with NaN or inf, "
                                          r"e.g. 'net.features.0.weight'\); the run diverged"):
        ev.load_model(tmp_path / "final.pt", "ema")
    assert ev.load_model(tmp_path / "final.pt", "student").which == "student"  # the other is fine


# -- --workers 0 and --workers >= 1 never share one --out silently -------------------


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_switching_workers_kind_on_one_out_is_refused_before_writing(digits, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(out, "train.epochs=1") == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert _cli(out, "train.epochs=1", workers=1) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --workers: '{out}' was trained in this process (--workers 0)")
    assert _snapshot(out) == before  # no ray/ directory, best.pt, metrics.jsonl untouched


# -- resume compares the checkpoint's config; a failed start blocks nothing ---------


def test_resume_compares_the_checkpoint_config_when_config_yaml_is_gone(digits, tmp_path):
    out = tmp_path / "r"
    fit(_cfg("train.epochs=3", "optim.lr=0.1"), out, until_epoch=2, progress=False, splits=digits)
    (out / "config.yaml").unlink()
    best = (out / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"another config \(differs in adr.tau_start, optim.lr\) "
                                          r"according to its epoch-0002.pt"):
        fit(_cfg("train.epochs=3", "optim.lr=0.05", "adr.tau_start=4.0"), out, progress=False,
            splits=digits)
    assert (out / "best.pt").read_bytes() == best
    assert len(load_checkpoint(out / "checkpoints" / "epoch-0002.pt")["history"]) == 2


def test_a_failed_start_does_not_block_the_corrected_rerun(digits, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(TrainingDiverged):
        fit(_cfg("optim.lr=1e6", "train.batch_size=64", "train.log_every=2"), out,
            progress=False, splits=digits)
    assert (out / "config.yaml").exists() and not (out / LOCK_FILE).exists()
    summary = fit(_cfg("train.epochs=1"), out, progress=False, splits=digits)
    assert summary["final_epoch"] == 1 and summary["steps"] == 2


# -- a truncated latest checkpoint: resume from the one before it, and say so --------


def test_truncated_latest_checkpoint_falls_back_to_the_one_before(digits, tmp_path, capsys):
    cfg, out = _cfg("train.epochs=3"), tmp_path / "r"
    fit(cfg, out, until_epoch=2, progress=False, splits=digits)
    epoch2 = load_checkpoint(out / "checkpoints" / "epoch-0002.pt")
    latest = out / "checkpoints" / "epoch-0002.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a copy cut short
    capsys.readouterr()
    fit(cfg, out, progress=False, splits=digits)
    err = capsys.readouterr().err
    assert f"warning: checkpoint {latest} is unreadable" in err
    assert f"resuming from {out / 'checkpoints' / 'epoch-0001.pt'} (epoch 1)" in err
    final = load_checkpoint(out / "final.pt")
    assert final["step"] == 6 and [r["epoch"] for r in final["history"]] == [1, 2, 3]
    again = load_checkpoint(out / "checkpoints" / "epoch-0002.pt")  # epoch 2, trained again
    assert all(torch.equal(epoch2["model"][k], again["model"][k]) for k in epoch2["model"])


# -- a dataset directory never runs code -------------------------------------------


class _Exploit:
    """Unpickling this calls os.system: a crafted data_batch_1 would write the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_cifar_pickle_is_refused_without_running(tmp_path):
    import pickle

    from adr_scale.data.datasets import load_cifar

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2)
    assert b"system" in payload  # the payload really calls os.system (posix.system)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(payload)
    with pytest.raises(ValueError, match=r"data_batch_1' is not a CIFAR batch pickle \(refused "
                                         r"global (posix|os)\.system\)"):
        load_cifar(str(tmp_path), 10)
    assert not marker.exists()
    pickle.loads(payload)  # the same bytes through plain pickle do run the command
    assert marker.exists()


# -- sources are identified by content, not by path and size ----------------------


def _write_npz(path: Path, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    np.savez(path, image=rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8),
             label=rng.integers(0, 10, 40))


def test_shard_npz_refuses_a_regenerated_source_and_resumes_a_moved_copy(tmp_path):
    import shutil

    from data_pipeline.shard_npz import shard_npz

    npz, out = tmp_path / "set.npz", tmp_path / "shards"
    _write_npz(npz, seed=0)
    shard_npz(str(npz), out, 16, progress=False)
    (out / "shard-000001.tar").unlink()  # a gap that a rerun would fill
    shutil.copy(npz, tmp_path / "moved.npz")
    size = npz.stat().st_size
    _write_npz(npz, seed=1)  # regenerated: same path, same size, other images
    assert npz.stat().st_size == size
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ConfigError, match=r"--npz: .* was sharded from an npz with other contents"):
        shard_npz(str(npz), out, 16, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before  # the gap was not filled from it
    kept = (out / "shard-000000.tar").stat().st_mtime_ns
    manifest = shard_npz(str(tmp_path / "moved.npz"), out, 16, progress=False)  # same content
    assert sorted(manifest.rows) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert (out / "shard-000000.tar").stat().st_mtime_ns == kept  # resumed, not rewritten


@pytest.fixture(scope="module")
def diffusers_imported():
    """diffusers takes seconds to import: once per module, in setup, not in the test's time."""
    from diffusers import DDPMPipeline, UNet2DModel  # noqa: F401


def test_generate_ddpm_identifies_the_model_by_its_weights(diffusers_imported, tmp_path, capsys):
    import shutil

    from data_pipeline import generate_ddpm
    from data_pipeline.cli import run_main
    from data_pipeline.smoke import tiny_unet

    model, out = tmp_path / "cond", tmp_path / "shards"
    tiny_unet(model, num_class_embeds=10, seed=0)
    argv = [f"--model={model}", "--num-images=20", "--shard-size=10", "--steps=2",
            f"--out={out}", "--no-progress"]
    spec = generate_ddpm.build_spec(generate_ddpm.parse_args(argv))
    generate_ddpm.generate(spec, out, use_ray=False, progress=False)
    (out / "shard-000001.tar").unlink()
    shutil.copytree(model, tmp_path / "copy")
    tiny_unet(model, num_class_embeds=10, seed=1)  # retrained in place: same path, same config
    before = sorted(p.name for p in out.iterdir())
    assert run_main("generate_ddpm", generate_ddpm.main, argv) == 2
    assert "was generated with model_sha256=" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    copy = generate_ddpm.build_spec(generate_ddpm.parse_args(
        [a.replace(str(model), str(tmp_path / "copy")) for a in argv]))
    assert copy.model_sha256 == spec.model_sha256  # the same weights elsewhere: the same model
    _, made = generate_ddpm.generate(copy, out, use_ray=False, progress=False)
    assert made == [1]  # resumed: only the missing shard


# -- every bound, every choice and the warm start are checked before Ray starts ------


def _space(**changes):
    import yaml

    from adr_scale.search.space import parse_space

    raw = yaml.safe_load((Path(__file__).parents[2] / "tests" / "assets" / "ci_space.yaml").read_text()
    )
    for key, value in changes.items():
        if key == "params":  # an added parameter: the shipped warm start no longer covers it
            raw["params"] |= value
            raw["warm_start"] = None
        else:
            raw[key] = value
    return parse_space(raw, source="s.yaml")


@pytest.mark.parametrize("changes, message", [
    ({"params": {"attack.steps": {"distribution": "uniform", "low": 1, "high": 5}}},
     r"params.attack.steps.distribution: 'uniform' samples non-integers for the int field "
     r"attack.steps; allowed: categorical, int"),
    ({"params": {"model.activation": {"distribution": "categorical",
                                      "choices": ["relu", "silu", "gelu"]}}},
     r"invalid config: model.activation: invalid value 'gelu'.* \(at model.activation='gelu'\)"),
    ({"params": {"attack.eval_steps": {"distribution": "int", "low": 0, "high": 4}}},
     r"invalid config: attack.eval_steps: invalid value 0.* \(at the low ends\)"),
    ({"params": {"attack.eps": {"distribution": "uniform", "low": 0.01, "high": 1.5}}},
     r"invalid config: attack.eps: invalid value 1.5.* \(at attack.eps=1.5\)"),
    ({"params": {"adr.tau_end": {"distribution": "uniform", "low": 1.0, "high": 3.0},
                 "adr.tau_start": {"distribution": "uniform", "low": 1.0, "high": 2.0}}},
     r"invalid config: adr.tau_end: 3.0 is above adr.tau_start=1.0.* \(at adr.tau_end=3.0\)"),
])
def test_space_fails_before_ray_at_any_bound_or_choice(changes, message):
    with pytest.raises(ConfigError, match=message):
        _space(**changes)


def test_warm_start_outside_the_space_is_refused():
    warm = {"adr.tau_start": 2.5, "adr.tau_end": 2.0, "adr.lambda_start": 0.95,
            "adr.lambda_end": 0.97}
    with pytest.raises(ConfigError, match=r"warm_start.adr.lambda_start: 0.95, outside the "
                                          r"searched range; allowed: \[0, 0.9\]"):
        _space(warm_start=warm)
    assert _space().warm_start["adr.lambda_start"] == 0.7  # the shipped space is fine


# -- one `error:` line, exit status 2, nothing written -------------------


def _write_cifar(root: Path, batch: bytes) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(batch)


def _cifar_bytes(kind: str) -> bytes:
    import pickle

    import numpy as np

    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, protocol=2)
    return {"truncated": good[: len(good) // 2],
            "list": pickle.dumps([1, 2, 3], protocol=2),
            "label": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]},
                                  protocol=2)}[kind]


def _setup_case(case: str, tmp: Path) -> tuple[list[str], Path]:
    """(train CLI arguments, --out) of one bad-input case; files it needs are made here."""
    out, extra = tmp / "run", []
    if case == "out_is_file":
        out.write_text("x")
    elif case == "out_under_file":
        (tmp / "f").write_text("x")
        out = tmp / "f" / "run"
    elif case == "corrupt_config_yaml":
        out.mkdir()
        (out / "config.yaml").write_bytes(b"\x80\x81\x00\xff")
        (out / "metrics.jsonl").write_text('{"epoch": 1}\n')  # a run with progress
    elif case == "binary_config":
        (tmp / "c.yaml").write_bytes(b"\x80PK\x03\x04\x00\xff")
        extra = ["--config", str(tmp / "c.yaml")]
    elif case == "config_is_dir":
        extra = ["--config", str(tmp)]
    elif case.startswith("cifar_"):
        _write_cifar(tmp / "data", _cifar_bytes(case.removeprefix("cifar_")))
        extra = ["--set", "data.dataset=cifar10", "--set", f"data.root={tmp / 'data'}"]
    return extra, out


TRAIN_CASES = {  # case: (--set overrides, what the one line must name)
    # unwritable or unreadable inputs and outputs
    "out_is_file": ([], r"--out: '.*/run' is a file"),
    "out_under_file": ([], r"--out: cannot write to '.*/f/run' \(Not a directory\)"),
    "corrupt_config_yaml": ([], r"--out: '.*/run/config.yaml' is not a config written by"),
    "binary_config": ([], r"--config: '.*/c.yaml' is not a text YAML file"),
    "malformed_device": (["train.device=cuda:x"], r"train.device: invalid value 'cuda:x'"),
    "seed_above_2_63": (["seed=18446744073709551616"], r"seed: invalid value 18446744073709551616"),
    "cifar_truncated": ([], r"data.root: '.*data_batch_1' is not a CIFAR batch pickle"),
    "cifar_list": ([], r"data.root: '.*data_batch_1' holds a list, not the dict"),
    "cifar_label": ([], r"data.root: '.*data_batch_1' has label 12; allowed: 0 to 9"),
    "absurd_crop_padding": (["data.crop_padding=1000"],
                            r"data.crop_padding: invalid value 1000; allowed: an integer in \[0, 8\]"),
    # values no run can use
    "epochs_zero": (["train.epochs=0"], r"train.epochs: invalid value 0"),
    "synthetic_fraction_zero": (["data.synthetic=/nowhere", "data.synthetic_fraction=0"],
                                r"data.synthetic_fraction: 0.*draws no synthetic image"),
    "config_is_dir": ([], r"--config: '.*' is a directory; allowed: a YAML file"),
    "ema_decay_zero": (["adr.ema_decay=0"], r"adr.ema_decay: invalid value 0.*\(0, 1\)"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_bad_input_is_one_line_exit_2_and_writes_nothing(digits, case, tmp_path, capsys):
    import re

    overrides, message = TRAIN_CASES[case]
    extra, out = _setup_case(case, tmp_path)
    before, existed = _snapshot(tmp_path), out.exists()
    args = (["--preset", "smoke"] if "--config" not in extra else []) + extra
    args += ["--out", str(out), "--workers", "0", "--no-progress", "--set", "train.device=cpu"]
    for item in overrides:
        args += ["--set", item]
    assert train_cli.main(args) == 2
    assert re.search(message, _error_line(capsys)), message
    assert _snapshot(tmp_path) == before and out.exists() == existed


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(digits, tmp_path, capsys):
    assert _cli(tmp_path / "run", "train.device=cuda") == 2
    assert "train.device: 'cuda' but this machine has no usable GPU" in _error_line(capsys)
    assert not (tmp_path / "run").exists()  # the lock's directory is removed again


def test_argparse_errors_are_one_line(capsys):
    for main in (train_cli.main, ev.main):
        with pytest.raises(SystemExit) as exit_:
            main(["--run", "x", "--bogus"] if main is ev.main else ["--bogus"])
        assert exit_.value.code == 2
        assert _error_line(capsys).startswith("error: unrecognized arguments: --bogus (see ")


def test_tune_resume_without_a_search_refuses_before_ray(tmp_path, capsys):
    import ray

    from adr_scale import tune

    space = Path(__file__).parents[2] / "tests" / "assets" / "ci_space.yaml"
    assert tune.main(["--space", str(space), "--resume", "--out", str(tmp_path / "s")]) == 2
    assert "--resume: no search to resume in" in _error_line(capsys)
    assert not ray.is_initialized() and not (tmp_path / "s").exists()


def test_evaluate_checks_final_before_writing_and_refuses_data_root_for_digits(
        digits, tmp_path, capsys):
    state = build_state(_cfg(), digits.info, len(digits.train), torch.device("cpu"))
    run = tmp_path / "run"
    run.mkdir()
    torch.save(checkpoint_state(state), run / "best.pt")
    (run / "final.pt").write_bytes(b"not a checkpoint")
    assert ev.main(["--run", str(run), "--attacks", "clean", "--no-progress"]) == 2
    assert f"--run: '{run / 'final.pt'}' is not a PyTorch checkpoint" in _error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "final.pt"]  # no eval/
    assert ev.main(["--checkpoint", str(run / "best.pt"), "--data-root", "/data",
                    "--attacks", "clean", "--no-progress"]) == 2
    assert "--data-root: '/data' is not read: digits is bundled" in _error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "final.pt"]


def test_unwritable_outputs_of_tune_and_evaluate_are_one_line(digits, tmp_path, capsys):
    from adr_scale import tune

    (tmp_path / "f").write_text("x")
    space = Path(__file__).parents[2] / "tests" / "assets" / "ci_space.yaml"
    assert tune.main(["--space", str(space), "--out", str(tmp_path / "f")]) == 2
    assert f"--out: '{tmp_path / 'f'}' is a file" in _error_line(capsys)
    state = build_state(_cfg(), digits.info, len(digits.train), torch.device("cpu"))
    torch.save(checkpoint_state(state), tmp_path / "best.pt")
    for flag in ("--out", "--export"):
        assert ev.main(["--checkpoint", str(tmp_path / "best.pt"), flag, str(tmp_path / "f" / "x"),
                        "--attacks", "clean", "--no-progress"]) == 2
        assert (f"{flag}: cannot write to '{tmp_path / 'f' / 'x'}' ('{tmp_path / 'f'}' is a file)"
                in _error_line(capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "f"]
