"""Deliberate faults for the fault-injection tests, switched on by the `HARNESS_FAULTS` environment variable.

A real CUDA out-of-memory error, a diverging loss or a worker stuck mid-trial cannot be summoned
on demand on a CPU machine, so the tests ask for them by name and the real code paths handle the
result. Unset (the normal case) every method is a no-op.

`HARNESS_FAULTS` holds comma-separated `name=value` items:

- `oom_above=N`: a training or evaluation micro-batch of more than N clips raises
  `torch.OutOfMemoryError`, as CUDA does when a batch does not fit.
- `oom_at_batch=K`: the K-th training micro-batch of the process raises it once (an out-of-memory
  error in the middle of an epoch, after some optimizer steps).
- `nan_at_epoch=E`: the loss of the first training batch of epoch E becomes NaN.
- `pause_after_epoch=E`: after epoch E's checkpoint is written, the process sleeps for 120 s, so a
  test can kill or interrupt it at a known point mid-trial.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from harness.errors import ConfigError

__all__ = ["Faults", "ENV_VAR"]

ENV_VAR = "HARNESS_FAULTS"
_PAUSE_SECONDS = 120.0


@dataclass
class Faults:
    oom_above: int | None = None
    oom_at_batch: int | None = None
    nan_at_epoch: int | None = None
    pause_after_epoch: int | None = None
    _train_batches: int = field(default=0, repr=False)  # counted for oom_at_batch

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Faults:
        spec = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, value = item.partition("=")
            names = [n for n in cls.__dataclass_fields__ if not n.startswith("_")]
            if name not in names or not value.strip().isdigit():
                raise ConfigError(f"{ENV_VAR} item {item!r} must be one of {', '.join(f'{n}=N' for n in names)}")
            values[name] = int(value)
        return cls(**values)

    def check_batch(self, batch_size: int, training: bool = False) -> None:
        if self.oom_above is not None and batch_size > self.oom_above:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected by {ENV_VAR}: micro-batch {batch_size} > {self.oom_above})"
            )
        if training:
            self._train_batches += 1
            if self._train_batches == self.oom_at_batch:
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {ENV_VAR} at training micro-batch {self._train_batches})")

    def poison_loss(self, loss: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        if self.nan_at_epoch == epoch and batch == 0:
            return loss * float("nan")
        return loss

    def after_epoch(self, epoch: int) -> None:
        if self.pause_after_epoch == epoch:
            time.sleep(_PAUSE_SECONDS)
