"""What a sweep will cost, before it starts: a few timed steps of the first trial's config, scaled up.

`harness sweep --estimate` builds the first trial's model and loaders exactly as a trial would (the
frame cache is read if it is built), times a few training steps and validation batches after one
warm-up each, and predicts the sweep's wall time from the epochs, validations and batches every
trial runs. It asks the study nothing and writes nothing to it. A pruned sweep runs only part of
those epochs; how much depends on the data and the trials, so the prediction uses the fraction
measured on the demo sweep (README, "Measured") and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.config.schema import Config

if TYPE_CHECKING:
    from harness.sweep.space import SearchSpace
    from harness.train.session import Session

__all__ = ["StepTimes", "SweepEstimate", "optimizer_step", "measure_step_times", "estimate_sweep", "format_estimate", "DEMO_EPOCH_FRACTION"]

# Share of an unpruned sweep's epochs that the 40-trial demo sweep ran with the pruner named (2026-11-27,
# 2-core Xeon: median pruner 85 of 240 epochs). Other pruners were not measured on the current demo.
DEMO_EPOCH_FRACTION = {"median": 85 / 240, "none": 1.0}


@dataclass(frozen=True)
class StepTimes:
    """Seconds per batch of one config on this machine, and how many batches its epochs hold."""

    setup_s: float  # model, loaders and precision choice: what every trial pays once
    train_batch_s: float
    val_batch_s: float
    train_batches: int  # per epoch
    val_batches: int  # per validation
    device: str
    precision: str
    uncached_videos: int = 0  # videos the frame cache lacks: the timed batches decoded some of them

    def trial_seconds(self, epochs: int, validations: int) -> float:
        return self.setup_s + epochs * self.train_batches * self.train_batch_s + validations * self.val_batches * self.val_batch_s


@dataclass(frozen=True)
class SweepEstimate:
    steps: StepTimes
    trials: int
    epochs: int
    validations: int  # per unpruned trial
    pruner: str
    pruned_fraction: float | None  # of the unpruned epochs, from the demo; None when not measured for this pruner
    workers: int

    @property
    def unpruned_s(self) -> float:
        return self.trials * self.steps.trial_seconds(self.epochs, self.validations) / self.workers

    @property
    def pruned_s(self) -> float | None:
        if self.pruned_fraction is None:
            return None
        f = self.pruned_fraction
        # Pruning cuts epochs and their validations alike; every trial still pays its setup.
        per_trial = self.steps.setup_s + f * (self.steps.trial_seconds(self.epochs, self.validations) - self.steps.setup_s)
        return self.trials * per_trial / self.workers


def _timed_batches(batches, n: int, step) -> float:
    """Seconds per batch of `step` over `n` batches after one warm-up batch (workers start, caches open)."""
    iterator = iter(batches)
    step(next(iterator))
    start, done = time.perf_counter(), 0
    for batch in iterator:
        step(batch)
        done += 1
        if done == n:
            break
    if done == 0:
        raise ValueError("a split must hold at least two batches to time one after the warm-up")
    return (time.perf_counter() - start) / done


def optimizer_step(session: Session, clips: torch.Tensor, labels: torch.Tensor) -> None:
    """One forward, backward and optimizer step of a trial's session (`build_session`) on a batch already on
    its device: what a training step costs, without the loop's accumulation and bookkeeping."""
    with session.autocast():
        logits, _ = session.model(clips)
        loss = session.loss_fn(logits.float(), labels)
    session.scaler.scale(loss).backward()
    session.scaler.step(session.optimizer)
    session.scaler.update()
    session.optimizer.zero_grad(set_to_none=True)


