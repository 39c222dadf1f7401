"""Sampling a diffusers UNet, pseudo-labelling, and producing one shard. Ray is not imported here:
the driver (generate_ddpm.py) wraps `shard_task` with ray.remote.

Every sample's noise comes from its own torch.Generator seeded by (seed, global index), created on
the CPU whatever the device, so a sample does not depend on which worker, node or batch produced
it. A shard is cut into batches from its own first index, so the same --batch-size reproduces a
shard byte for byte. (Batched float kernels round a little differently at other batch sizes: the
images then differ by at most 1 in about 1e-5 of their pixels; see docs/data.md.)
"""

from __future__ import annotations

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
    batch_size: int = field(default=256, compare=False)  # images per UNet forward

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run that wrote the directory."""
        d = asdict(self)
        # These may differ between runs; the model and labeller count by their digests.
        for key in ("num_images", "batch_size", "labeler", "model"):
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
        from adr_scale.data import DATASET_INFO
        from adr_scale.engine import build_model, config_of, load_checkpoint

        try:
            ckpt = load_checkpoint(path)
            cfg = config_of(ckpt)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise ConfigError(f"--labeler: cannot read {path!r} as an adr-scale checkpoint "
                              f"({type(exc).__name__}); allowed: a .pt written by adr_scale "
                              "(best.pt / final.pt)") from None
        info = DATASET_INFO[cfg.data.dataset]
        self.weights = "ema" if cfg.train.wa else "model"
        self.model = build_model(cfg, info)
        try:
            self.model.load_state_dict(ckpt[self.weights])
        except (KeyError, RuntimeError) as exc:  # weights of another architecture or size
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise ConfigError(f"--labeler: {path!r}: its {self.weights} weights do not fit "
                              f"model.arch={cfg.model.arch!r} of its config ({first})") from None
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
    key = ("unet", spec.model, spec.scheduler, spec.steps, str(device))
    if key not in _CACHE:
        from diffusers import UNet2DModel

        sub, _, sched_cfg = locate_model(spec.model)
        unet = UNet2DModel.from_pretrained(spec.model, subfolder=sub, low_cpu_mem_usage=False)
        unet = unet.to(device).eval()
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


@torch.no_grad()
def sample(unet, scheduler, indices: list[int], seed: int, device: torch.device,
           class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Images for global `indices`: uint8 (B, C, H, W) on the CPU. Ancestral noise (DDPM) uses the
    same per-sample generators, so each image is a function of (seed, index) only."""
    c, h, w = image_shape_of(unet.config)
    gens = [torch.Generator().manual_seed(noise_seed(seed, i)) for i in indices]
    x = torch.cat([torch.randn((1, c, h, w), generator=g) for g in gens]).to(device)  # (B, C, H, W)
    x = x * scheduler.init_noise_sigma
    y = None if class_labels is None else class_labels.to(device)
    for t in scheduler.timesteps:
        eps = unet(scheduler.scale_model_input(x, t), t, class_labels=y).sample
        x = scheduler.step(eps, t, x, generator=gens).prev_sample
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
        pending.append(sample(unet, scheduler, idx, spec.seed, device, y))
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


def task_device(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def shard_task(spec: GenerateSpec, k: int, out: str, counter, gpus: float) -> dict[str, Any]:
    """The body of one Ray task: shard k, reporting generated images to the `counter` actor."""
    torch.backends.cudnn.benchmark = False  # the same kernels every time: reproducible shards
    return produce_shard(spec, k, out, task_device(gpus), progress=lambda n: counter.add.remote(n))

