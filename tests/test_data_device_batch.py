"""JPEG frames decoded on the training device (data.decode_on): same clips as the loader's decode, same augmentation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader

from harness.config.schema import FFPP_METHODS, AugmentConfig, DataConfig
from harness.data.augment import apply_clip_params
from harness.data.dataset import ClipDataset
from harness.data.device_batch import clips_to_device, collate_clips, decode_on_device
from harness.data.index import index_ffpp


@pytest.fixture(scope="module")
def train_rows(synthetic_root: Path) -> pd.DataFrame:
    manifest = index_ffpp(synthetic_root, FFPP_METHODS, progress=False).manifest
    return manifest[manifest.split == "train"].head(6)


def _data_cfg(cache_dir: Path, decode_on: str, run_on: str = "auto", **augment: object) -> DataConfig:
    return DataConfig(source="synthetic", input_size=32, n_segment=4, clip_seconds=1.0, min_frames=8,
                      cache_dir=cache_dir, cache_format="jpeg", decode_on=decode_on,
                      augment=AugmentConfig(run_on=run_on, **augment))


def _batch(dataset: ClipDataset, n: int = 6) -> dict:
    return next(iter(DataLoader(dataset, batch_size=n, collate_fn=collate_clips)))


def test_placement_follows_decode_on_the_device_and_the_cache() -> None:
    jpeg = DataConfig(cache_format="jpeg")
    assert decode_on_device(jpeg, "cuda") and not decode_on_device(jpeg, "cpu")
    assert decode_on_device(DataConfig(cache_format="jpeg", decode_on="device"), "cpu")
    assert not decode_on_device(DataConfig(cache_format="raw"), "cuda")  # nothing encoded to decode
    assert not decode_on_device(DataConfig(cache=False), "cuda")
    assert not decode_on_device(DataConfig(cache_format="jpeg", decode_on="loader"), "cuda")
    assert not decode_on_device(DataConfig(augment=AugmentConfig(run_on="loader")), "cuda")  # pixels needed there


@pytest.mark.parametrize("settings, named", [
    (dict(cache_format="raw"), "data.cache_format"),
    (dict(cache=False), "data.cache"),
    (dict(augment=AugmentConfig(run_on="loader")), "data.augment.run_on"),
])
def test_decoding_on_the_device_is_refused_where_it_cannot_work(settings: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        DataConfig(decode_on="device", **settings)


def test_frames_decoded_on_the_device_equal_the_loaders_decode(train_rows: pd.DataFrame, tmp_path: Path) -> None:
    in_loader = ClipDataset(train_rows, _data_cfg(tmp_path, "loader"), train=False, seed=0)
    on_device = ClipDataset(train_rows, _data_cfg(tmp_path, "device"), train=False, seed=0)
    expected, batch = _batch(in_loader), _batch(on_device)
    assert "clip" not in batch and len(batch["jpeg"]) == 6 * 4  # B clips x T frames, still encoded
    assert all(frame.dtype == torch.uint8 and frame.dim() == 1 for frame in batch["jpeg"])
    clips = clips_to_device(batch, torch.device("cpu"))
    assert clips.shape == expected["clip"].shape == (6, 4, 3, 32, 32) and clips.dtype == torch.uint8
    # On the CPU both decoders are libjpeg-turbo: equal to the level. (A GPU's nvJPEG may differ by a few
    # levels; bench/gpu_loader.py measures by how much.)
    assert torch.equal(clips, expected["clip"])
    assert torch.equal(batch["label"], expected["label"]) and torch.equal(batch["video_idx"], expected["video_idx"])


def test_clips_decoded_on_the_device_augment_as_in_the_loader(train_rows: pd.DataFrame, tmp_path: Path) -> None:
    augment = dict(hflip=True, color_jitter=[0.8, 0.8, 0.8, 0.4])
    in_loader = ClipDataset(train_rows, _data_cfg(tmp_path, "loader", "loader", **augment), train=True, seed=5)
    on_device = ClipDataset(train_rows, _data_cfg(tmp_path, "device", "device", **augment), train=True, seed=5)
    for epoch in (0, 1):
        in_loader.set_epoch(epoch)
        on_device.set_epoch(epoch)
        batch = _batch(on_device)
        clips = apply_clip_params(clips_to_device(batch, torch.device("cpu")), batch["augment"])
        assert torch.equal(clips, _batch(in_loader)["clip"])


def test_a_batch_without_encoded_frames_is_copied_as_it_is() -> None:
    clip = torch.randint(0, 255, (2, 3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(clips_to_device({"clip": clip, "label": torch.zeros(2)}, torch.device("cpu")), clip)
