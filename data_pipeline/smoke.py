"""The smoke path of generate_ddpm: a tiny random diffusers UNet and a labeller for it, on a CPU.

    python -m data_pipeline.smoke /tmp/smoke      # writes /tmp/smoke/unet (a DDPMPipeline directory)
                                                  # and /tmp/smoke/labeler.pt, prints the command

The UNet is untrained (it makes structured noise, 1 x 8 x 8 like the bundled digits). The labeller
is the `smoke_standard` preset's tiny network, untrained except for its last layer, which is set
so that the UNet's images spread over all ten classes (random projections of centred features);
a real labeller would put noise into one or two classes and --balance could not be exercised.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

UNET_KWARGS = dict(  # 42k parameters; 64 images x 4 steps in about half a second on a CPU core
    layers_per_block=1, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
    up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)


def tiny_unet(path: str | Path, *, channels: int = 1, size: int = 8,
              num_class_embeds: int | None = None, seed: int = 0) -> Path:
    """A random UNet2DModel + DDPMScheduler saved as a DDPMPipeline directory."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                       num_class_embeds=num_class_embeds, **UNET_KWARGS)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    return Path(path)


def tiny_labeler(path: str | Path, unet_dir: str | Path, *, seed: int = 0,
                 fit_images: int = 256) -> Path:
    """An adr-scale checkpoint (digits, tiny net, train.wa) whose EMA model spreads the UNet's
    images over all classes; the student weights are the untrained ones."""
    from adr_scale.checkpoint import checkpoint_state
    from adr_scale.config import apply_overrides, get_preset
    from adr_scale.data import DATASET_INFO
    from adr_scale.engine import build_state
    from data_pipeline.diffusion import locate_model, make_scheduler, sample

    cfg = apply_overrides(get_preset("smoke_standard"), ["train.device=cpu", f"seed={seed}"])
    state = build_state(cfg, DATASET_INFO["digits"], 1000, torch.device("cpu"))
    from diffusers import UNet2DModel

    sub, _, sched_cfg = locate_model(str(unet_dir))
    unet = UNet2DModel.from_pretrained(str(unet_dir), subfolder=sub, low_cpu_mem_usage=False)
    images = sample(unet.eval(), make_scheduler("ddpm", sched_cfg, 4),
                    list(range(10**9, 10**9 + fit_images)), seed, torch.device("cpu"))
    teacher = state.ema.module
    features = []
    hook = teacher.net.fc.register_forward_hook(lambda m, i, o: features.append(i[0]))
    with torch.no_grad():
        teacher(images.float() / 255)
    hook.remove()
    f = features[0]  # (N, D)
    w = torch.randn(teacher.net.fc.out_features, f.shape[1],
                    generator=torch.Generator().manual_seed(seed)) / f.std(0).mean()
    with torch.no_grad():
        teacher.net.fc.weight.copy_(w)
        teacher.net.fc.bias.copy_(-w @ f.mean(0))
    torch.save(checkpoint_state(state), path)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m data_pipeline.smoke DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    unet = tiny_unet(root / "unet")
    labeler = tiny_labeler(root / "labeler.pt", unet)
    print(f"python -m data_pipeline.generate_ddpm --model {unet} --labeler {labeler} "
          f"--num-images 1000 --shard-size 250 --steps 20 --balance --out {root / 'shards'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
