from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

import harness.train.trainer as trainer
from harness.config import load_config
from harness.config.schema import AugmentConfig, DataConfig
from harness.data.dataset import DrawSampler, build_loaders
from harness.data.samplers import StratifiedEpochSampler, class_quotas
from harness.train.session import reseed_loader
from harness.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
SEED = 3


def _cfg(**overrides) -> DataConfig:
    base = dict(source="synthetic", input_size=32, n_segment=4, clip_seconds=1.0, min_frames=8)
    return DataConfig(**{**base, **overrides})


def _epoch(sampler: DrawSampler, epoch: int) -> list[tuple[int, int]]:
    """The (item, draw) pairs of one epoch, reseeded as the trainer does."""
    sampler.generator.manual_seed(SEED * 1_000_003 + epoch)
    return list(sampler)


def test_class_quotas_round_each_share_and_sum_to_the_budget() -> None:
    labels = np.array([0] * 2 + [1] * 10)
    assert class_quotas(labels, 7) == {0: 1, 1: 6}  # exact 1.17 and 5.83
    assert class_quotas(labels, 30) == {0: 5, 1: 25}
    assert class_quotas(np.array([0, 1, 2]), 4) == {0: 2, 1: 1, 2: 1}  # equal remainders: lower label first


@pytest.mark.parametrize("budget", [7, 30])
def test_epoch_draws_the_budget_stratified_by_label(manifest: pd.DataFrame, budget: int) -> None:
    loaders = build_loaders(manifest, _cfg(), batch_size=4, seed=SEED, clips_per_epoch=budget)
    sampler = loaders.train.sampler
    assert isinstance(sampler, DrawSampler) and isinstance(sampler.base, StratifiedEpochSampler)
    assert len(sampler) == budget and len(loaders.train) == math.ceil(budget / 4)
    labels = loaders.train_dataset.labels
    for epoch in range(3):
        drawn = labels[[item for item, _ in _epoch(sampler, epoch)]]
        assert len(drawn) == budget
        for label in (0, 1):
            assert abs((drawn == label).sum() - budget * (labels == label).mean()) < 1


def test_no_item_repeats_before_its_whole_class_was_drawn(manifest: pd.DataFrame) -> None:
    loaders = build_loaders(manifest, _cfg(), batch_size=4, seed=SEED, clips_per_epoch=30)
    labels = loaders.train_dataset.labels
    pairs = _epoch(loaders.train.sampler, 0)
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        counts = Counter({int(m): 0 for m in members})
        for item, draw in pairs:
            if labels[item] == label:
                assert draw == counts[item]  # DrawSampler numbers the repeats
                counts[item] += 1
                assert max(counts.values()) - min(counts.values()) <= 1
    # 30 draws of 12 items: every item at least twice, the 2 reals 2 or 3 times each.
    assert min(Counter(item for item, _ in pairs).values()) >= 2


def test_epochs_differ_and_the_same_seed_and_epoch_repeat(manifest: pd.DataFrame) -> None:
    def run() -> list[list[tuple[int, int]]]:
        sampler = build_loaders(manifest, _cfg(), batch_size=4, seed=SEED, clips_per_epoch=20).train.sampler
        return [_epoch(sampler, epoch) for epoch in (0, 1, 0)]

    first, again = run(), run()
    assert first == again
    assert first[0] == first[2] != first[1]


def test_balanced_sampler_draws_the_budget_about_evenly(manifest: pd.DataFrame) -> None:
    loaders = build_loaders(manifest, _cfg(sampler="balanced"), batch_size=4, seed=SEED, clips_per_epoch=50)
    sampler = loaders.train.sampler
    assert isinstance(sampler.base, WeightedRandomSampler) and len(sampler) == 50 and len(loaders.train) == 13
    labels = loaders.train_dataset.labels
    drawn = np.concatenate([labels[[item for item, _ in _epoch(sampler, epoch)]] for epoch in range(40)])
    assert len(drawn) == 40 * 50 and abs(drawn.mean() - 0.5) < 0.03  # 5:1 in the data


