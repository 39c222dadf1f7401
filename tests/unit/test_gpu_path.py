"""The GPU-path options on the CPU: compile keeps the input-only attack, bf16 and channels_last
reproduce the golden losses within stated tolerances."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from adr_scale.attacks import pgd_linf
from adr_scale.config import apply_overrides, get_preset
from adr_scale.data import load_splits, train_batches
from adr_scale.engine import build_state, train_step, validate_models
from adr_scale.models import create_model
from tests.unit.test_engine import GOLDEN, GOLDEN_SETTINGS

pytestmark = pytest.mark.usefixtures("no_run_plots")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def digits(one_thread):
    return load_splits(get_preset("smoke").data)


def _cfg(*overrides):
    return apply_overrides(get_preset("smoke"), ["train.device=cpu", *overrides])


def test_compiled_attack_leaves_parameter_gradients_and_matches_eager(one_thread):
    torch.manual_seed(0)
    model = create_model("tiny", 10, "relu", in_channels=1, mean=(0.5,), std=(0.25,)).train()
    compiled = torch.compile(model, backend="aot_eager")  # AOTAutograd: the graph inductor gets
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    runs = []
    for m in (model, compiled):
        torch.manual_seed(1)
        runs.append(pgd_linf(m, x, y, eps=8 / 255, alpha=2 / 255, steps=5))
    # the same kernels: equal but for float reassociation in the traced graph, which can flip
    # a gradient sign where it is ~0 (then a pixel moves by 2 alpha); tolerance 1e-6 elsewhere
    differ = (runs[0] - runs[1]).abs() > 1e-6
    assert differ.float().mean() < 1e-3
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again


def test_compiled_attack_backward_computes_only_the_input_gradient(one_thread):
    """The backward graph AOTAutograd traces for an attack pass returns delta's gradient alone;
    the same pass with the parameters left trainable returns one gradient per parameter too."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    outputs: list[int] = []

    def record_backward(gm, _inputs):
        out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        outputs.append(sum(a is not None for a in out))
        return make_boxed_func(gm)

    backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm), bw_compiler=record_backward)
    torch._dynamo.reset()
    model = create_model("tiny", 10, "relu", in_channels=1, mean=(0.5,), std=(0.25,)).train()
    compiled = torch.compile(model, backend=backend)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    pgd_linf(compiled, x, y, eps=8 / 255, alpha=2 / 255, steps=2)
    frozen_outputs = list(outputs)
    delta = torch.zeros_like(x, requires_grad=True)  # the same pass, parameters trainable
    torch.autograd.grad(torch.nn.functional.cross_entropy(compiled(x + delta), y), delta)
    n_params = len(list(model.parameters()))
    assert frozen_outputs and set(frozen_outputs) == {1}, frozen_outputs
    assert outputs[-1] == 1 + n_params, outputs


def test_compiled_training_does_not_recompile_per_step(digits):
    """tau / lambda change every step and validation switches to eval mode: graphs are cached."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    base = counters["stats"]["unique_graphs"]  # the counter is process-wide
    cfg = _cfg("train.compile=true", "train.compile_backend=aot_eager", "attack.steps=2")
    state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
    batches = train_batches(digits.train, cfg.train.batch_size, cfg.seed, 0, state.device)
    val = type(digits.val)(digits.val.images[:64], digits.val.labels[:64])
    graphs = []
    for x, y in itertools.islice(batches, 6):
        train_step(state, x, y)
        if state.step in (2, 4):
            validate_models(state, val)
        graphs.append(counters["stats"]["unique_graphs"] - base)
    assert graphs[0] >= 1 and graphs[2] == graphs[-1], graphs  # nothing new after validation
    assert graphs[-1] <= 4, graphs  # attack (frozen), update, eval; train mode fwd at most


@pytest.mark.parametrize("overrides, rel, absolute", [
    # measured worst relative differences over the 36 losses: 4.4e-5 (channels_last), 3.6e-3 (bf16)
    (["train.channels_last=true"], 2e-4, 2e-5),  # same maths, other memory layout
    (["train.precision=bf16"], 2e-2, 2e-2),  # bf16 keeps 8 bits of mantissa (~4e-3 per op)
])
def test_bf16_and_channels_last_reproduce_the_golden_losses(digits, overrides, rel, absolute):
    golden = json.loads(GOLDEN.read_text())
    for name, setting in GOLDEN_SETTINGS.items():
        cfg = _cfg(*setting, *overrides)
        state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
        torch.manual_seed(cfg.seed)
        batches = train_batches(digits.train, cfg.train.batch_size, cfg.seed, 0, state.device)
        losses = [train_step(state, x, y).item() for x, y in itertools.islice(batches, 12)]
        assert losses == pytest.approx(golden[name], rel=rel, abs=absolute), (name, losses)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_side_indices_give_the_cpu_batches(digits):
    """Permutations move to the GPU once; the batches are the CPU loader's, image for image."""
    from adr_scale.data import ArrayDataset, real_stream_batches

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    on_gpu = ArrayDataset(digits.train.images.to(gpu), digits.train.labels.to(gpu))
    for a, b in zip(train_batches(digits.train, 64, 3, 1, cpu), train_batches(on_gpu, 64, 3, 1, gpu),
                    strict=True):
        assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
    pairs = zip(real_stream_batches(digits.train, 700, 3, 5, 4, cpu, rank=1, world_size=2),
                real_stream_batches(on_gpu, 700, 3, 5, 4, gpu, rank=1, world_size=2), strict=True)
    for a, b in pairs:
        assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_is_exact_with_bf16_and_channels_last(tmp_path):
    """The CUDA RNG state travels in the checkpoint (cuda-only branch of checkpoint_state)."""
    from adr_scale.checkpoint import load_checkpoint
    from adr_scale.drivers import fit

    cfg = _cfg("train.device=cuda", "train.epochs=2", "train.precision=bf16",
               "train.channels_last=true")
    fit(cfg, tmp_path / "whole", progress=False)
    fit(cfg, tmp_path / "cut", until_epoch=1, progress=False)
    fit(cfg, tmp_path / "cut", progress=False)
    a, b = (load_checkpoint(tmp_path / r / "final.pt")["model"] for r in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
