"""Loss factory: pos_weight direction and value, fixed pos_weight, focal loss versus BCE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from harness.config.schema import LossConfig
from harness.errors import ConfigError, DataError
from harness.train.losses import FocalBCELoss, WeightedBCELoss, build_loss


def _bce_by_hand(logit: float, target: float, pos_weight: float = 1.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(pos_weight * target * math.log(p) + (1 - target) * math.log(1 - p))


def test_auto_pos_weight_is_real_over_fake() -> None:
    loss = build_loss(LossConfig(type="bce", auto_pos_weight=True), class_counts=(10, 50))
    assert isinstance(loss, WeightedBCELoss)
    assert loss.pos_weight == pytest.approx(0.2)  # fakes (label 1) are the majority: weighted down
    logits, targets = torch.tensor([0.5, -1.0]), torch.tensor([1.0, 0.0])
    expected = (_bce_by_hand(0.5, 1.0, 0.2) + _bce_by_hand(-1.0, 0.0)) / 2
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_fixed_pos_weight_wins_over_counts() -> None:
    loss = build_loss(LossConfig(type="bce", auto_pos_weight=False, pos_weight=3.0), class_counts=(10, 50))
    assert loss.pos_weight == 3.0
    assert loss(torch.tensor([0.5]), torch.tensor([1.0])).item() == pytest.approx(_bce_by_hand(0.5, 1.0, 3.0), rel=1e-6)


def test_plain_bce_without_pos_weight() -> None:
    loss = build_loss(LossConfig(type="bce", auto_pos_weight=False), class_counts=(10, 50))
    assert loss.pos_weight is None
    logits, targets = torch.randn(8), torch.randint(0, 2, (8,)).float()
    torch.testing.assert_close(loss(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


def test_auto_pos_weight_needs_both_classes() -> None:
    with pytest.raises(DataError, match=r"both classes .* but got \(n_real, n_fake\)=\(0, 50\)"):
        build_loss(LossConfig(type="bce"), class_counts=(0, 50))


def test_focal_loss_matches_hand_value_and_torchvision() -> None:
    loss = build_loss(LossConfig(type="focal_bce", auto_pos_weight=False, gamma=2.0), class_counts=(10, 50))
    assert isinstance(loss, FocalBCELoss) and loss.pos_weight is None
    # logit 0, target 1: p_t = 0.5, so focal = (1 - 0.5)^2 * log 2 with no alpha weighting.
    value = loss(torch.tensor([0.0]), torch.tensor([1.0])).item()
    assert value == pytest.approx(0.25 * math.log(2), rel=1e-6)
    assert value != pytest.approx(math.log(2))  # not BCE
    logits, targets = torch.randn(16), torch.randint(0, 2, (16,)).float()
    torch.testing.assert_close(loss(logits, targets), sigmoid_focal_loss(logits, targets, alpha=-1, gamma=2.0, reduction="mean"))


def test_focal_alpha_weights_the_fake_class() -> None:
    loss = build_loss(LossConfig(type="focal_bce", auto_pos_weight=False, gamma=2.0, alpha=0.25), (10, 50))
    assert loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    assert loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)


def test_focal_down_weights_easy_examples_more_than_hard_ones() -> None:
    focal = build_loss(LossConfig(type="focal_bce", auto_pos_weight=False, gamma=2.0), (10, 50))
    bce = build_loss(LossConfig(type="bce", auto_pos_weight=False), (10, 50))
    target = torch.tensor([1.0])
    easy, hard = torch.tensor([4.0]), torch.tensor([-2.0])
    easy_ratio = (focal(easy, target) / bce(easy, target)).item()
    hard_ratio = (focal(hard, target) / bce(hard, target)).item()
    assert easy_ratio == pytest.approx((1 - torch.sigmoid(easy)).item() ** 2, rel=1e-5)  # about 3e-4
    assert easy_ratio < 0.001 < 0.5 < hard_ratio


def test_losses_return_fp32_for_half_logits() -> None:
    loss = build_loss(LossConfig(type="bce"), (10, 50))
    assert loss(torch.zeros(4, dtype=torch.float16), torch.ones(4)).dtype == torch.float32


def test_unknown_loss_lists_choices() -> None:
    cfg = LossConfig.model_construct(type="hinge", auto_pos_weight=False, pos_weight=None, gamma=None, alpha=None)
    with pytest.raises(ConfigError, match=r"loss.type must be one of \['bce', 'focal_bce'\], but got 'hinge'"):
        build_loss(cfg, (10, 50))
