"""Sampling a diffusers UNet, pseudo-labelling, and producing one shard. Ray is not imported here:
the driver (generate_ddpm.py) wraps `shard_task` with ray.remote.

Every sample's noise (initial and, for DDPM, every ancestral step's) comes from its own
torch.Generator seeded by (seed, global index) and created on the device that samples, so a sample
does not depend on which worker, node or batch produced it, and no noise crosses the host-device
link. CPU and CUDA generators give different streams for the same seed: images made on a GPU
differ from CPU ones (both are samples of the model), so the manifest records the noise device and
a resume on the other one is refused. A shard is cut into batches from its own first index, so
the same --batch-size reproduces a shard byte for byte. (Batched float kernels round a little
differently at other batch sizes: the images then differ by at most 1 in about 1e-5 of their
pixels; see docs/data.md.)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from adr_scale.config import ConfigError
from data_pipeline.shards import make_row, sha256_file, shard_name, write_shard

SCHEDULERS = ("ddim", "ddpm")
# --precision: the UNet's autocast dtype (None: plain fp32). The scheduler's arithmetic and its
# noise stay float32 whatever the UNet runs in.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NOISE_DEVICES = ("cpu", "cuda")
DEFAULT_DDIM_STEPS = 100
LABEL_BATCH = 256  # the labeller sees fixed chunks from the shard start, whatever --batch-size is
MAX_ROUNDS = 64  # --balance: candidate rounds per shard before giving up (fixes the index layout)


@dataclass(frozen=True, kw_only=True)
class GenerateSpec:
    """Everything that decides the samples (resume compares `identity()`), plus operational knobs."""

    model: str  # diffusers pipeline directory or hub id
    model_sha256: str  # digest of the UNet's weights files: the model's identity, not its path
    scheduler: str  # ddpm | ddim
    steps: int  # sampling steps
    seed: int  # noise of sample i comes from (seed, i)
    shard_size: int  # images per shard (the last may hold fewer)
    num_images: int  # images kept in all
    labeler: str | None  # adr-scale checkpoint that labels the images
    labeler_sha256: str | None
    balance: bool  # keep the most confident images per class, equal classes per shard
    oversample: float  # --balance: candidates per class >= oversample x kept per class
    num_classes: int
    conditional: bool  # the UNet takes class_labels (num_class_embeds set)
    image_shape: tuple[int, int, int]  # (C, H, W)
    noise_device: str = "cpu"  # cpu | cuda: where the per-sample generators draw (streams differ)
    precision: str = "fp32"  # fp32 | bf16 | fp16: the UNet's autocast dtype
    # Operational: these change float rounding only (as the batch size does), not the noise.
    batch_size: int = field(default=256, compare=False)  # images per UNet forward
    channels_last: bool = field(default=False, compare=False)  # UNet weights and input NHWC
    cudnn_benchmark: bool = field(default=True, compare=False)  # CUDA: time conv algorithms once

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run that wrote the directory."""
        d = asdict(self)
        # These may differ between runs; the model and labeller count by their digests.
        for key in ("num_images", "batch_size", "labeler", "model", "channels_last",
                    "cudnn_benchmark"):
            d.pop(key)
        d["image_shape"] = list(d["image_shape"])
        return d

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_images / self.shard_size)

    def shard_count(self, k: int) -> int:
        return min(self.shard_size, self.num_images - k * self.shard_size)

    def candidates(self, k: int, round_: int) -> range:
        """Global indices of shard k's candidates: all of them, or one round with --balance."""
        count = self.shard_count(k)
        if not self.balance:
            assert round_ == 0
            return range(k * self.shard_size, k * self.shard_size + count)
        base = k * self.shard_size * MAX_ROUNDS  # each shard owns MAX_ROUNDS x shard_size indices
        return range(base + round_ * count, base + (round_ + 1) * count)


