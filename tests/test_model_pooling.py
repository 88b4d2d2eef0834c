"""Mean and attention pooling over time, and the pooling registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.model.pooling import AttentionPool, MeanPool, build_pooling


def test_mean_pool_averages_over_time_and_has_no_weights() -> None:
    feats = torch.randn(3, 5, 7)
    pooled, weights = MeanPool()(feats)
    torch.testing.assert_close(pooled, feats.mean(dim=1))
    assert weights is None


def test_attention_weights_are_a_distribution_over_time() -> None:
    pool = AttentionPool(7)
    nn.init.normal_(pool.score.weight)
    feats = torch.randn(3, 5, 7)
    pooled, weights = pool(feats)
    assert pooled.shape == (3, 7) and weights.shape == (3, 5)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert (weights > 0).all()
    torch.testing.assert_close(pooled, torch.einsum("bt,btd->bd", weights, feats))


def test_attention_starts_as_mean_pooling() -> None:
    feats = torch.randn(2, 4, 6)
    pooled, weights = AttentionPool(6)(feats)
    torch.testing.assert_close(weights, torch.full((2, 4), 0.25))
    torch.testing.assert_close(pooled, feats.mean(dim=1))


def test_attention_learns_to_weight_the_one_frame_with_the_signal() -> None:
    torch.manual_seed(0)
    b, t, d, signal_frame = 64, 6, 8, 3
    labels = torch.randint(0, 2, (b,)).float()
    feats = torch.randn(b, t, d)
    feats[:, :, 1] = 0.0
    feats[:, signal_frame, 0] = 2.0 * (2 * labels - 1)  # the class, readable in this frame only
    feats[:, signal_frame, 1] = 1.0  # what makes the frame recognisable to the attention
    pool, head = AttentionPool(d), nn.Linear(d, 1)
    opt = torch.optim.Adam([*pool.parameters(), *head.parameters()], lr=0.1)
    for _ in range(100):
        pooled, _ = pool(feats)
        loss = nn.functional.binary_cross_entropy_with_logits(head(pooled).squeeze(-1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, weights = pool(feats)
    # Uniform weights would give the frame 1/6; it should now dominate almost every clip.
    assert (weights.argmax(dim=1) == signal_frame).float().mean() >= 0.95
    assert weights[:, signal_frame].mean() > 0.5


def test_build_pooling_by_name() -> None:
    assert isinstance(build_pooling("mean", 4), MeanPool)
    attention = build_pooling("attention", 4)
    assert isinstance(attention, AttentionPool) and attention.score.in_features == 4


def test_build_pooling_unknown_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"model.aggregate must be one of \['attention', 'mean'\], but got 'max'"):
        build_pooling("max", 4)
