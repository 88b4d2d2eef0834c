"""temporal_shift against a slow loop reference; residual shift inserted without touching shortcuts or keys."""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
from torch import nn

from harness.model.temporal_shift import TemporalShift, insert_residual_shift, temporal_shift

BACKBONE = "mobilenetv4_conv_small"


def reference_shift(x: torch.Tensor, n_segment: int, fold_div: int) -> torch.Tensor:
    """Element by element, straight from the TSM definition."""
    nt, c, _, _ = x.shape
    fold = c // fold_div
    out = torch.zeros_like(x)
    for i in range(nt):
        t = i % n_segment
        for ch in range(c):
            if ch < fold:
                if t < n_segment - 1:
                    out[i, ch] = x[i + 1, ch]  # next time step
            elif ch < 2 * fold:
                if t > 0:
                    out[i, ch] = x[i - 1, ch]  # previous time step
            else:
                out[i, ch] = x[i, ch]
    return out


@pytest.mark.parametrize("fold_div", [4, 8])
@pytest.mark.parametrize("channels", [16, 10])
def test_temporal_shift_matches_loop_reference(fold_div: int, channels: int) -> None:
    x = torch.randn(2 * 4, channels, 3, 2)
    out = temporal_shift(x, n_segment=4, fold_div=fold_div)
    torch.testing.assert_close(out, reference_shift(x, 4, fold_div), rtol=0, atol=0)
    assert not torch.equal(out, x)


def test_temporal_shift_moves_the_stated_fold_fractions() -> None:
    # C=16, fold_div=4: channels 0-3 look ahead, 4-7 look back, 8-15 stay.
    x = torch.arange(3, dtype=torch.float32).repeat_interleave(16).view(3, 16, 1, 1)  # value = time index
    out = temporal_shift(x, n_segment=3, fold_div=4).view(3, 16)
    assert out[0, :4].tolist() == [1.0] * 4 and out[2, :4].tolist() == [0.0] * 4  # next; zero at the end
    assert out[1, 4:8].tolist() == [0.0] * 4 and out[0, 4:8].tolist() == [0.0] * 4  # previous; zero at the start
    assert out[2, 4:8].tolist() == [1.0] * 4
    assert out[:, 8:].equal(x.view(3, 16)[:, 8:])


@pytest.mark.parametrize("fold_div", [4, 8])
def test_temporal_shift_keeps_channels_last(fold_div: int) -> None:
    x = torch.randn(2 * 3, 16, 4, 5).contiguous(memory_format=torch.channels_last)
    out = temporal_shift(x, n_segment=3, fold_div=fold_div)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference_shift(x.contiguous(), 3, fold_div), rtol=0, atol=0)


def test_temporal_shift_under_bf16_autocast() -> None:
    conv = nn.Conv2d(3, 16, 3, padding=1)
    x = torch.randn(2 * 4, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        out = temporal_shift(y, n_segment=4, fold_div=8)
    assert y.dtype == out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference_shift(y, 4, 8), rtol=0, atol=0)


def test_temporal_shift_gradient() -> None:
    x = torch.randn(2 * 3, 8, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: temporal_shift(t, 3, 4), (x,))


def test_temporal_shift_refuses_a_batch_that_is_not_whole_clips() -> None:
    with pytest.raises(ValueError, match="multiple of n_segment=4, but got 6"):
        temporal_shift(torch.zeros(6, 8, 2, 2), n_segment=4, fold_div=8)


def test_temporal_shift_module_adds_no_state() -> None:
    module = TemporalShift(nn.Identity(), n_segment=4, fold_div=8)
    assert module.state_dict() == {} and list(module.parameters()) == []
    x = torch.randn(8, 16, 2, 2)
    torch.testing.assert_close(module(x), reference_shift(x, 4, 8))


# --- residual shift in a real timm MobileNetV4 -------------------------------------------


def _plain_and_shifted(n_segment: int = 4, fold_div: int = 8) -> tuple[nn.Module, nn.Module, list[str]]:
    torch.manual_seed(0)
    plain = timm.create_model(BACKBONE, num_classes=0).eval()
    shifted = copy.deepcopy(plain)
    names = insert_residual_shift(shifted, n_segment, fold_div)
    return plain, shifted, names


def test_residual_shift_covers_every_skip_block_and_only_those() -> None:
    plain, _, names = _plain_and_shifted()
    with_skip = [n for n, m in plain.named_modules() if getattr(m, "has_skip", False)]
    assert len(names) > 0
    assert names == with_skip
    assert all(type(plain.get_submodule(n)).__name__ == "UniversalInvertedResidual" for n in names)


def test_residual_shift_keeps_parameters_and_state_dict_keys() -> None:
    plain, shifted, _ = _plain_and_shifted()
    assert sum(p.numel() for p in shifted.parameters()) == sum(p.numel() for p in plain.parameters())
    assert list(shifted.state_dict().keys()) == list(plain.state_dict().keys())
    # A plain (e.g. pretrained) state dict loads strictly, by name.
    shifted.load_state_dict(plain.state_dict(), strict=True)


def test_residual_shift_block_is_shortcut_plus_branch_of_shifted_input() -> None:
    plain, shifted, names = _plain_and_shifted(n_segment=4, fold_div=8)
    name = names[0]
    block_plain, block_shifted = plain.get_submodule(name), shifted.get_submodule(name)
    in_chs = block_plain.pw_exp.conv.in_channels
    x = torch.randn(2 * 4, in_chs, 4, 4)
    s = temporal_shift(x, 4, 8)
    branch_of_shifted = block_plain(s) - s  # the plain block is s + branch(s)
    with torch.no_grad():
        torch.testing.assert_close(block_shifted(x), x + branch_of_shifted, rtol=1e-5, atol=1e-5)


def test_residual_shift_with_branch_zeroed_returns_input_exactly() -> None:
    _, shifted, names = _plain_and_shifted()
    block = shifted.get_submodule(names[0])
    block.layer_scale.register_forward_hook(lambda m, args, out: torch.zeros_like(out))
    x = torch.randn(2 * 4, block.pw_exp.conv.in_channels, 3, 3)
    with torch.no_grad():
        assert torch.equal(block(x), x)  # the shortcut carries x unshifted


def test_residual_shift_mixes_frames_within_a_clip_only() -> None:
    plain, shifted, _ = _plain_and_shifted(n_segment=4)
    x = torch.randn(2 * 4, 3, 32, 32)
    x2 = x.clone()
    x2[1] += 1.0  # perturb frame 1 of clip 0
    with torch.no_grad():
        d_shifted = (shifted(x2) - shifted(x)).abs().amax(dim=1)  # (N*T,)
        d_plain = (plain(x2) - plain(x)).abs().amax(dim=1)
    assert d_plain[0] == 0 and d_plain[2] == 0  # a plain 2D CNN sees one frame at a time
    assert d_shifted[0] > 0 and d_shifted[2] > 0  # neighbours see frame 1 through the shift
    assert torch.all(d_shifted[4:] == 0)  # clip 1 is untouched


def test_residual_shift_refuses_to_shift_twice() -> None:
    _, shifted, _ = _plain_and_shifted()
    with pytest.raises(ValueError, match="must not be shifted twice"):
        insert_residual_shift(shifted, 4, 8)


def test_shifted_model_survives_deepcopy_and_pickle() -> None:
    _, shifted, _ = _plain_and_shifted()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = shifted(x)
        torch.testing.assert_close(copy.deepcopy(shifted)(x), expected)
        torch.testing.assert_close(pickle.loads(pickle.dumps(shifted))(x), expected)
