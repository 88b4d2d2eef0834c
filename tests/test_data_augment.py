from __future__ import annotations

import torch

from harness.config.schema import AugmentConfig
from harness.data.augment import ClipAugment


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
