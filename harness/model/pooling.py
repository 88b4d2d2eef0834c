"""Temporal pooling: turn T per-frame features of a clip into one clip feature."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor, nn

from harness.errors import ConfigError

__all__ = ["MeanPool", "AttentionPool", "build_pooling", "POOLINGS"]


class MeanPool(nn.Module):
    """Average over time; returns (pooled (B, D), None) since there are no weights to show."""

    def forward(self, feats: Tensor) -> tuple[Tensor, None]:
        return feats.mean(dim=1), None


class AttentionPool(nn.Module):
    """pooled = sum_t a_t F_t with a_t = softmax_t(w^T F_t): lets the clip focus on a few frames."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        # Zero init gives uniform weights at the start, i.e. the mean-pooling baseline,
        # so switching aggregate to attention does not begin from random frame picks.
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.score(feats).squeeze(-1)  # (B, T)
        # Softmax in fp32: under fp16 autocast large scores would overflow.
        weights = torch.softmax(scores.float(), dim=1)  # (B, T)
        pooled = (weights.unsqueeze(-1) * feats).sum(dim=1)  # (B, D)
        return pooled, weights


POOLINGS: Mapping[str, Callable[[int], nn.Module]] = MappingProxyType(
    {
        "mean": lambda dim: MeanPool(),
        "attention": AttentionPool,
    }
)


def build_pooling(name: str, dim: int) -> nn.Module:
    """The pooling called `name` (model.aggregate) over features of size `dim`."""
    if name not in POOLINGS:
        raise ConfigError(f"model.aggregate must be one of {sorted(POOLINGS)}, but got {name!r}")
    return POOLINGS[name](dim)