def noise_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for sample `index` (hashed: neighbouring indices share no state)."""
    digest = hashlib.sha256(f"adr-scale/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------
# Loading


def locate_model(model: str) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """(unet subfolder, UNet config, scheduler config) of a pipeline directory or hub id.

    Layouts: a pipeline (unet/ and scheduler/, e.g. DDPMPipeline.save_pretrained or
    google/ddpm-cifar10-32), or a UNet2DModel directory with scheduler_config.json beside config.json.
    """
    from diffusers import DDPMScheduler, UNet2DModel  # slow import, only where needed

    for sub in ("unet", None):
        try:
            unet_cfg = UNet2DModel.load_config(model, subfolder=sub)
            sched_cfg = DDPMScheduler.load_config(model, subfolder="scheduler" if sub else None)
        except (OSError, ValueError):
            continue
        if unet_cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise ConfigError(f"--model: {model!r} holds a {unet_cfg['_class_name']}; allowed: "
                              "a UNet2DModel (pixel-space DDPM) with a scheduler")
        return sub, unet_cfg, sched_cfg
    raise ConfigError(f"--model: cannot load {model!r}; allowed: a diffusers pipeline directory "
                      "or hub id with unet/ and scheduler/ (e.g. DDPMPipeline.save_pretrained), "
                      "or a UNet2DModel directory with scheduler_config.json")


def model_digest(model: str, sub: str | None) -> str:
    """sha256 over the UNet's weights files (name and content): a model regenerated or replaced
    at the same path is another model; a copy elsewhere is the same one. A hub id is resolved
    to its local snapshot (downloaded if missing, as generation needs it anyway)."""
    root = Path(model)
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(model, allow_patterns=[f"{sub}/*" if sub else "*"]))
        except Exception as exc:  # offline, unknown id, no permission
            raise ConfigError(f"--model: cannot fetch the weights of {model!r} ({exc}); allowed: "
                              "a local pipeline directory or a reachable hub id") from None
    files = sorted((root / sub if sub else root).glob("diffusion_pytorch_model*"))
    if not files:
        raise ConfigError(f"--model: {model!r} has no diffusion_pytorch_model.* weights file "
                          f"in {root / sub if sub else root}")
    sha = hashlib.sha256()
    for f in files:
        sha.update(f"{f.name}\0{sha256_file(f)}\0".encode())
    return sha.hexdigest()


def image_shape_of(unet_cfg: dict[str, Any]) -> tuple[int, int, int]:
    size = unet_cfg["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return unet_cfg["in_channels"], h, w


def make_scheduler(name: str, sched_cfg: dict[str, Any], steps: int):
    from diffusers import DDIMScheduler, DDPMScheduler

    scheduler = (DDPMScheduler if name == "ddpm" else DDIMScheduler).from_config(sched_cfg)
    scheduler.set_timesteps(steps)
    return scheduler


class Labeler:
    """An adr-scale checkpoint as a classifier: its EMA weights if it was trained with train.wa."""

    def __init__(self, path: str, device: torch.device) -> None:
        from adr_scale.checkpoint import WEIGHTS_KEY, load_network

        net = load_network(path, flag="--labeler")  # one-line errors for any unusable file
        info, cfg = net.info, net.cfg
        self.weights = WEIGHTS_KEY[net.which]
        self.model = net.module
        self.model.to(device).eval()
        self.device = device
        self.num_classes = info.num_classes
        self.image_shape = (info.in_channels, info.image_size, info.image_size)
        self.dataset = cfg.data.dataset

    @torch.no_grad()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> class probabilities (B, K), in fixed chunks of LABEL_BATCH."""
        out = []
        for part in images.split(LABEL_BATCH):
            x = part.to(self.device).float().div_(255.0)  # the model normalises inside
            out.append(torch.softmax(self.model(x).float(), dim=1).cpu())
        return torch.cat(out)


_CACHE: dict[tuple, Any] = {}  # per worker process: models survive from one shard to the next


def _pipeline(spec: GenerateSpec, device: torch.device):
    key = ("unet", spec.model, spec.scheduler, spec.steps, str(device), spec.channels_last)
    if key not in _CACHE:
        from diffusers import UNet2DModel

        sub, _, sched_cfg = locate_model(spec.model)
        unet = UNet2DModel.from_pretrained(spec.model, subfolder=sub, low_cpu_mem_usage=False)
        unet = unet.to(device).eval()
        if spec.channels_last:  # cuDNN's tensor-core convolutions want NHWC (no transposes)
            unet = unet.to(memory_format=torch.channels_last)
        _CACHE[key] = (unet, make_scheduler(spec.scheduler, sched_cfg, spec.steps))
    return _CACHE[key]


