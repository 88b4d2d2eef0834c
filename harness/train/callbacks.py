"""How the trainer reports: a Callback with do-nothing hooks, so the loop never asks "is tracking on?".

Tracking (MLflow) and pruning (Optuna) plug in here; the trainer itself imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.config.schema import Config
    from harness.train.trainer import TrainResult

__all__ = ["Callback", "CallbackList", "RunInfo"]


@dataclass
class RunInfo:
    """What a callback may want to log once, when the run starts."""

    config: Config
    run_dir: Path
    device: str
    n_params: int
    class_counts: tuple[int, int]
    pos_weight: float | None
    start_epoch: int
    n_videos: dict[str, int] = field(default_factory=dict)
    shifted_blocks: int = 0
    frozen_bn: int = 0
    # What autocast computes in, with the reason where train.amp asked otherwise ("fp32 (fallback: ...)").
    precision: str = "fp32"


class Callback:
    """Every hook does nothing; subclasses override what they need."""

    def on_run_start(self, info: RunInfo) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Training metrics of one epoch (loss, lr, clips/s, peak memory)."""

    def on_validation(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Validation metrics; return False to stop the run (a pruner saying no)."""
        return True

    def on_checkpoint(self, kind: str, path: Path, epoch: int) -> None:
        """`kind` is "last" or "best"."""

    def on_event(self, epoch: int, kind: str, message: str, values: dict[str, float]) -> None:
        """Something the run adjusted or skipped to keep going: "oom_backoff", "bad_video"."""

    def on_run_end(self, result: TrainResult) -> None:
        pass


class CallbackList(Callback):
    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_run_start(self, info: RunInfo) -> None:
        for cb in self.callbacks:
            cb.on_run_start(info)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, metrics)

    def on_validation(self, epoch: int, metrics: dict[str, float]) -> bool:
        # Every callback sees the metrics even when an earlier one already asked to stop.
        answers: list[Any] = [cb.on_validation(epoch, metrics) for cb in self.callbacks]
        return all(a is not False for a in answers)

    def on_checkpoint(self, kind: str, path: Path, epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(kind, path, epoch)

    def on_event(self, epoch: int, kind: str, message: str, values: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_event(epoch, kind, message, values)

    def on_run_end(self, result: TrainResult) -> None:
        for cb in self.callbacks:
            cb.on_run_end(result)
