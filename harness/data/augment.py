"""Clip augmentation: one random draw per clip, so every frame gets the same flip and jitter.

A per-frame draw would add frame-to-frame flicker, exactly the kind of temporal artefact the
detector is meant to find in fakes.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.config.schema import AugmentConfig

__all__ = ["ClipAugment"]


class ClipAugment:
    """Callable on a uint8 clip (T, 3, H, W); returns the same shape and dtype. Draws from torch's RNG."""

    def __init__(self, cfg: AugmentConfig) -> None:
        transforms: list[v2.Transform] = []
        if cfg.hflip:
            transforms.append(v2.RandomHorizontalFlip(p=0.5))
        if cfg.color_jitter is not None:
            brightness, contrast, saturation, hue = cfg.color_jitter
            transforms.append(v2.ColorJitter(brightness, contrast, saturation, hue))
        self._transform = v2.Compose(transforms) if transforms else None

    @property
    def active(self) -> bool:
        return self._transform is not None

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if self._transform is None:
            return clip
        # As a Video, v2 treats the (T, C, H, W) tensor as one sample: one parameter draw for all T frames.
        return self._transform(tv_tensors.Video(clip)).as_subclass(torch.Tensor)