def test_workers_give_the_same_draws_and_clips(manifest: pd.DataFrame) -> None:
    def epoch_of(num_workers: int) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]:
        cfg = _cfg(num_workers=num_workers, augment=AugmentConfig(hflip=True))
        loaders = build_loaders(manifest, cfg, batch_size=5, seed=SEED, clips_per_epoch=20)
        reseed_loader(loaders.train, SEED, 1)
        pairs = list(loaders.train.sampler)
        reseed_loader(loaders.train, SEED, 1)
        batches = list(loaders.train)
        return pairs, torch.cat([b["video_idx"] for b in batches]), torch.cat([b["clip"] for b in batches])

    (pairs, videos, clips), (pairs2, videos2, clips2) = epoch_of(0), epoch_of(2)
    assert pairs == pairs2 and torch.equal(videos, videos2) and torch.equal(clips, clips2)
    assert videos.tolist() == [item for item, _ in pairs]  # one clip per video: item == video
    # A repeated item is drawn with its own window, not the same clip again.
    repeats = [i for i, (_, draw) in enumerate(pairs) if draw > 0]
    assert repeats
    for i in repeats:
        first = next(j for j, (item, draw) in enumerate(pairs) if item == pairs[i][0] and draw == 0)
        assert not torch.equal(clips[i], clips[first])


def test_without_a_budget_the_samplers_are_one_pass(manifest: pd.DataFrame) -> None:
    plain = build_loaders(manifest, _cfg(), batch_size=4, seed=SEED).train.sampler
    assert isinstance(plain.base, RandomSampler) and len(plain) == 12
    balanced = build_loaders(manifest, _cfg(sampler="balanced"), batch_size=4, seed=SEED).train.sampler
    assert isinstance(balanced.base, WeightedRandomSampler) and balanced.base.num_samples == 12


def test_oom_rebatching_keeps_the_budgeted_sampler(manifest: pd.DataFrame) -> None:
    loaders = build_loaders(manifest, _cfg(), batch_size=6, seed=SEED, clips_per_epoch=15)
    halved = loaders.with_batch_size(3)
    assert halved.train.sampler is loaders.train.sampler and len(halved.train) == 5
    assert _epoch(halved.train.sampler, 2) == _epoch(loaders.train.sampler, 2)


def test_fit_trains_the_budgeted_clips(synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [
        "data.source=ffpp", f"data.root={synthetic_root}", "data.input_size=32", "data.num_workers=0",
        "data.clips_per_video_eval=2", f"train.output_dir={tmp_path / 'runs'}",
        "train.epochs=1", "train.batch_size=4", "train.clips_per_epoch=10",
    ]
    cfg = load_config([ROOT / "baseline.yaml"], overrides)
    seen: list[list[int]] = []
    real_train_one_epoch = trainer.train_one_epoch

    def counting(s, *args, **kwargs):  # records the batch sizes the epoch is made of
        sizes: list[int] = []
        loaders = s.loaders
        loader = loaders.train

        class Counted:
            def __len__(self) -> int:
                return len(loader)

            def __iter__(self):
                for batch in loader:
                    sizes.append(len(batch["label"]))
                    yield batch

        seen.append(sizes)
        s.loaders = SimpleNamespace(train=Counted())
        try:
            return real_train_one_epoch(s, *args, **kwargs)
        finally:
            s.loaders = loaders


    monkeypatch.setattr(trainer, "train_one_epoch", counting)
    result = fit(cfg, run_dir=tmp_path / "run", progress=False, force_precision="fp32")
    assert result.epochs_run == 1
    assert seen == [[4, 4, 2]]
    metrics = result.train_history[0]
    assert metrics["clips_per_s"] * metrics["epoch_seconds"] == pytest.approx(10)
