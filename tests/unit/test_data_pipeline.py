"""data_pipeline in-process (no Ray): generation, resume, balance, shard_npz, verify, CLI errors.

A tiny random diffusers UNet (1 x 8 x 8, 42k parameters) samples a few steps on the CPU; the
labeller is an adr-scale checkpoint from data_pipeline.smoke. Ray's path is in
tests/integration/test_generate_ray.py.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from adr_scale.config import ConfigError
from data_pipeline import generate_ddpm, shard_npz, verify
from data_pipeline.cli import run_main
from data_pipeline.diffusion import Labeler, _labelled
from data_pipeline.shards import decode_png, read_manifest, scan_shard, shard_name
from data_pipeline.smoke import tiny_labeler, tiny_unet

N, SHARD, STEPS = 50, 20, 2  # 3 shards: 20, 20, 10 images


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    unet = tiny_unet(root / "unet")
    cond = tiny_unet(root / "cond", num_class_embeds=10)
    labeler = tiny_labeler(root / "labeler.pt", unet)
    # the same checkpoint without train.wa: the (untrained, biased) student labels
    ckpt = torch.load(labeler, weights_only=True)
    ckpt["model"]["net.fc.bias"][3] = 1e3  # the student calls everything class 3
    torch.save(ckpt, root / "biased_student_wa.pt")
    ckpt["config"]["train"]["wa"] = False
    torch.save(ckpt, root / "student.pt")
    return {"unet": str(unet), "cond": str(cond), "labeler": str(labeler),
            "biased_student_wa": str(root / "biased_student_wa.pt"),
            "student": str(root / "student.pt")}


def _args(assets, out, **kw) -> list[str]:
    flags = {"model": assets["unet"], "num-images": N, "shard-size": SHARD, "steps": STEPS,
             "batch-size": 16, "labeler": assets["labeler"], "out": out, "seed": 7}
    flags.update({k.replace("_", "-"): v for k, v in kw.items()})
    argv = [f"--{k}={v}" for k, v in flags.items() if v is not None and v is not True]
    return argv + [f"--{k}" for k, v in flags.items() if v is True] + ["--no-progress"]


def _generate(assets, out, **kw):
    spec = generate_ddpm.build_spec(generate_ddpm.parse_args(_args(assets, out, **kw)))
    return generate_ddpm.generate(spec, out, use_ray=False, progress=False)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*.tar"))}


def _stat(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.glob("shard-*.tar")}


def _samples(path: Path) -> list[tuple[int, int, np.ndarray, dict]]:
    """(index, label, image (H, W, C), json) of every sample, read with plain tarfile."""
    import json
    import tarfile

    out: dict[int, dict] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, ext = info.name.split(".", 1)
            out.setdefault(int(key), {})[ext] = tar.extractfile(info).read()
    return [(i, int(m["cls"]), decode_png(m["png"]), json.loads(m.get("json", b"null")))
            for i, m in sorted(out.items())]


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    """An uninterrupted run, batch size 16."""
    out = tmp_path_factory.mktemp("reference")
    manifest, made = _generate(assets, out)
    return out, manifest, made


# ---------------------------------------------------------------------------------------------
# Generation


def test_generate_exact_counts_shards_and_labels(reference):
    out, manifest, made = reference
    assert made == [0, 1, 2]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.parquet", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [manifest.rows[shard_name(k)]["count"] for k in range(3)] == [20, 20, 10]
    assert manifest.meta["num_images"] == N and manifest.meta["image_shape"] == [1, 8, 8]
    indices = []
    for k in range(3):
        row, samples = manifest.rows[shard_name(k)], _samples(out / shard_name(k))
        assert len(samples) == row["count"] and row["generated"] == row["count"]
        hist = np.bincount([s[1] for s in samples], minlength=10).tolist()
        assert hist == row["class_hist"]
        for index, label, image, meta in samples:
            assert 0 <= label < 10 and image.shape == (8, 8, 1) and image.dtype == np.uint8
            assert meta["index"] == index and meta["seed"] == 7 and 0.1 <= meta["confidence"] <= 1
        indices += [s[0] for s in samples]
        assert (row["scheduler"], row["steps"], row["seed"]) == ("ddpm", STEPS, 7)
    assert indices == list(range(N))
    assert len({s[1] for k in range(3) for s in _samples(out / shard_name(k))}) > 3  # spread labels
    assert verify.main([str(out)]) == 0


def test_output_independent_of_batch_size(assets, reference, tmp_path):
    ref = reference[0]
    _generate(assets, tmp_path, batch_size=7)
    for k in range(3):
        a, b = _samples(ref / shard_name(k)), _samples(tmp_path / shard_name(k))
        assert [(s[0], s[1]) for s in a] == [(s[0], s[1]) for s in b]  # indices and labels
        pa_, pb = np.stack([s[2] for s in a]).astype(int), np.stack([s[2] for s in b]).astype(int)
        # identical noise; batched kernels may round differently: at most 1 in rare pixels
        assert np.abs(pa_ - pb).max() <= 1 and (pa_ != pb).mean() < 1e-3


def test_interrupted_run_resumes_to_identical_bytes(assets, reference, tmp_path, monkeypatch):
    import data_pipeline.diffusion as diffusion

    real_record = diffusion._record

    def crash_mid_shard_1(image, index, *rest):
        if index == 27:
            raise KeyboardInterrupt  # a Ctrl-C while shard 1 is half written
        return real_record(image, index, *rest)

    monkeypatch.setattr(diffusion, "_record", crash_mid_shard_1)
    with pytest.raises(KeyboardInterrupt):
        _generate(assets, tmp_path)
    monkeypatch.setattr(diffusion, "_record", real_record)
    assert sorted(p.name for p in tmp_path.glob("*shard-*")) == ["shard-000000.tar"]
    assert list(read_manifest(tmp_path).rows) == ["shard-000000.tar"]
    (tmp_path / ".shard-000002.tar.4242.tmp").write_bytes(b"partial")  # a killed worker's file
    before = _stat(tmp_path)
    _, made = _generate(assets, tmp_path)
    assert made == [1, 2]
    assert _files(tmp_path) == _files(reference[0])
    assert _stat(tmp_path)["shard-000000.tar"] == before["shard-000000.tar"]
    assert not list(tmp_path.glob(".*tmp"))
    assert verify.main([str(tmp_path)]) == 0


def test_fewer_images_first_then_more_matches_one_run(assets, reference, tmp_path):
    _generate(assets, tmp_path, num_images=30)  # shards 0 (20) and 1 (10: partial)
    first = _stat(tmp_path)
    _, made = _generate(assets, tmp_path)
    assert made == [1, 2]  # the partial shard is completed, the full one kept
    assert _stat(tmp_path)["shard-000000.tar"] == first["shard-000000.tar"]
    assert _files(tmp_path) == _files(reference[0])


def test_lost_manifest_row_is_adopted_not_rewritten(assets, reference, tmp_path):
    """A run stopped between a shard's rename and the manifest write."""
    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    manifest = read_manifest(tmp_path)
    del manifest.rows["shard-000001.tar"]
    from data_pipeline.shards import write_manifest
    write_manifest(tmp_path, manifest)
    before = _stat(tmp_path)
    _, made = _generate(assets, tmp_path)
    assert made == [] and _stat(tmp_path) == before
    assert read_manifest(tmp_path).rows == reference[1].rows


