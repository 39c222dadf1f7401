"""The CUDA-only branches of the code, each checked on a GPU (the `gpu` tests skip without CUDA;
benchmarks/gpu_suite.sh runs them). Every branch that tests `cuda` / `is_available` /
`device.type` and has no CPU equivalent, and the test that would fail if it were wrong:

| branch | test |
|---|---|
| engine.resolve_device: "auto" -> cuda, cuda:N beyond the GPUs | test_resolve_device_on_cuda (here) |
| engine.build_state: cudnn.benchmark on CUDA | test_build_state_turns_on_cudnn_benchmark_on_cuda (here) |
| engine.build_state: train.sync_batchnorm converts on CUDA ranks (world > 1) | tests/integration/test_cuda_ranks.py (2 processes) |
| engine.validate_models: the CUDA RNG forked around validation | test_validation_leaves_the_cuda_rng_alone (here) |
| data/loader._on: permutation indices pinned and moved to the GPU | test_indices_go_to_the_gpu (here) |
| generate_ddpm._run_local / diffusion.shard_task: cudnn.benchmark for generation | test_generation_sets_cudnn_benchmark_on_cuda_only_when_asked (here) |
| checkpoint.checkpoint_state / load_state: the CUDA RNG state | test_gpu_path.py::test_resume_on_cuda_is_exact_with_bf16_and_channels_last |
| data loaders on CUDA (device-side indices) | test_gpu_path.py::test_device_side_indices_give_the_cpu_batches |
| data/synthetic.py: pinned and resident (data.synthetic_device=cuda) loaders | test_synthetic.py::test_pinned_and_resident_loaders_on_cuda_match_the_host_batches |
| diffusion: noise on the sampling device, bf16 / channels_last, the manifest's device | test_generate_device.py (3 gpu tests) |

Where a branch has a CPU side (the flag left alone, no conversion on a CPU device) the same test
checks it; the refusal of cuda on a machine without one runs everywhere else (last test).
"""

from __future__ import annotations

import pytest
import torch

from adr_scale.config import ConfigError, apply_overrides, get_preset
from adr_scale.data import load_splits
from adr_scale.engine import build_state, resolve_device, validate_models

gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                           reason="needs a CUDA device")]


def on_gpu(test):
    for mark in gpu:
        test = mark(test)
    return test


def _cfg(*overrides):
    return apply_overrides(get_preset("smoke"), ["train.device=cuda", *overrides])


@pytest.fixture(scope="module")
def digits():
    return load_splits(get_preset("smoke").data)


@pytest.fixture
def cudnn_benchmark():
    """Restore the process-wide cuDNN flag after a test that sets it."""
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


@on_gpu
def test_resolve_device_on_cuda():
    n = torch.cuda.device_count()
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(f"cuda:{n - 1}") == torch.device(f"cuda:{n - 1}")
    with pytest.raises(ConfigError, match=rf"train.device: 'cuda:{n}' but this machine has {n} "
                                          rf"GPUs; allowed: cuda:0 to cuda:{n - 1}"):
        resolve_device(f"cuda:{n}")


@on_gpu
def test_build_state_turns_on_cudnn_benchmark_on_cuda(digits, cudnn_benchmark):
    torch.backends.cudnn.benchmark = False
    build_state(_cfg(), digits.info, len(digits.train), torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False  # the CPU leaves the flag alone
    state = build_state(_cfg(), digits.info, len(digits.train), torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True
    assert next(state.model.parameters()).device.type == "cuda"


@on_gpu
def test_validation_leaves_the_cuda_rng_alone(digits):
    """validate_models forks the CUDA RNG: the validation set's size or attack never shifts the
    training stream (the attack's random start draws from the CUDA generator)."""
    from adr_scale.attacks import pgd_linf

    state = build_state(_cfg(), digits.info, len(digits.train), torch.device("cuda"))
    val = type(digits.val)(digits.val.images[:64], digits.val.labels[:64])
    before = torch.cuda.get_rng_state()
    row = validate_models(state, val)
    assert torch.equal(torch.cuda.get_rng_state(), before)
    assert 0.0 <= row["val_robust_acc"] <= row["val_clean_acc"] <= 1.0
    x = torch.rand(8, 1, 8, 8, device="cuda")
    pgd_linf(state.model.eval(), x, torch.zeros(8, dtype=torch.long, device="cuda"),
             eps=8 / 255, alpha=2 / 255, steps=1)
    assert not torch.equal(torch.cuda.get_rng_state(), before)  # unforked, the state moves


@on_gpu
def test_indices_go_to_the_gpu():
    from adr_scale.data.loader import _on

    t = torch.randperm(100)
    on_gpu = _on(torch.device("cuda"), t)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), t)
    assert _on(torch.device("cpu"), t) is t


@on_gpu
def test_generation_sets_cudnn_benchmark_on_cuda_only_when_asked(tmp_path, cudnn_benchmark):
    from data_pipeline.smoke import tiny_unet
    from tests.unit.test_generate_device import _argv, _main

    models = {"cond": tiny_unet(tmp_path / "cond", num_class_embeds=10)}
    for flag, expected in (("--cudnn-benchmark", True), ("--no-cudnn-benchmark", False)):
        torch.backends.cudnn.benchmark = not expected
        assert _main(_argv(models, tmp_path / flag, "--gpus-per-task", "1", flag)) == 0
        assert torch.backends.cudnn.benchmark is expected, flag
    torch.backends.cudnn.benchmark = True
    assert _main(_argv(models, tmp_path / "cpu", "--gpus-per-task", "0")) == 0
    assert torch.backends.cudnn.benchmark is False  # CPU sampling turns it off


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU side is test_resolve_device_on_cuda")
def test_resolve_device_refuses_cuda_without_a_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"train.device: 'cuda' but this machine has no usable "
                                          r"GPU; allowed here: cpu or auto"):
        resolve_device("cuda")
