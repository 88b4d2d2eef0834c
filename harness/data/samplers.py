"""Train samplers that draw a fixed number of clips per epoch (`train.clips_per_epoch`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from harness.errors import ConfigError

__all__ = ["StratifiedEpochSampler", "class_quotas"]


def class_quotas(labels: np.ndarray, num_samples: int) -> dict[int, int]:
    """Items to draw per label: `num_samples` split by the labels' shares, each within one of its exact share.

    Largest remainders: every class gets the floor of its share, and the items left over go to the
    classes with the largest fractional parts (the lower label first on ties), so the quotas sum to
    `num_samples` and round each share up or down.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = num_samples * counts / counts.sum()
    quotas = np.floor(exact).astype(int)
    left = num_samples - int(quotas.sum())
    # Stable sort on the negated remainder: ties keep label order, so the split is deterministic.
    for i in np.argsort(-(exact - quotas), kind="stable")[:left]:
        quotas[i] += 1
    return {int(c): int(q) for c, q in zip(classes, quotas)}


class StratifiedEpochSampler(Sampler[int]):
    """`num_samples` item indices an epoch, each label drawn in proportion to its share of `labels`.

    Within a label, items come from seeded permutations of that label's items, one after another, so
    an item repeats only after every item of its label was drawn once, and repeats are spread evenly.
    The labels are then interleaved in a seeded random order. Everything draws from `generator`, which
    the trainer reseeds from (seed, epoch): epochs differ, and a run repeats exactly.
    """

    def __init__(self, labels: np.ndarray, num_samples: int, generator: torch.Generator) -> None:
        if num_samples < 1:
            raise ConfigError(f"train.clips_per_epoch must be at least 1, but got {num_samples}; set a positive number or null")
        if len(labels) == 0:
            raise ConfigError("train.clips_per_epoch needs train items to draw from, but the train split has none")
        self.num_samples = num_samples
        self.generator = generator
        labels = np.asarray(labels)
        self._quotas = class_quotas(labels, num_samples)
        self._members = {c: torch.as_tensor(np.flatnonzero(labels == c)) for c in self._quotas}

    def _class_stream(self, label: int) -> torch.Tensor:
        """The label's quota of items: as many fresh permutations of its items as needed, cut to length."""
        members, quota = self._members[label], self._quotas[label]
        n_perms = -(-quota // len(members))  # ceil
        perms = [members[torch.randperm(len(members), generator=self.generator)] for _ in range(n_perms)]
        return torch.cat(perms)[:quota] if perms else members[:0]

    def __iter__(self) -> Iterator[int]:
        streams = {c: iter(self._class_stream(c).tolist()) for c in sorted(self._quotas)}
        # A label per position, shuffled: each label keeps its permutation order, the labels mix.
        slots = torch.cat([torch.full((q,), c, dtype=torch.int64) for c, q in sorted(self._quotas.items())])
        for label in slots[torch.randperm(len(slots), generator=self.generator)].tolist():
            yield next(streams[label])

    def __len__(self) -> int:
        return self.num_samples
