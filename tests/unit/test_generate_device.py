"""generate_ddpm's sampler at scale: noise drawn on the sampling device from per-sample generators,
bf16/fp16 autocast, channels_last, the device recorded in the manifest, GPU defaults on Ray.

CPU tests run everywhere (no Ray: the driver runs in-process with main(use_ray=False)); the
`gpu` tests repeat the device-dependent checks on CUDA and skip without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

import pytest
import torch

from adr_scale.config import ConfigError
from data_pipeline import generate_ddpm, verify
from data_pipeline.cli import run_main
from data_pipeline.diffusion import (
    initial_noise,
    locate_model,
    make_scheduler,
    noise_generators,
    noise_seed,
    sample,
    task_device,
)
from data_pipeline.shards import Manifest, read_manifest, write_manifest
from data_pipeline.smoke import tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _load(path: Path):
    from diffusers import UNet2DModel

    sub, _, sched_cfg = locate_model(str(path))
    unet = UNet2DModel.from_pretrained(str(path), subfolder=sub, low_cpu_mem_usage=False).eval()
    return unet, sched_cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"grey": tiny_unet(root / "grey"), "rgb": tiny_unet(root / "rgb", channels=3, size=32),
            "cond": tiny_unet(root / "cond", num_class_embeds=10)}


def _split(unet, scheduler, indices, sizes, device, **kw) -> torch.Tensor:
    """The same indices sampled in consecutive batches of `sizes`."""
    out, start = [], 0
    for n in sizes:
        out.append(sample(unet, scheduler, indices[start:start + n], 7, device, **kw))
        start += n
    assert start == len(indices)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Noise: a function of (seed, index) on the sampling device


def test_initial_noise_identical_for_two_batch_sizes():
    indices = list(range(100, 116))
    whole = initial_noise(noise_generators(indices, 7, CPU), (3, 32, 32), CPU)
    parts = torch.cat([initial_noise(noise_generators(indices[:5], 7, CPU), (3, 32, 32), CPU),
                       initial_noise(noise_generators(indices[5:], 7, CPU), (3, 32, 32), CPU)])
    assert whole.shape == (16, 3, 32, 32) and whole.dtype == torch.float32
    assert torch.equal(whole, parts)  # bit-identical, not close
    assert not torch.equal(whole[0], whole[1])  # neighbouring indices share no stream
    assert 0.95 < whole.std().item() < 1.05 and abs(whole.mean().item()) < 0.02


def test_ddpm_images_identical_for_two_batch_sizes(models):
    """Initial and every ancestral step's noise per sample: at 1x8x8 the images are identical
    bit for bit at batch 16 and at 7 + 9 (at 3x32x32 batched kernels round a few pixels by 1)."""
    unet, sched_cfg = _load(models["grey"])
    scheduler = make_scheduler("ddpm", sched_cfg, 4)
    indices = list(range(16))
    whole = sample(unet, scheduler, indices, 7, CPU)
    assert torch.equal(whole, _split(unet, scheduler, indices, (7, 9), CPU))
    assert not torch.equal(whole, sample(unet, scheduler, indices, 8, CPU))  # seed matters

    unet, sched_cfg = _load(models["rgb"])
    scheduler = make_scheduler("ddpm", sched_cfg, 4)
    whole = sample(unet, scheduler, indices, 7, CPU).int()
    diff = (whole - _split(unet, scheduler, indices, (7, 9), CPU).int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_cpu_path_reproduces_the_old_sampler(models):
    """On the CPU the new path draws what the old one did (per-sample CPU generators, seeded by
    noise_seed, initial noise then the scheduler's per-step draws): old directories made on
    the CPU resume to identical bytes."""
    unet, sched_cfg = _load(models["grey"])
    scheduler = make_scheduler("ddpm", sched_cfg, 3)
    indices = [3, 9, 12, 40]
    gens = [torch.Generator().manual_seed(noise_seed(7, i)) for i in indices]  # the old code
    x = torch.cat([torch.randn((1, 1, 8, 8), generator=g) for g in gens]) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=gens).prev_sample
    old = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(sample(unet, scheduler, indices, 7, CPU), old)


# ---------------------------------------------------------------------------------------------
# Precision and memory format (CPU runs both: the CUDA-only gate is the default, not the code)


def test_bf16_and_channels_last_on_cpu(models):
    unet, sched_cfg = _load(models["rgb"])
    scheduler = make_scheduler("ddpm", sched_cfg, 4)
    indices = list(range(16))
    fp32 = sample(unet, scheduler, indices, 7, CPU).int()
    bf16 = sample(unet, scheduler, indices, 7, CPU, precision="bf16").int()
    # Same noise, UNet rounded to bf16: measured mean |diff| 0.31 levels, 21 % of pixels moved
    # (an untrained UNet amplifies rounding more than a trained one would).
    diff = (fp32 - bf16).abs().float()
    assert 0 < diff.mean() < 1.0 and (diff > 0).float().mean() < 0.4
    assert torch.corrcoef(torch.stack([fp32.flatten(), bf16.flatten()]).float())[0, 1] > 0.99
    bf16_split = _split(unet, scheduler, indices, (7, 9), CPU, precision="bf16").int()
    assert (bf16 - bf16_split).abs().max() <= 1  # still batch-size independent
    unet = unet.to(memory_format=torch.channels_last)
    cl = sample(unet, scheduler, indices, 7, CPU, channels_last=True).int()
    assert (fp32 - cl).abs().max() <= 1 and (fp32 != cl).float().mean() < 1e-3  # rounding only


def test_fp16_overflow_is_one_line_not_nan_pixels(models):
    unet, sched_cfg = _load(models["grey"])
    with torch.no_grad():
        unet.conv_out.weight.mul_(1e6)  # eps far beyond fp16's 65504
    scheduler = make_scheduler("ddim", sched_cfg, 2)
    assert torch.isfinite(sample(unet, scheduler, [0, 1], 7, CPU).float()).all()  # fp32 copes
    with pytest.raises(ConfigError, match=r"^--precision: fp16 gave non-finite images") as exc:
        sample(unet, scheduler, [0, 1], 7, CPU, precision="fp16")
    assert "\n" not in str(exc.value) and "bf16" in str(exc.value)


# ---------------------------------------------------------------------------------------------
# The driver: defaults, the manifest, resume across devices


def _argv(models, out, *extra) -> list[str]:
    return ["--model", str(models["cond"]), "--num-images", "20", "--shard-size", "10",
            "--steps", "2", "--batch-size", "8", "--seed", "3", "--out", str(out),
            "--no-progress", *extra]


def _main(argv) -> int:
    return run_main("generate_ddpm", functools.partial(generate_ddpm.main, use_ray=False), argv)


def _stat(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.glob("*")}


def test_resolve_gpus_and_pinning():
    h100s = {"CPU": 384.0, "GPU": 16.0, "generate_gpu": 16.0, "accelerator_type:H100": 2.0}
    gpus, line = generate_ddpm.resolve_gpus(None, h100s)
    assert gpus == 1.0 and "--gpus-per-task 1 (default" in line and "16 GPUs" in line
    assert generate_ddpm.task_resources(gpus, h100s) == {"generate_gpu": 1.0}
    assert generate_ddpm.resolve_gpus(0.5, h100s)[0] == 0.5
    assert generate_ddpm.task_resources(0.5, h100s) == {"generate_gpu": 0.5}
    assert generate_ddpm.task_resources(0.0, h100s) == {}  # CPU tasks go anywhere
    laptop = {"CPU": 8.0}
    gpus, line = generate_ddpm.resolve_gpus(None, laptop)
    assert gpus == 0.0 and "pass --gpus-per-task 1" in line
    assert generate_ddpm.task_resources(1.0, {"GPU": 4.0}) == {}  # no such node type: no pin


def test_placement_defaults_follow_the_gpus():
    args = argparse.Namespace(precision=None, channels_last=None, cudnn_benchmark=True)
    assert generate_ddpm.placement(args, 1.0) == {
        "noise_device": "cuda", "precision": "bf16", "channels_last": True, "cudnn_benchmark": True}
    assert generate_ddpm.placement(args, 0.0) == {
        "noise_device": "cpu", "precision": "fp32", "channels_last": False, "cudnn_benchmark": True}
    args = argparse.Namespace(precision="fp16", channels_last=False, cudnn_benchmark=False)
    assert generate_ddpm.placement(args, 1.0) == {
        "noise_device": "cuda", "precision": "fp16", "channels_last": False, "cudnn_benchmark": False}


def test_manifest_records_device_and_precision(models, tmp_path, capsys):
    assert _main(_argv(models, tmp_path, "--precision", "bf16")) == 0
    meta = read_manifest(tmp_path).meta
    assert meta["spec"]["noise_device"] == "cpu" and meta["spec"]["precision"] == "bf16"
    assert meta["channels_last"] is False and meta["batch_size"] == 8
    assert "in-process; noise on cpu, UNet in bf16" in capsys.readouterr().out
    assert verify.main([str(tmp_path)]) == 0


@pytest.mark.parametrize("extra, key", [
    (("--precision", "bf16"), "precision"),
    (("--gpus-per-task", "1"), "noise_device"),  # refused before anything needs a GPU
])
def test_resume_on_another_device_or_precision_is_refused(models, tmp_path, capsys, extra, key):
    assert _main(_argv(models, tmp_path)) == 0
    capsys.readouterr()
    before = _stat(tmp_path)
    assert _main(_argv(models, tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{key}=" in err and "--out" in err, err
    assert _stat(tmp_path) == before


def test_directory_from_before_the_device_fields_resumes_on_the_cpu(models, tmp_path, capsys):
    """Older manifests lack noise_device and precision; their code drew CPU noise in fp32."""
    assert _main(_argv(models, tmp_path, "--num-images", "10")) == 0
    manifest = read_manifest(tmp_path)
    for key in ("noise_device", "precision"):
        del manifest.meta["spec"][key]
    del manifest.meta["channels_last"]
    write_manifest(tmp_path, Manifest(manifest.meta, manifest.rows))
    first = (tmp_path / "shard-000000.tar").stat().st_mtime_ns
    assert _main(_argv(models, tmp_path)) == 0  # 10 -> 20 images: shard 1 added, shard 0 kept
    assert (tmp_path / "shard-000000.tar").stat().st_mtime_ns == first
    args = generate_ddpm.parse_args(_argv(models, tmp_path))
    spec = generate_ddpm.build_spec(args, 1.0)  # what a GPU run would bring
    assert spec.noise_device == "cuda"
    with pytest.raises(ConfigError, match="noise_device='cpu', this run has 'cuda'"):
        generate_ddpm.check_resume(spec, tmp_path)


def test_bad_precision_is_one_line(models, tmp_path, capsys):
    try:
        code = _main(_argv(models, tmp_path / "out", "--precision", "fp64"))
    except SystemExit as exc:  # argparse's own choice check
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision" in err and "bf16" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only host")
def test_a_cuda_spec_never_falls_back_to_cpu_noise(models, tmp_path):
    spec = generate_ddpm.build_spec(generate_ddpm.parse_args(_argv(models, tmp_path)), 1.0)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        task_device(spec)


# ---------------------------------------------------------------------------------------------
# CUDA (run where a GPU is lent; skipped otherwise)


@pytest.mark.gpu
@needs_cuda
def test_cuda_noise_is_batch_independent_and_differs_from_cpu(models):
    cuda = torch.device("cuda")
    indices = list(range(16))
    whole = initial_noise(noise_generators(indices, 7, cuda), (3, 32, 32), cuda)
    parts = torch.cat([initial_noise(noise_generators(indices[:5], 7, cuda), (3, 32, 32), cuda),
                       initial_noise(noise_generators(indices[5:], 7, cuda), (3, 32, 32), cuda)])
    assert whole.device.type == "cuda" and torch.equal(whole, parts)
    cpu = initial_noise(noise_generators(indices, 7, CPU), (3, 32, 32), CPU)
    assert not torch.allclose(whole.cpu(), cpu)  # a CUDA generator's stream is another one
    unet, sched_cfg = _load(models["rgb"])
    unet = unet.to(cuda)
    scheduler = make_scheduler("ddpm", sched_cfg, 4)
    a = sample(unet, scheduler, indices, 7, cuda).int()
    b = _split(unet, scheduler, indices, (7, 9), cuda).int()
    assert (a - b).abs().max() <= 1 and (a != b).float().mean() < 1e-3


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_and_channels_last_track_fp32(models):
    cuda = torch.device("cuda")
    unet, sched_cfg = _load(models["rgb"])
    unet = unet.to(cuda)
    scheduler = make_scheduler("ddpm", sched_cfg, 4)
    indices = list(range(32))
    fp32 = sample(unet, scheduler, indices, 7, cuda).int()
    bf16 = sample(unet, scheduler, indices, 7, cuda, precision="bf16").int()
    assert (fp32 - bf16).abs().float().mean() < 1.0
    unet = unet.to(memory_format=torch.channels_last)
    cl = sample(unet, scheduler, indices, 7, cuda, channels_last=True, precision="bf16").int()
    assert (bf16 - cl).abs().float().mean() < 0.5


@pytest.mark.gpu
@needs_cuda
def test_generation_on_cuda_records_cuda(models, tmp_path):
    assert _main(_argv(models, tmp_path, "--gpus-per-task", "1")) == 0
    spec = read_manifest(tmp_path).meta["spec"]
    assert (spec["noise_device"], spec["precision"]) == ("cuda", "bf16")
    assert verify.main([str(tmp_path)]) == 0
    cpu_dir = tmp_path.parent / (tmp_path.name + "-cpu")
    assert _main(_argv(models, cpu_dir, "--gpus-per-task", "0", "--precision", "bf16")) == 0
    assert (tmp_path / "shard-000000.tar").read_bytes() != (cpu_dir / "shard-000000.tar").read_bytes()


def test_spec_identity_has_the_device_not_the_memory_format(models, tmp_path):
    spec = generate_ddpm.build_spec(generate_ddpm.parse_args(_argv(models, tmp_path)), 0.0)
    ident = spec.identity()
    assert ident["noise_device"] == "cpu" and ident["precision"] == "fp32"
    assert not {"channels_last", "cudnn_benchmark", "batch_size"} & ident.keys()
    assert dataclasses.replace(spec, channels_last=True).identity() == ident