def test_rerun_rewrites_nothing_and_repairs_a_corrupt_shard(assets, reference, tmp_path):
    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    before = _stat(tmp_path)
    manifest_bytes = (tmp_path / "manifest.parquet").read_bytes()
    _, made = _generate(assets, tmp_path)
    assert made == [] and _stat(tmp_path) == before
    assert (tmp_path / "manifest.parquet").read_bytes() == manifest_bytes
    data = bytearray((tmp_path / "shard-000002.tar").read_bytes())
    data[3000] ^= 0xFF
    (tmp_path / "shard-000002.tar").write_bytes(data)
    _, made = _generate(assets, tmp_path)
    assert made == [2] and _files(tmp_path) == _files(reference[0])


def test_labeler_uses_ema_weights_only_with_train_wa(assets):
    cpu = torch.device("cpu")
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    ema = Labeler(assets["biased_student_wa"], cpu)
    student = Labeler(assets["student"], cpu)
    assert (ema.weights, student.weights) == ("ema", "model")
    assert len(set(ema.probs(images).argmax(1).tolist())) > 1
    assert set(student.probs(images).argmax(1).tolist()) == {3}


def test_balance_keeps_most_confident_per_class(assets, tmp_path):
    manifest, _ = _generate(assets, tmp_path, model=assets["cond"], num_images=40, balance=True,
                            oversample=2)
    spec = generate_ddpm.build_spec(generate_ddpm.parse_args(_args(
        assets, tmp_path, model=assets["cond"], num_images=40, balance=True, oversample=2)))
    for k in range(2):
        row, samples = manifest.rows[shard_name(k)], _samples(tmp_path / shard_name(k))
        assert row["class_hist"] == [2] * 10 and row["generated"] == 40  # 2 rounds of 20
        # every candidate of the shard, labelled as the generator did
        cands = [(i, int(y), float(c)) for _, idx, ys, cs in
                 (x for r in range(2) for x in _labelled(spec, spec.candidates(k, r),
                                                         torch.device("cpu"), lambda n: None))
                 for i, y, c in zip(idx, ys, cs, strict=True)]
        kept = {s[0] for s in samples}
        for c in range(10):
            conf = sorted(((cf, i) for i, y, cf in cands if y == c), reverse=True)
            assert len(conf) == 4
            assert {i for _, i in conf[:2]} == {i for i in kept if i % 10 == c}


