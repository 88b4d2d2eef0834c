from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from harness.config import load_config
from harness.config.schema import AugmentConfig, DataConfig
from harness.data.dataset import ClipDataset, DrawSampler, build_loaders, class_counts
from harness.data.index import build_manifest
from harness.errors import DataError
from harness.train.session import reseed_loader

ROOT = Path(__file__).resolve().parents[1]


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
    single = ClipDataset(val, _cfg(clips_per_video_eval=1), train=False, seed=0)
    assert single._indices(0, 0, 0, None).tolist() == [7, 10, 13, 16]  # centred


def test_class_counts(manifest: pd.DataFrame) -> None:
    # 6 sources in 3 pairs, one pair per split: 2 reals and 2 x 5 fakes each.
    assert class_counts(manifest, "train") == (2, 10)
    assert class_counts(manifest, "val") == (2, 10)


def test_balanced_sampler_evens_out_the_classes(manifest: pd.DataFrame) -> None:
    loaders = build_loaders(manifest, _cfg(sampler="balanced"), batch_size=4, seed=0)
    sampler = loaders.train.sampler
    assert isinstance(sampler, DrawSampler) and isinstance(sampler.base, WeightedRandomSampler)
    assert len(sampler) == len(loaders.train_dataset)
    labels = loaders.train_dataset.labels
    drawn = np.concatenate([labels[[item for item, _ in sampler]] for _ in range(200)])  # 200 epochs of 12 draws
    assert abs(drawn.mean() - 0.5) < 0.03  # 5:1 in the data, about 1:1 drawn
    assert not loaders.train.drop_last


def test_loaders_split_and_shuffle_reproducibly(manifest: pd.DataFrame) -> None:
    order = [list(build_loaders(manifest, _cfg(), batch_size=4, seed=s).train.sampler) for s in (0, 0, 1)]
    assert order[0] == order[1] != order[2]
    loaders = build_loaders(manifest, _cfg(), batch_size=4, seed=0)
    # Evaluation scores 4 clips per video by default: the first batch is video 0's four windows.
    assert (len(loaders.train_dataset), len(loaders.val_dataset), len(loaders.test_dataset)) == (12, 48, 48)
    batch = next(iter(loaders.val))
    assert batch["clip"].shape == (4, 4, 3, 32, 32) and batch["video_idx"].tolist() == [0, 0, 0, 0]
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


def _balanced_epochs(manifest: pd.DataFrame, num_workers: int, epochs: int = 2, batch_size: int = 5) -> list[dict]:
    """Every train item of `epochs` epochs of a balanced run, reseeded as the trainer does."""
    cfg = _cfg(sampler="balanced", num_workers=num_workers, augment=AugmentConfig(hflip=True, color_jitter=[0.2, 0.2, 0.2, 0.1]))
    loaders = build_loaders(manifest, cfg, batch_size=batch_size, seed=7)
    out = []
    for epoch in range(epochs):
        reseed_loader(loaders.train, 7, epoch)
        batches = list(loaders.train)
        out.append({k: torch.cat([b[k] for b in batches]) for k in ("clip", "video_idx")})
    return out


def test_draw_sampler_numbers_repeated_items_and_exposes_the_generator() -> None:
    generator = torch.Generator().manual_seed(0)
    base = WeightedRandomSampler([0.1, 0.9], num_samples=6, replacement=True, generator=generator)
    sampler = DrawSampler(base)
    assert sampler.generator is generator and len(sampler) == 6
    generator.manual_seed(1)
    pairs = list(sampler)
    generator.manual_seed(1)
    items = list(base)
    assert [item for item, _ in pairs] == items
    # The draw number is how often the item came up before in this pass, restarting every pass.
    assert [draw for _, draw in pairs] == [items[:i].count(item) for i, item in enumerate(items)]
    generator.manual_seed(1)
    assert list(sampler) == pairs


