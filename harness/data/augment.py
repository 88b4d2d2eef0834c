"""Clip augmentation: one random draw per clip, so every frame gets the same flip and jitter.

A per-frame draw would add frame-to-frame flicker, exactly the kind of temporal artefact the
detector is meant to find in fakes.

Two ways to run it, chosen by `data.augment.run_on` (see `augment_on_device`): `ClipAugment`
augments one clip in a loader worker; or the worker only draws the clip's parameters
(`draw_clip_params`) and the trainer applies a whole batch of them on its device
(`apply_clip_params`), because per-clip CPU augmentation is far slower than a GPU trains.
Both draw the same parameters from the same torch seed.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# torchvision's public colour kernels take one scalar factor per call; its HSV conversions already
# work on any leading batch shape, so the batched hue shift reuses them rather than copying them.
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from harness.config.schema import AugmentConfig

__all__ = ["ClipAugment", "PARAM_NAMES", "augment_on_device", "draw_clip_params", "apply_clip_params"]

# One clip's parameters as a float row, so the default collate stacks a batch into (B, K).
# flip is 0 or 1; a disabled colour op has factor NaN; order0..3 is ColorJitter's `fn_idx`
# (0 brightness, 1 contrast, 2 saturation, 3 hue), the order the four ops are applied in.
PARAM_NAMES = ("flip", "brightness", "contrast", "saturation", "hue", "order0", "order1", "order2", "order3")
_FLIP, _FACTORS, _ORDER = 0, slice(1, 5), slice(5, 9)


def augment_on_device(run_on: str, device_type: str) -> bool:
    """Whether `data.augment.run_on` puts augmentation on the training device of type `device_type`."""
    return run_on == "device" or (run_on == "auto" and device_type == "cuda")


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


def draw_clip_params(cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One clip's parameters (see PARAM_NAMES), drawn as `ClipAugment` draws them.

    The draws, their order and their ranges are those of v2's RandomHorizontalFlip(p=0.5) then
    ColorJitter, so a generator seeded with s gives the parameters `ClipAugment` uses after
    `torch.manual_seed(s)`. Without a generator, draws from torch's default one, as `ClipAugment` does.
    """
    params = torch.full((len(PARAM_NAMES),), float("nan"))
    params[_FLIP] = 0.0
    params[_ORDER] = torch.arange(4, dtype=torch.float32)
    if cfg.hflip:
        # _RandomApplyTransform skips the flip when rand >= p.
        params[_FLIP] = float(torch.rand(1, generator=generator).item() < 0.5)
    if cfg.color_jitter is not None:
        # The ranges as ColorJitter derives them (clipped at 0, None for a zero), read from ColorJitter itself.
        jitter = v2.ColorJitter(*cfg.color_jitter)
        params[_ORDER] = torch.randperm(4, generator=generator).float()
        for i, bounds in enumerate((jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)):
            if bounds is not None:
                params[_FACTORS.start + i] = torch.empty(1).uniform_(bounds[0], bounds[1], generator=generator).item()
    return params


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    # torchvision's _blend with a factor per clip: 1 - ratio in double, as Python computes its alpha, and
    # one fused multiply-add, as its add_(other, alpha=...) does (a separate product moves some pixels by 1).
    alpha = (1.0 - ratio.double()).float()
    return torch.addcmul(image.mul(ratio), other, alpha).clamp_(0, 255).to(torch.uint8)


def _grayscale(clips: torch.Tensor) -> torch.Tensor:
    # uint8 grayscale is the float luma truncated, i.e. floored: what torchvision blends with for uint8.
    return F.rgb_to_grayscale(clips).float()  # (n, T, 1, H, W)


def _brightness(clips: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return clips.mul(factor).clamp_(0, 255).to(torch.uint8)


def _contrast(clips: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # For a Video torchvision averages over (C, H, W) only: one mean per frame, not per clip.
    mean = _grayscale(clips).mean(dim=(-3, -2, -1), keepdim=True)  # (n, T, 1, 1, 1)
    return _blend(clips, mean, factor)


def _saturation(clips: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(clips, _grayscale(clips), factor)


def _hue(clips: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(F.to_dtype(clips, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)  # each (n, T, H, W)
    h = h.add(factor.view(-1, 1, 1, 1)).remainder_(1.0)
    return F.to_dtype(_hsv_to_rgb(torch.stack((h, s, v), dim=-3)), torch.uint8, scale=True)


_COLOUR_OPS = (_brightness, _contrast, _saturation, _hue)  # indexed by ColorJitter's fn_idx


def apply_clip_params(clips: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Augment uint8 clips (B, T, 3, H, W) on their device, clip b with the parameters `params[b]` (B, K).

    Under the same draws it gives `ClipAugment`'s output: the same float32 arithmetic op by op, and on
    the CPU the same pixels (exactly equal in the tests). Other devices' kernels may round a rare
    pixel differently, moving it by 1 of 255.
    """
    if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[2] != 3:
        raise ValueError(f"clips must be uint8 (B, T, 3, H, W), but got {clips.dtype} {tuple(clips.shape)}")
    if params.shape != (len(clips), len(PARAM_NAMES)):
        raise ValueError(f"params must be ({len(clips)}, {len(PARAM_NAMES)}), but got {tuple(params.shape)}")
    # Grouping clips by operation on the CPU copy keeps the index lists free of device syncs.
    plan = params.detach().cpu()
    factors = params.to(clips.device, torch.float32)
    out = clips.clone()
    flipped = plan[:, _FLIP].nonzero().squeeze(1).to(clips.device)
    if len(flipped):
        out[flipped] = out[flipped].flip(-1)
    order = plan[:, _ORDER].long()  # (B, 4)
    enabled = ~plan[:, _FACTORS].isnan()  # (B, 4), by op
    for step in range(4):
        for op, apply in enumerate(_COLOUR_OPS):
            rows = ((order[:, step] == op) & enabled[:, op]).nonzero().squeeze(1).to(clips.device)
            if len(rows):
                factor = factors[rows, _FACTORS.start + op].view(-1, 1, 1, 1, 1)  # (n, 1, 1, 1, 1): all frames alike
                out[rows] = apply(out[rows], factor)
    return out
