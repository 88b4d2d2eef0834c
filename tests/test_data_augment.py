from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.config import load_config
from harness.config.schema import FFPP_METHODS, AugmentConfig, DataConfig
from harness.data.augment import PARAM_NAMES, ClipAugment, apply_clip_params, augment_on_device, draw_clip_params
from harness.data.dataset import ClipDataset
from harness.data.index import index_ffpp
from harness.train.trainer import fit
from helpers import ROOT, tiny_overrides


def _clip(t: int = 6) -> torch.Tensor:
    """A uint8 clip (T, 3, H, W) whose frames differ: a ramp image shifted by frame."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(30, 200, (3, 16, 20), generator=g, dtype=torch.uint8)
    return torch.stack([base.roll(k, dims=2) for k in range(t)])


def test_off_is_identity() -> None:
    clip = _clip()
    assert torch.equal(ClipAugment(AugmentConfig())(clip), clip)


def test_flip_is_one_draw_for_the_whole_clip() -> None:
    clip = _clip()
    augment = ClipAugment(AugmentConfig(hflip=True))
    flipped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = augment(clip)
        assert out.dtype == torch.uint8 and out.shape == clip.shape and type(out) is torch.Tensor
        per_frame = [torch.equal(out[t], clip[t].flip(-1)) for t in range(len(clip))]
        assert all(per_frame) or torch.equal(out, clip)  # every frame flipped, or none
        flipped += all(per_frame)
    assert 3 < flipped < 17


def test_jitter_applies_the_same_transform_to_every_frame() -> None:
    # Frames are shifted copies of one image, so the same colour transform keeps them shifted copies.
    clip = _clip()
    augment = ClipAugment(AugmentConfig(color_jitter=[0.4, 0.4, 0.4, 0.1]))
    torch.manual_seed(3)
    out = augment(clip)
    assert not torch.equal(out, clip)
    for t in range(1, len(clip)):
        assert torch.equal(out[t], out[0].roll(t, dims=2))


def test_same_torch_seed_same_result() -> None:
    clip = _clip()
    augment = ClipAugment(AugmentConfig(hflip=True, color_jitter=[0.2, 0.2, 0.2, 0.1]))
    torch.manual_seed(7)
    first = augment(clip)
    torch.manual_seed(7)
    assert torch.equal(augment(clip), first)


# Batched augmentation on the device: the parameters the loader draws, applied to a whole batch.

SETTINGS = {
    "flip only": AugmentConfig(hflip=True),
    "jitter only": AugmentConfig(color_jitter=[0.2, 0.2, 0.2, 0.1]),
    "both, advised": AugmentConfig(hflip=True, color_jitter=[0.2, 0.2, 0.2, 0.1]),
    "both, strong": AugmentConfig(hflip=True, color_jitter=[0.8, 0.8, 0.8, 0.4]),
    "some ops off": AugmentConfig(color_jitter=[0.5, 0.0, 0.6, 0.0]),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_batched_params_give_clip_augments_output_under_the_same_seed(name: str) -> None:
    cfg, n = SETTINGS[name], 48
    clips = torch.randint(0, 256, (n, 4, 3, 20, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = []
    for b in range(n):
        torch.manual_seed(100 + b)
        expected.append(ClipAugment(cfg)(clips[b]))
    params = torch.stack([draw_clip_params(cfg, torch.Generator().manual_seed(100 + b)) for b in range(n)])
    assert params.shape == (n, len(PARAM_NAMES))
    out = apply_clip_params(clips, params)
    assert out.dtype == torch.uint8 and out.shape == clips.shape
    diff = (out.int() - torch.stack(expected).int()).abs()
    # Measured: exactly equal on the CPU. The bound leaves room for a rounding moved by one elsewhere.
    assert diff.max() <= 1 and (diff == 0).float().mean() >= 0.999
    assert not torch.equal(out, clips)


def test_drawn_params_follow_torch_seed_and_config() -> None:
    cfg = SETTINGS["both, strong"]
    torch.manual_seed(5)
    from_default = draw_clip_params(cfg)
    assert torch.equal(draw_clip_params(cfg, torch.Generator().manual_seed(5)), from_default)
    assert sorted(from_default[5:].tolist()) == [0, 1, 2, 3]
    assert 0.2 <= from_default[1] <= 1.8 and -0.4 <= from_default[4] <= 0.4
    some_off = draw_clip_params(SETTINGS["some ops off"], torch.Generator().manual_seed(5))
    assert some_off[0] == 0 and some_off[2].isnan() and some_off[4].isnan() and not some_off[1].isnan()


def test_batched_flip_flips_every_frame_of_a_clip_alike() -> None:
    clip = _clip()  # frames differ
    params = torch.stack([draw_clip_params(AugmentConfig(hflip=True), torch.Generator().manual_seed(s)) for s in range(20)])
    out = apply_clip_params(clip.expand(20, *clip.shape).contiguous(), params)
    for b in range(20):
        expected = clip.flip(-1) if params[b, 0] == 1 else clip
        assert torch.equal(out[b], expected)
    assert 3 < int(params[:, 0].sum()) < 17


def test_placement_follows_run_on_and_the_training_device() -> None:
    assert augment_on_device("device", "cpu") and augment_on_device("auto", "cuda")
    assert not augment_on_device("auto", "cpu") and not augment_on_device("loader", "cuda")


@pytest.fixture(scope="module")
def train_rows(synthetic_root: Path) -> pd.DataFrame:
    manifest = index_ffpp(synthetic_root, FFPP_METHODS, progress=False).manifest
    return manifest[manifest.split == "train"]


def _data_cfg(run_on: str) -> DataConfig:
    augment = AugmentConfig(hflip=True, color_jitter=[0.8, 0.8, 0.8, 0.4], run_on=run_on)
    return DataConfig(source="synthetic", input_size=32, n_segment=4, clip_seconds=1.0, min_frames=8, augment=augment)


def test_device_placed_items_augment_like_loader_placed_ones(train_rows: pd.DataFrame) -> None:
    on_loader = ClipDataset(train_rows, _data_cfg("loader"), train=True, seed=3)
    on_device = ClipDataset(train_rows, _data_cfg("device"), train=True, seed=3)
    auto_cuda = ClipDataset(train_rows, _data_cfg("auto"), train=True, seed=3, device_type="cuda")
    assert "augment" not in on_loader[0] and "augment" in auto_cuda[0]
    for epoch in (0, 1):
        on_loader.set_epoch(epoch)
        on_device.set_epoch(epoch)
        for key in (0, 5, (5, 1)):
            item = on_device[key]
            augmented = apply_clip_params(item["clip"][None], item["augment"][None])[0]  # (1, T, 3, H, W) -> (T, 3, H, W)
            assert torch.equal(augmented, on_loader[key]["clip"])
            assert not torch.equal(item["clip"], augmented)  # the item itself is left un-augmented


def test_fit_augments_on_the_device_when_asked(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    batches = []

    def spy(clips: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        batches.append(len(params))
        return apply_clip_params(clips, params)

    import harness.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "apply_clip_params", spy)
    overrides = ["train.epochs=1", "optim.scheduler.warmup_epochs=0", "data.augment.run_on=device", "train.max_train_batches=2"]
    cfg = load_config([ROOT / "recommended.yaml"], tiny_overrides(synthetic_root, tmp_path) + overrides)
    assert cfg.data.augment.hflip and cfg.data.augment.color_jitter is not None
    result = fit(cfg, run_dir=tmp_path / "run", progress=False, score_test=False, force_precision="fp32")
    assert result.status == "completed" and result.epochs_run == 1
    assert len(batches) == 2 and batches[0] == 8  # every training batch went through it, on the device
