"""Temporal Shift Module (TSM): move a fold of channels one step along time, for free.

Follows the original TSM code (ops/temporal_shift.py, `shift` with inplace=False): of C
channels, fold = C // fold_div take the next time step's values, the next fold takes the
previous step's, the rest stay; the clip ends are zero-filled. So fold_div 8 moves 1/4 of
the channels in all and fold_div 4 moves 1/2. The shift has no FLOPs or parameters; its
cost is one copy of the activation.
"""

from __future__ import annotations

import torch
from timm.models._efficientnet_blocks import (
    ConvBnAct,
    DepthwiseSeparableConv,
    EdgeResidual,
    InvertedResidual,
    MobileAttention,
    UniversalInvertedResidual,
)
from torch import Tensor, nn

__all__ = ["temporal_shift", "TemporalShift", "insert_residual_shift"]


def temporal_shift(x: Tensor, n_segment: int, fold_div: int) -> Tensor:
    """Shift channel folds of time-contiguous frames (N*T, C, H, W) by one step each way.

    Frames must be ordered clip-major (all T frames of clip 0, then clip 1, ...). The
    result keeps x's dtype and memory format (channels_last stays channels_last).
    """
    nt, c, h, w = x.shape
    if nt % n_segment != 0:
        raise ValueError(f"x.shape[0] must be a multiple of n_segment={n_segment}, but got {nt}")
    fold = c // fold_div
    # view (not reshape) so a channels_last input keeps its strides; splitting the
    # leading dim is a valid view for any memory format.
    x5 = x.view(nt // n_segment, n_segment, c, h, w)  # (N, T, C, H, W)
    # zeros_like keeps x's strides (preserve_format), so the output stays channels_last.
    out = torch.zeros_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]  # this fold sees the next frame
    out[:, 1:, fold : 2 * fold] = x5[:, :-1, fold : 2 * fold]  # this fold sees the previous frame
    out[:, :, 2 * fold :] = x5[:, :, 2 * fold :]
    return out.view(nt, c, h, w)  # (N*T, C, H, W)


class TemporalShift(nn.Module):
    """net(temporal_shift(x)): the TSM wrapper, for building new networks.

    It holds no parameters or buffers of its own, but a wrapped `net` is registered as
    `.net`, so its keys gain a `net.` prefix. That is why `insert_residual_shift` does not
    wrap pretrained modules with it and shifts in a forward pre-hook instead.
    """

    def __init__(self, net: nn.Module, n_segment: int, fold_div: int) -> None:
        super().__init__()  # argument order as in the original TSM code
        self.net = net
        self.n_segment = n_segment
        self.fold_div = fold_div

    def forward(self, x: Tensor) -> Tensor:
        return self.net(temporal_shift(x, self.n_segment, self.fold_div))

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, fold_div={self.fold_div}"


class _ShiftInput:
    """Forward pre-hook that shifts the first positional input of a module.

    A module-level class (not a closure) so a shifted model still pickles and deep-copies.
    """

    def __init__(self, n_segment: int, fold_div: int) -> None:
        self.n_segment = n_segment
        self.fold_div = fold_div

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (temporal_shift(args[0], self.n_segment, self.fold_div), *args[1:])


# The submodule each timm efficientnet-family block calls first after taking its
# shortcut: shifting its input shifts the residual branch and never the identity path.
# Subclasses (e.g. CondConvResidual < InvertedResidual) match through isinstance.
_BRANCH_START: tuple[tuple[type[nn.Module], str], ...] = (
    (UniversalInvertedResidual, "dw_start"),  # may be nn.Identity; the hook still fires
    (InvertedResidual, "conv_pw"),
    (DepthwiseSeparableConv, "conv_dw"),
    (EdgeResidual, "conv_exp"),
    (ConvBnAct, "conv"),
    (MobileAttention, "norm"),  # its shortcut is taken after the positional conv
)


def _branch_start(block: nn.Module) -> nn.Module | None:
    for block_type, attr in _BRANCH_START:
        if isinstance(block, block_type):
            # Space-to-depth stems run before the named conv, still after the shortcut.
            s2d = getattr(block, "conv_s2d", None)
            return s2d if s2d is not None else getattr(block, attr)
    return None


def insert_residual_shift(model: nn.Module, n_segment: int, fold_div: int) -> list[str]:
    """Add TSM's residual shift ("blockres") to every timm block that has a skip connection.

    The shift is a forward pre-hook on the first module of each residual branch rather
    than a wrapper module: the module tree, parameter names and state-dict keys stay
    exactly those of the plain backbone, so pretrained weights and checkpoints load by
    name both before and after the shift is inserted. Returns the shifted blocks' names.
    """
    shifted: list[str] = []
    for name, block in model.named_modules():
        if not getattr(block, "has_skip", False):
            continue
        start = _branch_start(block)
        if start is None:
            continue
        if any(isinstance(h, _ShiftInput) for h in start._forward_pre_hooks.values()):
            raise ValueError(f"block {name!r} must not be shifted twice, but it already has a temporal shift")
        start.register_forward_pre_hook(_ShiftInput(n_segment, fold_div))
        shifted.append(name)
    return shifted
