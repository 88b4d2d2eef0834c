"""Losses for one-logit clip classification (label 1 = fake), built from the loss config by name.

Every loss exposes `pos_weight` (a float, or None when none is applied) so the value
actually used can be logged next to the config that asked for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from harness.config.schema import LossConfig
from harness.errors import ConfigError, DataError

__all__ = ["WeightedBCELoss", "FocalBCELoss", "build_loss", "LOSSES"]


class WeightedBCELoss(nn.Module):
    """Mean BCE-with-logits, with fake examples (label 1) weighted by pos_weight if given."""

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight
        weight = None if pos_weight is None else torch.tensor(pos_weight)
        self.bce = nn.BCEWithLogitsLoss(pos_weight=weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        # fp32 so a loss under fp16 autocast neither overflows nor loses small terms.
        return self.bce(logits.float(), targets.float())

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}"


class FocalBCELoss(nn.Module):
    """Mean sigmoid focal loss (torchvision): BCE scaled by (1 - p_t)^gamma, so easy examples count less.

    alpha weights the fake class and 1 - alpha the real one; None means no class weighting
    (torchvision's alpha=-1). The imbalance is left to alpha or a sampler, so pos_weight is None.
    """

    pos_weight = None

    def __init__(self, gamma: float, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        alpha = -1.0 if self.alpha is None else self.alpha
        return sigmoid_focal_loss(logits.float(), targets.float(), alpha=alpha, gamma=self.gamma, reduction="mean")

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


def _auto_pos_weight(class_counts: tuple[int, int]) -> float:
    # pos_weight multiplies the loss of label 1 (fake). Fakes are the majority in FF++
    # (about 5:1), so n_real / n_fake < 1 shrinks their share until both classes weigh
    # the same in total; the inverse would double down on the majority.
    n_real, n_fake = class_counts
    if n_real <= 0 or n_fake <= 0:
        raise DataError(f"loss.auto_pos_weight needs both classes in the train split, but got (n_real, n_fake)={class_counts}")
    return n_real / n_fake


def _build_bce(loss_cfg: LossConfig, class_counts: tuple[int, int]) -> nn.Module:
    if loss_cfg.pos_weight is not None:
        return WeightedBCELoss(loss_cfg.pos_weight)
    if loss_cfg.auto_pos_weight:
        return WeightedBCELoss(_auto_pos_weight(class_counts))
    return WeightedBCELoss(None)


def _build_focal_bce(loss_cfg: LossConfig, class_counts: tuple[int, int]) -> nn.Module:
    if loss_cfg.gamma is None:
        raise ConfigError("loss.gamma must be set for loss.type=focal_bce (advice: 2.0), but got None")
    return FocalBCELoss(gamma=loss_cfg.gamma, alpha=loss_cfg.alpha)


LOSSES: Mapping[str, Callable[[LossConfig, tuple[int, int]], nn.Module]] = MappingProxyType(
    {"bce": _build_bce, "focal_bce": _build_focal_bce}
)


def build_loss(loss_cfg: LossConfig, class_counts: tuple[int, int]) -> nn.Module:
    """The loss named by loss.type; class_counts = (n_real, n_fake) of the train split.

    Called as loss(logits (B,), targets (B,) float) and returns the batch mean.
    """
    if loss_cfg.type not in LOSSES:
        raise ConfigError(f"loss.type must be one of {sorted(LOSSES)}, but got {loss_cfg.type!r}")
    return LOSSES[loss_cfg.type](loss_cfg, class_counts)