def test_balanced_sampler_repeats_of_a_real_video_are_different_clips(manifest: pd.DataFrame) -> None:
    epoch = _balanced_epochs(manifest, num_workers=0, epochs=1)[0]
    videos = epoch["video_idx"].tolist()
    # 2 real and 10 fake train videos: balancing draws each real about 3 times in an epoch of 12.
    repeated = [v for v in set(videos) if videos.count(v) > 1 and manifest[manifest.split == "train"].label.iloc[v] == 0]
    assert repeated
    for video in repeated:
        clips = [epoch["clip"][i] for i, v in enumerate(videos) if v == video]
        assert all(not torch.equal(a, b) for i, a in enumerate(clips) for b in clips[i + 1:])


def test_balanced_batches_repeat_per_seed_and_ignore_workers(manifest: pd.DataFrame) -> None:
    serial, again, parallel = (_balanced_epochs(manifest, n) for n in (0, 0, 2))
    for epoch in range(2):
        for key in ("clip", "video_idx"):
            assert torch.equal(serial[epoch][key], again[epoch][key])
            assert torch.equal(serial[epoch][key], parallel[epoch][key])
    assert not torch.equal(serial[0]["clip"], serial[1]["clip"])


def test_first_draw_keeps_the_clip_of_a_plain_index(manifest: pd.DataFrame) -> None:
    ds = ClipDataset(manifest[manifest.split == "train"], _cfg(augment=AugmentConfig(hflip=True)), train=True, seed=2)
    assert torch.equal(ds[(3, 0)]["clip"], ds[3]["clip"])
    assert ds._indices(3, 3, 0, ds._train_rng(3, 0)).tolist() == ds._indices(3, 3, 0, np.random.default_rng([2, 0, 3])).tolist()
    assert not torch.equal(ds[(3, 1)]["clip"], ds[3]["clip"])
    with pytest.raises(IndexError, match="draw >= 0, but got index=3, draw=-1"):
        ds[(3, -1)]


def test_oom_rebatching_keeps_the_balanced_clips(manifest: pd.DataFrame) -> None:
    cfg = _cfg(sampler="balanced", augment=AugmentConfig(hflip=True))
    loaders = build_loaders(manifest, cfg, batch_size=6, seed=4)
    reseed_loader(loaders.train, 4, 1)
    full = torch.cat([b["clip"] for b in loaders.train])
    halved = loaders.with_batch_size(3)
    reseed_loader(halved.train, 4, 1)
    assert halved.train.sampler is loaders.train.sampler
    assert torch.equal(torch.cat([b["clip"] for b in halved.train]), full)


def test_shipped_demo_scores_several_distinct_windows_per_video(tmp_path: Path) -> None:
    # The shipped data settings, on a tiny tree with the demo's 48-frame, 12 fps videos.
    tiny = ["n_sources=6", "val_sources=2", "test_sources=2", "size=32", "methods=[Deepfakes]"]
    cfg = load_config([ROOT / "baseline.yaml", ROOT / "configs/demo.yaml"],
                      [f"data.root={tmp_path}"] + [f"data.synthetic.{o}" for o in tiny])
    k = cfg.data.clips_per_video_eval
    assert k > 1 and load_config([ROOT / "baseline.yaml"]).data.clips_per_video_eval > 1
    loaders = build_loaders(build_manifest(cfg.data, progress=False), cfg.data, batch_size=cfg.train.batch_size, seed=0)
    batches = list(loaders.val)
    videos, clips = torch.cat([b["video_idx"] for b in batches]), torch.cat([b["clip"] for b in batches])
    assert torch.bincount(videos).tolist() == [k] * len(loaders.val_dataset.manifest)
    for video in videos.unique():
        own = clips[videos == video]
        assert all(not torch.equal(own[i], own[j]) for i in range(k) for j in range(i + 1, k))
    ds, span = loaders.val_dataset, 24  # 2 s at 12 fps
    windows = [ds._indices(c, 0, c, None) for c in range(k)]
    assert len({int(w[0]) for w in windows}) == k  # every window starts at another frame...
    assert windows[0].min() < span // cfg.data.n_segment and windows[-1].max() >= 48 - span // cfg.data.n_segment  # ...end to end