def _labeler(spec: GenerateSpec, device: torch.device) -> Labeler | None:
    if spec.labeler is None:
        return None
    key = ("labeler", spec.labeler, spec.labeler_sha256, str(device))
    if key not in _CACHE:
        _CACHE[key] = Labeler(spec.labeler, device)
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------
# Sampling


def noise_generators(indices: list[int], seed: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample, on the sampling device, seeded by (seed, index)."""
    return [torch.Generator(device=device).manual_seed(noise_seed(seed, i)) for i in indices]


def initial_noise(gens: list[torch.Generator], shape: tuple[int, int, int],
                  device: torch.device) -> torch.Tensor:
    """x_T: (B, C, H, W) float32 on `device`, row j drawn from gens[j] (on the generators' device,
    which for the old CPU path is the host: then the rows are copied over)."""
    rows = [torch.randn((1, *shape), generator=g, device=g.device) for g in gens]
    return torch.cat(rows).to(device)


@torch.no_grad()
def sample(unet, scheduler, indices: list[int], seed: int, device: torch.device,
           class_labels: torch.Tensor | None = None, *, precision: str = "fp32",
           channels_last: bool = False, noise_device: str | None = None) -> torch.Tensor:
    """Images for global `indices`: uint8 (B, C, H, W) on the CPU. Ancestral noise (DDPM) uses the
    same per-sample generators, so each image is a function of (seed, index) only.

    noise_device: where the generators live, by default `device` (no host RNG, no per-step copy);
    "cpu" on a CUDA device is the old path (kept for the benchmark and for old directories)."""
    c, h, w = image_shape_of(unet.config)
    gens = noise_generators(indices, seed, torch.device(noise_device or device.type))
    x = initial_noise(gens, (c, h, w), device) * scheduler.init_noise_sigma  # (B, C, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = None if class_labels is None else class_labels.to(device)
    dtype = PRECISIONS[precision]
    for t in scheduler.timesteps:
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            eps = unet(scheduler.scale_model_input(x, t), t, class_labels=y).sample
        # float32 from here: the step's arithmetic, and the noise it draws in eps's dtype
        x = scheduler.step(eps.float(), t, x, generator=gens).prev_sample
    if not torch.isfinite(x).all():  # fp16 can overflow; never let NaN into a shard as pixels
        raise ConfigError(f"--precision: {precision} gave non-finite images (indices {indices[0]}"
                          f"..{indices[-1]}); allowed: bf16 (float32's range) or fp32")
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()  # [-1, 1] -> [0, 255]


def _labelled(spec: GenerateSpec, indices: range, device: torch.device,
              progress: Callable[[int], None]) -> Iterator[tuple[torch.Tensor, list[int],
                                                                 torch.Tensor, torch.Tensor | None]]:
    """(images, indices, labels, confidences) per chunk of LABEL_BATCH, generated in --batch-size."""
    unet, scheduler = _pipeline(spec, device)
    labeler = _labeler(spec, device)
    pending: list[torch.Tensor] = []
    done = 0
    for start in range(0, len(indices), spec.batch_size):
        idx = list(indices[start:start + spec.batch_size])
        y = torch.tensor(idx) % spec.num_classes if spec.conditional else None
        pending.append(sample(unet, scheduler, idx, spec.seed, device, y,
                              precision=spec.precision, channels_last=spec.channels_last))
        progress(len(idx))
        have = sum(len(p) for p in pending)
        while have >= LABEL_BATCH or (have and start + spec.batch_size >= len(indices)):
            images = torch.cat(pending)
            chunk, rest = images[:LABEL_BATCH], images[LABEL_BATCH:]
            pending = [rest] if len(rest) else []
            have = len(rest)
            chunk_idx = list(indices[done:done + len(chunk)])
            done += len(chunk)
            if spec.conditional:
                labels = torch.tensor(chunk_idx) % spec.num_classes  # the class it was asked for
                conf = (None if labeler is None
                        else labeler.probs(chunk).gather(1, labels[:, None])[:, 0])
            else:
                conf, labels = labeler.probs(chunk).max(dim=1)
            yield chunk, chunk_idx, labels, conf


def _record(image: torch.Tensor, index: int, label: int, conf: float | None,
            seed: int) -> dict[str, Any]:
    return {"index": index, "image": image.permute(1, 2, 0).numpy(), "cls": label,
            "json": {"index": index, "seed": seed,
                     "confidence": None if conf is None else round(conf, 6)}}


def _all_samples(spec: GenerateSpec, k: int, device, progress) -> Iterator[dict[str, Any]]:
    for images, idx, labels, conf in _labelled(spec, spec.candidates(k, 0), device, progress):
        for j, i in enumerate(idx):
            yield _record(images[j], i, int(labels[j]), None if conf is None else float(conf[j]),
                          spec.seed)


def _balanced_samples(spec: GenerateSpec, k: int, device, progress) -> tuple[list[dict], int]:
    """The `count / K` most confident candidates of every class, and how many were generated.

    Candidates come in rounds of `count` until every class has at least oversample x its share;
    only the best `count / K` per class are held (top-k of a union = top-k of the top-k's).
    """
    count = spec.shard_count(k)
    per_class = count // spec.num_classes
    need = math.ceil(spec.oversample * per_class)
    seen = [0] * spec.num_classes
    best: list[list[tuple[float, int, torch.Tensor]]] = [[] for _ in range(spec.num_classes)]
    for round_ in range(MAX_ROUNDS):
        for images, idx, labels, conf in _labelled(spec, spec.candidates(k, round_), device,
                                                   progress):
            for j, i in enumerate(idx):
                c = int(labels[j])
                seen[c] += 1
                best[c].append((float(conf[j]), i, images[j]))
        for c in range(spec.num_classes):  # most confident first; ties go to the lower index
            best[c] = sorted(best[c], key=lambda t: (-t[0], t[1]))[:per_class]
        if min(seen) >= need:
            kept = sorted((i, c, s, img) for c in range(spec.num_classes)
                          for s, i, img in best[c])
            return [_record(img, i, c, s, spec.seed) for i, c, s, img in kept], (round_ + 1) * count
    rare = min(range(spec.num_classes), key=lambda c: seen[c])
    raise ConfigError(f"--balance: {shard_name(k)}: after {MAX_ROUNDS * count} images the labeller "
                      f"gave class {rare} only {seen[rare]} of the {need} needed; allowed: a lower "
                      "--oversample, a labeller that predicts every class, or no --balance")


def produce_shard(spec: GenerateSpec, k: int, out: str | Path, device: torch.device,
                  progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Generate, label and write shard k of `spec` into `out`; returns its manifest row."""
    out = Path(out)
    if spec.balance:
        samples, generated = _balanced_samples(spec, k, device, progress)
        first = spec.candidates(k, 0).start
        last = first + generated - 1
    else:
        samples, generated = _all_samples(spec, k, device, progress), spec.shard_count(k)
        first, last = spec.candidates(k, 0).start, spec.candidates(k, 0).stop - 1
    written = write_shard(out, k, samples, spec.num_classes)
    assert written.count == spec.shard_count(k), (written.count, spec.shard_count(k))
    return make_row(shard_name(k), written, generated=generated, first_index=first,
                    last_index=last, source=spec.model, scheduler=spec.scheduler,
                    steps=spec.steps, seed=spec.seed, labeler=spec.labeler)


def task_device(spec: GenerateSpec) -> torch.device:
    """The device the spec's noise was promised on; never a silent fallback to another one."""
    if spec.noise_device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("this task was given a GPU but torch sees no CUDA device "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); its "
                           "images would come from CPU noise, which the manifest does not allow")
    return torch.device(spec.noise_device)


def shard_task(spec: GenerateSpec, k: int, out: str, counter) -> dict[str, Any]:
    """The body of one Ray task: shard k, reporting generated images to the `counter` actor."""
    device = task_device(spec)
    # cuDNN benchmark picks the fastest convolution per shape once per process: faster, but the
    # pick may differ between processes, so a rerun matches only up to rounding (the flag's doc).
    torch.backends.cudnn.benchmark = spec.cudnn_benchmark and device.type == "cuda"
    return produce_shard(spec, k, out, device, progress=lambda n: counter.add.remote(n))
