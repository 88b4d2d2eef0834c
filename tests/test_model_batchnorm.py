"""Freezing the first fraction of a backbone's BatchNorms: no grads, no stat updates, eval even after train()."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from harness.config.schema import ModelConfig
from harness.errors import ConfigError
from harness.model.batchnorm import batchnorm_names, freeze_batchnorm, keep_frozen_bn_eval
from harness.model.detector import build_detector

BACKBONE = "mobilenetv4_conv_small"


def test_batchnorm_registration_order_is_forward_order() -> None:
    model = timm.create_model(BACKBONE, num_classes=0).eval()
    called: list[str] = []
    for name in batchnorm_names(model):
        model.get_submodule(name).register_forward_pre_hook(lambda m, a, name=name: called.append(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert called == batchnorm_names(model)
    assert called[0] == "bn1"  # the stem


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (1 / 3, 15), (1.0, 46)])
def test_freeze_batchnorm_takes_the_leading_fraction(fraction: float, expected: int) -> None:
    model = timm.create_model(BACKBONE, num_classes=0)
    all_bn = batchnorm_names(model)
    assert len(all_bn) == 46
    frozen = freeze_batchnorm(model, fraction)
    assert frozen == all_bn[:expected]


def test_frozen_batchnorm_stays_put_in_training() -> None:
    torch.manual_seed(0)
    detector = build_detector(ModelConfig(freeze_bn_fraction=1 / 3), n_segment=2)
    backbone = detector.backbone
    frozen = set(detector.frozen_bn)
    unfrozen = [n for n in batchnorm_names(backbone) if n not in frozen]
    assert "bn1" in frozen and len(unfrozen) > 0

    detector.train()
    bns = {n: backbone.get_submodule(n) for n in batchnorm_names(backbone)}
    assert all(not bns[n].training for n in frozen)
    assert all(bns[n].training for n in unfrozen)
    assert all(not p.requires_grad for n in frozen for p in bns[n].parameters())
    assert all(p.requires_grad for n in unfrozen for p in bns[n].parameters())

    before = {n: bn.running_mean.clone() for n, bn in bns.items()}
    logits, _ = detector(torch.rand(2, 2, 3, 32, 32))
    logits.sum().backward()
    for n in frozen:
        assert torch.equal(bns[n].running_mean, before[n]), n
        assert bns[n].weight.grad is None
    assert all(not torch.equal(bns[n].running_mean, before[n]) for n in unfrozen)


def test_keep_frozen_bn_eval_undoes_train_on_a_plain_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    frozen = freeze_batchnorm(model, 0.5)
    assert frozen == ["1"]
    model.train()
    keep_frozen_bn_eval(model, frozen)
    assert not model[1].training and model[3].training


def test_freeze_batchnorm_refuses_a_fraction_outside_0_1() -> None:
    with pytest.raises(ConfigError, match=r"freeze_bn_fraction must be in \[0, 1\], but got 1.5"):
        freeze_batchnorm(nn.BatchNorm2d(2), 1.5)
