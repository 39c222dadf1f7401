"""The two records every dataset reader returns: images with labels, and what a model needs to
know about them. A module of its own so that every reader imports it and none imports another."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ArrayDataset:
    images: torch.Tensor  # (N, C, H, W) uint8, contiguous
    labels: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4
        assert self.images.is_contiguous()
        assert self.labels.dtype == torch.int64 and self.labels.shape == (len(self.images),)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    image_size: int  # pixels, square images
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    std: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    class_names: tuple[str, ...] | None = None  # generic forms: class index -> name