def measure_step_times(cfg: Config, n_steps: int = 5) -> StepTimes:
    """Build `cfg`'s run as a trial would and time `n_steps` training and validation batches (no checkpoint, no log)."""
    from harness.data.augment import apply_clip_params
    from harness.data.device_batch import clips_to_device
    from harness.data.index import build_manifest
    from harness.train.session import build_session

    # Indexing (and generating the synthetic data) happens once per sweep, not per trial: outside the timing.
    manifest = build_manifest(cfg.data, progress=False)
    uncached = 0
    if cfg.data.cache:
        from harness.data.cache import frame_cache_for

        cache = frame_cache_for(cfg.data)
        uncached = sum(not cache.has(str(path)) for path in manifest["path"].unique())
    start = time.perf_counter()
    s, _ = build_session(cfg, manifest)
    s.precision = s.pick_precision()
    setup_s = time.perf_counter() - start
    device = s.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step(batch: dict) -> None:
        clips = clips_to_device(batch, device)  # decoding on the device is part of the step's cost too
        if "augment" in batch:  # augmentation on the device is part of a training step's cost
            clips = apply_clip_params(clips, batch["augment"])
        optimizer_step(s, clips, batch["label"].to(device, non_blocking=True).float())
        sync()

    @torch.no_grad()
    def val_step(batch: dict) -> None:
        with s.autocast():
            s.model(clips_to_device(batch, device))
        sync()

    # The timed steps change the model's weights; nothing is saved, so the study never sees them.
    s.model.train()
    train_batch_s = _timed_batches(s.loaders.train, n_steps, train_step)
    s.model.eval()
    val_batch_s = _timed_batches(s.loaders.val, n_steps, val_step)
    train_batches = len(s.loaders.train)
    if cfg.train.max_train_batches is not None:
        train_batches = min(train_batches, cfg.train.max_train_batches)
    return StepTimes(setup_s, train_batch_s, val_batch_s, train_batches, len(s.loaders.val), str(device), s.precision.label,
                     uncached)


def estimate_sweep(
    space_path: Path | SearchSpace, trials: int, workers: int = 1, n_steps: int = 5
) -> tuple[SweepEstimate, Config]:
    """Time the first trial's config (the first enqueued one, else the base) and scale it to `trials` trials.

    `space_path`: a space file, or a space already loaded (with `harness sweep --config/--set` layers).
    """
    from harness.sweep.space import SearchSpace, load_space
    from harness.train.trainer import validation_epochs

    space = space_path if isinstance(space_path, SearchSpace) else load_space(Path(space_path))
    cfg = space.first_config()
    steps = measure_step_times(cfg, n_steps)
    pruner = str(space.study.pruner.get("type", "median")) if space.study.pruner else "none"
    estimate = SweepEstimate(
        steps=steps, trials=trials, epochs=cfg.train.epochs,
        validations=len(validation_epochs(cfg.train.epochs, cfg.train.val_every)),
        pruner=pruner, pruned_fraction=DEMO_EPOCH_FRACTION.get(pruner), workers=max(1, workers),
    )
    return estimate, cfg


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.1f} min"
    hours = minutes / 60
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def format_estimate(e: SweepEstimate, cfg: Config) -> str:
    """The estimate as the lines `harness sweep --estimate` prints."""
    s = e.steps
    epoch_s = s.train_batches * s.train_batch_s
    val_s = s.val_batches * s.val_batch_s
    lines = [
        f"measured on this machine ({s.device}, {s.precision}), the first trial's config:",
        f"  setup        {s.setup_s:6.1f} s per trial (model, loaders, precision choice)",
        f"  training     {s.train_batch_s:6.3f} s per batch of {cfg.train.batch_size} x {s.train_batches} batches "
        f"= {epoch_s:.1f} s per epoch",
        f"  validation   {s.val_batch_s:6.3f} s per batch x {s.val_batches} batches = {val_s:.1f} s, "
        f"{e.validations} validations in {e.epochs} epochs",
        f"  one trial    {_duration(s.trial_seconds(e.epochs, e.validations))} unpruned",
        f"{e.trials} trials with {e.workers} worker{'s' if e.workers > 1 else ''}:",
        f"  unpruned     {_duration(e.unpruned_s)}",
    ]
    if e.pruned_s is not None:
        lines.append(f"  pruned       {_duration(e.pruned_s)} with the {e.pruner} pruner, if it runs "
                     f"{e.pruned_fraction:.0%} of the epochs as on the demo sweep")
    else:
        lines.append(f"  pruned       not estimated: the {e.pruner} pruner's share of epochs was not measured "
                     f"(the median pruner ran {DEMO_EPOCH_FRACTION['median']:.0%} on the demo)")
    if e.workers == 1:
        lines.append("  --gpus with N GPUs divides these by about N (one worker per GPU)")
    if s.uncached_videos:
        lines.append(f"note: {s.uncached_videos} videos are not in the frame cache yet, so the timed batches may include "
                     f"decoding; build it first (harness cache, which the sweep also does before its first trial)")
    return "\n".join(lines)