def test_balance_unconditional_equal_classes(assets, tmp_path):
    manifest, _ = _generate(assets, tmp_path, num_images=40, balance=True)
    for row in manifest.rows.values():
        assert row["class_hist"] == [2] * 10 and row["count"] == 20
        assert row["generated"] >= 20 and row["generated"] % 20 == 0
    assert verify.main([str(tmp_path)]) == 0


def test_balance_fails_with_one_line_when_a_class_never_appears(assets, tmp_path, monkeypatch,
                                                                 capsys):
    import data_pipeline.diffusion as diffusion

    monkeypatch.setattr(diffusion, "MAX_ROUNDS", 2)
    argv = _args(assets, tmp_path, labeler=assets["student"], num_images=20, balance=True)
    assert run_main("generate_ddpm", functools.partial(generate_ddpm.main, use_ray=False), argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--balance" in err and "shard-000000.tar" in err
    assert not list(tmp_path.glob("shard-*.tar"))


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the flag, nothing written


@pytest.mark.parametrize("change, flag", [
    ({"scheduler": "euler"}, "--scheduler"),
    ({"steps": 5000}, "--steps"),
    ({"labeler": None}, "--labeler"),
    ({"model": "/nonexistent/model"}, "--model"),
    ({"num_images": 45, "balance": True}, "--num-images"),
    ({"oversample": 0.5, "balance": True}, "--oversample"),
    ({"num_images": 0}, "--num-images"),
    ({"seed": "x"}, "--seed"),
])
def test_generate_bad_flags(assets, tmp_path, capsys, change, flag):
    out = tmp_path / "out"
    assert _exit_code(generate_ddpm.main, _args(assets, out, **change)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    assert not out.exists()


def _exit_code(main, argv) -> int:
    """run_main's code for our errors, argparse's for flags it rejects itself."""
    try:
        return run_main(main.__module__, main, argv)
    except SystemExit as exc:
        return exc.code


def test_labeler_of_another_image_shape_is_refused(assets, tmp_path, capsys):
    from adr_scale.checkpoint import checkpoint_state
    from adr_scale.config import apply_overrides, get_preset
    from adr_scale.data import DATASET_INFO
    from adr_scale.engine import build_state

    cfg = apply_overrides(get_preset("smoke_standard"), ["data.dataset=cifar10"])
    torch.save(checkpoint_state(build_state(cfg, DATASET_INFO["cifar10"], 100, torch.device("cpu"))),
               tmp_path / "c10.pt")
    argv = _args(assets, tmp_path / "out", labeler=tmp_path / "c10.pt")
    assert run_main("generate_ddpm", generate_ddpm.main, argv) == 2
    err = capsys.readouterr().err
    assert "--labeler" in err and "(3, 32, 32)" in err and not (tmp_path / "out").exists()


def test_resume_with_other_settings_is_refused(assets, reference, tmp_path, capsys):
    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    before = _stat(tmp_path)
    argv = _args(assets, tmp_path, seed=8)
    assert run_main("generate_ddpm", generate_ddpm.main, argv) == 2
    err = capsys.readouterr().err
    assert "seed=7" in err and "8" in err and _stat(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# shard_npz and verify


def _npz(path: Path, n: int, shape: tuple[int, ...], compressed: bool, label_dtype=np.int64):
    rng = np.random.default_rng(n)
    image = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    label = rng.integers(0, 100, size=n).astype(label_dtype)
    (np.savez_compressed if compressed else np.savez)(path, image=image, label=label)
    return image, label


@pytest.mark.parametrize("compressed, shape, label_dtype", [
    (False, (32, 32, 3), np.int64),
    (True, (32, 32, 3), np.uint8),
    (False, (16, 16), np.int32),  # grey N x H x W
])
def test_shard_npz_round_trip(tmp_path, compressed, shape, label_dtype):
    image, label = _npz(tmp_path / "set.npz", 37, shape, compressed, label_dtype)
    with zipfile.ZipFile(tmp_path / "set.npz") as z:  # the member layout we claim to handle
        kinds = {i.compress_type for i in z.infolist()}
    assert kinds == ({zipfile.ZIP_DEFLATED} if compressed else {zipfile.ZIP_STORED})
    out = tmp_path / "shards"
    assert run_main("shard_npz", shard_npz.main, ["--npz", str(tmp_path / "set.npz"), "--out",
                                                  str(out), "--shard-size", "10",
                                                  "--no-progress"]) == 0
    manifest = read_manifest(out)
    assert [manifest.rows[shard_name(k)]["count"] for k in range(4)] == [10, 10, 10, 7]
    samples = [s for k in range(4) for s in _samples(out / shard_name(k))]
    assert [s[0] for s in samples] == list(range(37))
    assert [s[1] for s in samples] == label.tolist()
    np.testing.assert_array_equal(np.stack([s[2] for s in samples]).reshape(image.shape), image)
    assert manifest.meta["num_classes"] == int(label.max()) + 1
    before = _stat(out)
    shard_npz.shard_npz(str(tmp_path / "set.npz"), out, 10, progress=False)  # idempotent
    assert _stat(out) == before
    assert verify.main([str(out)]) == 0


def test_shard_npz_bad_input(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", images=np.zeros((4, 8, 8, 3), np.uint8), label=np.zeros(4))
    argv = ["--npz", str(tmp_path / "f.npz"), "--out", str(tmp_path / "o"), "--no-progress"]
    assert run_main("shard_npz", shard_npz.main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--npz" in err and "'image'" in err
    np.savez(tmp_path / "f.npz", image=np.zeros((4, 8, 8, 3), np.float32), label=np.zeros(4, int))
    assert run_main("shard_npz", shard_npz.main, argv) == 2
    assert "float32" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_verify_names_flipped_and_missing_shards(reference, tmp_path, capsys):
    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    data = bytearray((tmp_path / "shard-000001.tar").read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit
    (tmp_path / "shard-000001.tar").write_bytes(data)
    (tmp_path / "shard-000002.tar").unlink()
    assert verify.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bad: shard-000001.tar" in err and "missing: shard-000002.tar" in err
    assert "shard-000000.tar" not in err
    assert scan_shard(tmp_path / "shard-000000.tar", 10).count == 20


def test_verify_without_manifest_is_one_line(tmp_path, capsys):
    assert run_main("verify", verify.main, [str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_parser_errors_are_one_line(capsys):
    with pytest.raises(SystemExit):
        shard_npz.parse_args(["--npz", "x", "--out", "y", "--shard-size", "0"])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--shard-size" in err and "0" in err
    assert isinstance(shard_npz.parse_args(["--npz", "x", "--out", "y"]), argparse.Namespace)


def test_corrupt_manifest_is_one_line_in_verify_shard_npz_and_generate(tmp_path, capsys):
    """verify, shard_npz and generate_ddpm all read the manifest through read_manifest."""
    _npz(tmp_path / "set.npz", 12, (8, 8, 3), False, np.int64)
    out = tmp_path / "shards"
    argv = ["--npz", str(tmp_path / "set.npz"), "--out", str(out), "--shard-size", "6",
            "--no-progress"]
    assert run_main("shard_npz", shard_npz.main, argv) == 0
    (out / "manifest.parquet").write_bytes(b"PAR1 torn")
    before = _stat(out)
    for name, main, args in (("verify", verify.main, [str(out)]),
                             ("shard_npz", shard_npz.main, argv)):
        assert run_main(name, main, args) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "manifest.parquet: not a readable manifest" in err, err
    assert _stat(out) == before  # nothing rewritten
    from data_pipeline.shards import open_output

    with pytest.raises(ConfigError, match="not a readable manifest"):  # generate_ddpm's entry
        open_output(out)
