"""Batches onto the training device: uint8 clips copied as they are, or JPEG frames decoded there.

Decoding a clip's JPEG frames costs a CPU loader worker more time than a GPU spends training on the
clip (bench/cache_formats.py, bench/gpu_loader.py), so with the cache in JPEG the loader can instead
hand the frames over still encoded and `decode_jpeg` decodes the whole batch on the device at once
(`data.decode_on`). Items then carry `jpeg`, the clip's T encoded frames, instead of `clip`, and
augmentation runs on the device too, since no pixels exist before then.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

from harness.config.schema import DataConfig

__all__ = ["decode_on_device", "collate_clips", "clips_to_device"]


def decode_on_device(data_cfg: DataConfig, device_type: str) -> bool:
    """Whether `data.decode_on` has cached JPEG frames decoded on the training device of type `device_type`."""
    if data_cfg.decode_on == "device":
        return True  # the schema made sure the cache stores JPEG
    return (data_cfg.decode_on == "auto" and device_type == "cuda" and data_cfg.cache
            and data_cfg.cache_format == "jpeg" and data_cfg.augment.run_on != "loader")


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The default collate, except that encoded frames stay a flat list (clip-major: B clips x T frames).

    Encoded frames differ in length, so they cannot be stacked; `decode_jpeg` takes such a list anyway.
    """
    if "jpeg" not in items[0]:
        return default_collate(items)
    encoded = [item.pop("jpeg") for item in items]
    batch = default_collate(items)
    batch["jpeg"] = [frame for clip in encoded for frame in clip]
    return batch


def clips_to_device(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The batch's clips on `device` as uint8 (B, T, 3, H, W), decoding its JPEG frames there if it has them."""
    if "jpeg" not in batch:
        return batch["clip"].to(device, non_blocking=True)
    from torchvision.io import ImageReadMode, decode_jpeg

    n_clips = len(batch["label"])
    frames = decode_jpeg(batch["jpeg"], mode=ImageReadMode.RGB, device=device)  # B*T of (3, H, W)
    stacked = torch.stack(frames)  # (B*T, 3, H, W)
    return stacked.view(n_clips, len(frames) // n_clips, *stacked.shape[1:])  # (B, T, 3, H, W)
