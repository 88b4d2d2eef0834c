from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from harness.config.schema import FFPP_METHODS, AugmentConfig, DataConfig
from harness.data.dataset import ClipDataset, build_loaders, class_counts
from harness.data.index import index_ffpp
from harness.errors import DataError


@pytest.fixture(scope="module")
def manifest(synthetic_root: Path) -> pd.DataFrame:
    return index_ffpp(synthetic_root, FFPP_METHODS, progress=False).manifest


def _cfg(**overrides) -> DataConfig:
    # 24 frames at 12 fps: a 1 s clip spans 12 frames, 4 segments of 3.
    base = dict(source="synthetic", input_size=32, n_segment=4, clip_seconds=1.0, min_frames=8)
    return DataConfig(**{**base, **overrides})


def test_items_have_the_promised_shape_and_types(manifest: pd.DataFrame) -> None:
    train = manifest[manifest.split == "train"]
    ds = ClipDataset(train, _cfg(clips_per_video_train=2, input_size=40), train=True, seed=0)
    assert len(ds) == 2 * len(train)
    item = ds[3]
    assert item["clip"].shape == (4, 3, 40, 40) and item["clip"].dtype == torch.uint8
    assert item["label"].dtype == torch.float32 and item["label"].shape == ()
    assert item["video_idx"] == 1 and item["label"].item() == ds.manifest.label[1]


def test_train_clips_depend_on_seed_epoch_and_index_only(manifest: pd.DataFrame) -> None:
    cfg = _cfg(augment=AugmentConfig(hflip=True, color_jitter=[0.2, 0.2, 0.2, 0.1]))
    a, b = (ClipDataset(manifest[manifest.split == "train"], cfg, train=True, seed=5) for _ in range(2))
    torch.manual_seed(123)  # the global RNG must not matter
    first = [a[i]["clip"] for i in range(6)]
    torch.manual_seed(456)
    assert all(torch.equal(b[i]["clip"], first[i]) for i in reversed(range(6)))  # any order
    a.set_epoch(1)
    assert not all(torch.equal(a[i]["clip"], first[i]) for i in range(6))
    other_seed = ClipDataset(manifest[manifest.split == "train"], cfg, train=True, seed=6)
    assert not all(torch.equal(other_seed[i]["clip"], first[i]) for i in range(6))


def test_eval_clips_are_fixed_and_spread_over_the_video(manifest: pd.DataFrame) -> None:
    val = manifest[manifest.split == "val"]
    ds = ClipDataset(val, _cfg(clips_per_video_eval=3), train=False, seed=0)
    assert len(ds) == 3 * len(val)
    assert torch.equal(ds[0]["clip"], ds[0]["clip"])
    windows = [ds._indices(i, 0, i, None).tolist() for i in range(3)]
    # 24 frames, span 12: windows start at 0, 6 and 12; segment centres at offsets 1, 4, 7, 10.
    assert windows == [[1, 4, 7, 10], [7, 10, 13, 16], [13, 16, 19, 22]]
    single = ClipDataset(val, _cfg(), train=False, seed=0)
    assert single._indices(0, 0, 0, None).tolist() == [7, 10, 13, 16]  # centred


def test_class_counts(manifest: pd.DataFrame) -> None:
    # 6 sources in 3 pairs, one pair per split: 2 reals and 2 x 5 fakes each.
    assert class_counts(manifest, "train") == (2, 10)
    assert class_counts(manifest, "val") == (2, 10)


def test_balanced_sampler_evens_out_the_classes(manifest: pd.DataFrame) -> None:
    loaders = build_loaders(manifest, _cfg(sampler="balanced"), batch_size=4, seed=0)
    sampler = loaders.train.sampler
    assert isinstance(sampler, WeightedRandomSampler) and len(sampler) == len(loaders.train_dataset)
    labels = loaders.train_dataset.labels
    drawn = np.concatenate([labels[list(sampler)] for _ in range(200)])  # 200 epochs of 12 draws
    assert abs(drawn.mean() - 0.5) < 0.03  # 5:1 in the data, about 1:1 drawn
    assert not loaders.train.drop_last


def test_loaders_split_and_shuffle_reproducibly(manifest: pd.DataFrame) -> None:
    order = [list(build_loaders(manifest, _cfg(), batch_size=4, seed=s).train.sampler) for s in (0, 0, 1)]
    assert order[0] == order[1] != order[2]
    loaders = build_loaders(manifest, _cfg(), batch_size=4, seed=0)
    assert (len(loaders.train_dataset), len(loaders.val_dataset), len(loaders.test_dataset)) == (12, 12, 12)
    batch = next(iter(loaders.val))
    assert batch["clip"].shape == (4, 4, 3, 32, 32) and batch["video_idx"].tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="split 'test' must hold videos"):
        build_loaders(manifest[manifest.split != "test"], _cfg(), batch_size=4, seed=0)


def test_workers_give_the_same_batches_and_follow_set_epoch(manifest: pd.DataFrame) -> None:
    def epochs(num_workers: int) -> list[torch.Tensor]:
        loaders = build_loaders(manifest, _cfg(num_workers=num_workers), batch_size=8, seed=3)
        out = []
        for epoch in range(2):
            loaders.train_dataset.set_epoch(epoch)  # before iterating: persistent workers read it from shared memory
            out.append(torch.cat([b["clip"] for b in loaders.train]))
        return out

    serial, parallel = epochs(0), epochs(2)
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1], parallel[1])
    assert not torch.equal(serial[0], serial[1])
