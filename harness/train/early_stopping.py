"""Early stopping on one metric, with patience counted in validations and a minimum improvement."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    mode: str = "max"
    patience: int = 8
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    bad_validations: int = field(default=0)

    def improved(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record one validation; True when it is a new best."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_validations = float(value), epoch, 0
            return True
        self.bad_validations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_validations >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
