"""The training loop: `train_one_epoch`, `evaluate` and `fit` over a run's `Session` (session.py),
reporting only through callbacks.

Model selection, early stopping and pruning see the val split only; the test split is scored
once, at the end, with the best checkpoint. Resumable state is one dict saved as `last.pt`.

Faults a long run meets are handled here, each reported through `Callback.on_event`: CUDA out of
memory halves the micro-batch and doubles accumulation (the epoch is redone from its start), a
non-finite loss ends the run with status "nan", and videos that stop decoding are skipped and counted.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from harness.config.loading import save_config
from harness.config.schema import Config
from harness.data.augment import apply_clip_params
from harness.data.device_batch import clips_to_device
from harness.errors import ConfigError
from harness.faults import Faults
from harness.io import write_text_atomic
from harness.train.callbacks import Callback, RunInfo
from harness.train.checkpoint import load_checkpoint, save_checkpoint
from harness.train.metrics import attention_entropy, clip_and_video_metrics, metric_mode
from harness.train.precision import Precision, autocast_for
from harness.train.session import Session, batching_of, build_session, reseed_loader

__all__ = [
    "TrainResult",
    "NonFiniteLoss",
    "fit",
    "train_one_epoch",
    "evaluate",
    "validation_epochs",
    "is_out_of_memory",
]

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; `fit` turns it into a result with status "nan"."""


class OutOfMemoryAtFloor(Exception):  # not a RuntimeError, so is_out_of_memory never retries it
    """Out of memory at the smallest micro-batch allowed; `fit` turns it into a result with status "oom"."""


def is_out_of_memory(error: BaseException) -> bool:
    # cuBLAS/cuDNN report failed allocations as plain RuntimeErrors with the words in the message.
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


@dataclass
class TrainResult:
    status: str  # completed | early_stopped | stopped | nan | oom
    reason: str
    epochs_run: int
    best_epoch: int | None
    best_value: float | None
    best_model_path: Path | None
    last_model_path: Path | None
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)  # one row per validation
    train_history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    test_metrics: dict[str, float] = field(default_factory=dict)
    test_videos: pd.DataFrame | None = None  # label, prob, method per test video
    events: list[dict[str, Any]] = field(default_factory=list)  # what the run adjusted or skipped, in order
    bad_videos: list[str] = field(default_factory=list)  # videos that failed to decode during the run


def validation_epochs(epochs: int, val_every: int) -> list[int]:
    """Epochs (1-based) that validate: every `val_every`-th and always the last."""
    return sorted({e for e in range(val_every, epochs + 1, val_every)} | {epochs})


def train_one_epoch(s: Session, epoch: int, progress: bool = True) -> dict[str, float]:
    """One pass over the session's train loader with gradient accumulation; counts its updates in `s.num_updates`."""
    cfg, device = s.cfg, s.device
    s.model.train()
    accum = cfg.train.grad_accum_steps
    loader = s.loaders.train
    n_batches = len(loader) if cfg.train.max_train_batches is None else min(len(loader), cfg.train.max_train_batches)
    loss_sum, n_clips, n_replaced, start = 0.0, 0, 0, time.perf_counter()
    s.optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, disable=not progress, unit="batch")
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        clips = clips_to_device(batch, device)  # (B, T, 3, H, W) uint8
        if "augment" in batch:  # drawn per clip in the loader, applied to the whole batch here (data.augment.run_on)
            clips = apply_clip_params(clips, batch["augment"])
        labels = batch["label"].to(device, non_blocking=True).float()
        group_start = (i // accum) * accum
        # The trailing partial group divides by its own size, so its step is a true mean too.
        group_size = min(accum, n_batches - group_start)
        s.faults.check_batch(len(labels), training=True)
        with s.autocast():
            logits, _ = s.model(clips)
            loss = s.faults.poison_loss(s.loss_fn(logits.float(), labels), epoch, i)
        if not torch.isfinite(loss):
            bar.close()
            raise NonFiniteLoss(f"loss became {loss.item()} at epoch {epoch}, batch {i + 1}")
        s.scaler.scale(loss / group_size).backward()
        if i + 1 == group_start + group_size:
            s.scaler.step(s.optimizer)
            s.scaler.update()
            s.optimizer.zero_grad(set_to_none=True)
            s.num_updates += 1
            if s.scheduler is not None:
                s.scheduler.step_update(s.num_updates)
        loss_sum += loss.item() * len(labels)
        n_clips += len(labels)
        if "replaced" in batch:  # ClipDataset items say so; hand-made batches need not
            n_replaced += int(batch["replaced"].sum())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / n_clips:.4f}", clips_s=f"{n_clips / (time.perf_counter() - start):.1f}")
    bar.close()
    seconds = time.perf_counter() - start
    metrics = {
        "train_loss": loss_sum / max(1, n_clips),
        "lr": s.optimizer.param_groups[0]["lr"],
        "clips_per_s": n_clips / max(seconds, 1e-9),
        "epoch_seconds": seconds,
    }
    if n_replaced:
        metrics["replaced_clips"] = n_replaced
    return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    cfg: Config,
    device: torch.device,
    prefix: str = "",
    faults: Faults | None = None,
    threshold: float | None = None,
    precision: Precision | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Clip and video metrics over one split; also the per-video scores for plots and tests.

    Items carry `video_idx`, a row of the loader's own dataset manifest, which names each video's method.
    Items whose video failed to decode (`valid` false) are left out and counted as `skipped_clips`.
    Video accuracy and F1 use `threshold`, reported back as `threshold`; without one (validation) they
    use the threshold chosen on this split, reported as `video_threshold`.
    """
    faults = faults or Faults()
    methods = loader.dataset.manifest["method"].tolist()
    model.eval()
    probs, labels, video_idx, attention, loss_sum, skipped = [], [], [], [], 0.0, 0
    for batch in loader:
        valid = batch.get("valid")
        if valid is not None and not valid.any():
            skipped += len(valid)
            continue
        clips, target, videos = clips_to_device(batch, device), batch["label"].to(device).float(), batch["video_idx"]
        if valid is not None and not valid.all():
            skipped += int((~valid).sum())
            clips, target, videos = clips[valid.to(device)], target[valid.to(device)], torch.as_tensor(videos)[valid]
        faults.check_batch(len(target))
        with autocast_for(precision, cfg.train.amp, device.type):
            logits, weights = model(clips)
        logits = logits.float()
        loss_sum += loss_fn(logits, target).item() * len(target)
        probs.append(torch.sigmoid(logits).cpu())
        labels.append(target.cpu())
        video_idx.append(torch.as_tensor(videos))
        if weights is not None:
            attention.append(weights.float().cpu())
    probs_np = torch.cat(probs).numpy()
    if not np.isfinite(probs_np).all():
        # Weights can turn non-finite in the last steps of an epoch without the loss showing it yet.
        raise NonFiniteLoss(f"model outputs became non-finite while scoring {prefix.rstrip('_') or 'a split'}")
    metrics, videos = clip_and_video_metrics(
        torch.cat(video_idx).numpy(), probs_np, torch.cat(labels).numpy(), methods, cfg.eval.video_aggregation, threshold
    )
    if threshold is not None:
        metrics["threshold"] = threshold
    metrics["loss"] = loss_sum / max(1, len(probs_np))
    if attention:
        metrics["attention_entropy"] = attention_entropy(torch.cat(attention).numpy())
    if skipped:
        metrics["skipped_clips"] = skipped
    return {f"{prefix}{k}": v for k, v in metrics.items()}, videos


def _direction(name: str, key: str) -> str:
    try:
        return metric_mode(name)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _metric(metrics: dict[str, float], name: str, key: str) -> float:
    if name not in metrics:
        raise ConfigError(f"{key} must be one of {', '.join(sorted(metrics))}, but got {name!r}")
    return metrics[name]


def _cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor on the CPU, so a snapshot costs no GPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _halve_batch(s: Session, epoch: int, error: str, callbacks: Callback) -> None:
    """Halve the micro-batch and double accumulation, or raise OutOfMemoryAtFloor when that is not allowed."""
    t = s.cfg.train
    smaller = t.batch_size // 2
    if not t.oom_backoff or smaller < t.min_batch_size:
        why = "train.oom_backoff is off" if not t.oom_backoff else f"train.min_batch_size is {t.min_batch_size}"
        raise OutOfMemoryAtFloor(f"out of memory at micro-batch {t.batch_size} in epoch {epoch} and {why}: {error}")
    max_batches = None if t.max_train_batches is None else t.max_train_batches * 2
    s.set_batching(smaller, t.grad_accum_steps * 2, max_batches)
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    s.report(
        epoch, "oom_backoff",
        f"out of memory at micro-batch {t.batch_size} in epoch {epoch}: now micro-batch {smaller} x "
        f"{t.grad_accum_steps * 2} accumulation steps (effective batch {smaller * t.grad_accum_steps * 2}), "
        f"redoing the epoch",
        {"micro_batch_size": smaller, "grad_accum_steps": t.grad_accum_steps * 2},
        callbacks,
    )


def _with_oom_backoff(s: Session, epoch: int, callbacks: Callback, step: Any, rollback: bool) -> Any:
    """Run `step()`; on out of memory shrink the micro-batch and run it again.

    With `rollback` the session first returns to its state before the step, so a half-trained
    epoch is redone from its start rather than counted twice.
    """
    snapshot = _cpu_copy(s.state_dict()) if rollback and s.cfg.train.oom_backoff else None
    while True:
        try:
            return step()
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            message = str(error).splitlines()[0]
        # Outside the except block, so the failed step's frames (and their GPU tensors) are freed first.
        if snapshot is not None:
            # Back to the weights and counters of before the step, keeping the smaller batches and the log.
            s.load_state_dict({**snapshot, "batching": batching_of(s.cfg), "events": list(s.events)})
        _halve_batch(s, epoch, message, callbacks)


def _report_bad_videos(s: Session, epoch: int, callbacks: Callback) -> None:
    known = {e["path"] for e in s.events if e["kind"] == "bad_video"}
    for split, dataset in (("train", s.loaders.train_dataset), ("val", s.loaders.val_dataset),
                           ("test", s.loaders.test_dataset)):
        for path in dataset.bad_videos():
            if path in known:
                continue
            fate = "its clips are replaced by other videos of the same label" if split == "train" else "it is left out of the metrics"
            s.report(epoch, "bad_video", f"{path} ({split}) failed to decode in epoch {epoch}; {fate}",
                     {"bad_videos": len(known) + 1}, callbacks, path=path)
            known.add(path)


def _run_info(s: Session, run_dir: Path, manifest: pd.DataFrame) -> RunInfo:
    return RunInfo(
        config=s.cfg,
        run_dir=run_dir,
        device=str(s.device),
        n_params=sum(p.numel() for p in s.model.parameters()),
        class_counts=s.class_counts,
        pos_weight=getattr(s.loss_fn, "pos_weight", None),
        start_epoch=s.epoch + 1,
        n_videos={split: int((manifest["split"] == split).sum()) for split in ("train", "val", "test")},
        shifted_blocks=len(getattr(s.model, "shifted_blocks", [])),
        frozen_bn=len(getattr(s.model, "frozen_bn", [])),
        precision=s.precision.label if s.precision is not None else "fp32",
    )


def _train_epoch(s: Session, epoch: int, progress: bool) -> dict[str, float]:
    """One epoch of training plus the per-epoch CUDA housekeeping the advice asks for."""
    reseed_loader(s.loaders.train, s.cfg.seed, epoch)
    cuda = s.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(s.device)
    metrics = train_one_epoch(s, epoch, progress)
    if cuda:
        metrics["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20
        if s.cfg.train.empty_cache_each_epoch:
            torch.cuda.empty_cache()
    return metrics


def _validate(s: Session, epoch: int, best_path: Path, callbacks: Callback) -> bool:
    """Validate, step early stopping, save `best` on improvement; returns the callbacks' verdict."""
    metrics, _ = _with_oom_backoff(
        s, epoch, callbacks,
        lambda: evaluate(s.model, s.loaders.val, s.loss_fn, s.cfg, s.device, prefix="val_", faults=s.faults,
                         precision=s.precision),
        rollback=False,
    )
    _report_bad_videos(s, epoch, callbacks)
    plain = {k.removeprefix("val_"): v for k, v in metrics.items()}
    improved = s.stopper.step(_metric(plain, s.cfg.early_stop.metric, "early_stop.metric"), epoch)
    metrics["best_" + s.cfg.early_stop.metric] = s.stopper.best if s.stopper.best is not None else math.nan
    secondary = s.cfg.early_stop.monitor_secondary
    if secondary:
        # Tracked beside the primary so a user can see whether the two agree on the best epoch.
        _metric(plain, secondary, "early_stop.monitor_secondary")
        past = [h[f"val_{secondary}"] for h in s.history] + [metrics[f"val_{secondary}"]]
        finite = [v for v in past if not math.isnan(v)]
        # Its own direction, not the primary's: a secondary eer or loss is best at its minimum.
        pick = max if _direction(secondary, "early_stop.monitor_secondary") == "max" else min
        metrics["best_" + secondary] = pick(finite) if finite else math.nan
    s.history.append({"epoch": epoch, **metrics})
    if improved:
        best = {
            "model": s.model.state_dict(),
            "epoch": epoch,
            "metric": s.stopper.best,
            # The operating point chosen on this validation: the test split is scored at it, unchanged.
            "threshold": metrics["val_video_threshold"],
            "config": s.cfg.model_dump(mode="json"),
        }
        save_checkpoint(best, best_path)
        callbacks.on_checkpoint("best", best_path, epoch)
    return callbacks.on_validation(epoch, metrics)


def _best_threshold(s: Session) -> float | None:
    """The video threshold chosen on the best validation (best.pt holds the same value)."""
    return next((h.get("val_video_threshold") for h in s.history if h["epoch"] == s.stopper.best_epoch), None)


def _write_run_state(run_dir: Path, s: Session, best_path: Path) -> None:
    """A human-readable sidecar of where the run stands; `last.pt` holds the full state."""
    state = {
        "epoch": s.epoch,
        "best_epoch": s.stopper.best_epoch,
        "best_value": s.stopper.best,
        "best_threshold": _best_threshold(s),
        "best_model_path": str(best_path.resolve()) if best_path.exists() else None,
        "last_model_path": str((run_dir / "last.pt").resolve()),
        "precision": s.precision.label if s.precision is not None else None,
    }
    write_text_atomic(run_dir / "run_state.json", json.dumps(state, indent=2))


def _score_test(s: Session, result: TrainResult, callbacks: Callback) -> None:
    """Score the test split once, with the best checkpoint at the video threshold its validation chose."""
    best = load_checkpoint(result.best_model_path, map_location=s.device)
    s.model.load_state_dict(best["model"])
    # best.pt files written before thresholds were kept fall back to the plain 0.5.
    threshold = float(best.get("threshold", 0.5))
    try:
        result.test_metrics, result.test_videos = _with_oom_backoff(
            s, s.epoch, callbacks,
            lambda: evaluate(s.model, s.loaders.test, s.loss_fn, s.cfg, s.device, prefix="test_", faults=s.faults,
                             threshold=threshold, precision=s.precision),
            rollback=False,
        )
    except OutOfMemoryAtFloor as exc:
        result.status, result.reason = "oom", f"scoring the test split: {exc}"
    _report_bad_videos(s, s.epoch, callbacks)


def fit(
    cfg: Config,
    callbacks: Callback | None = None,
    run_dir: Path | None = None,
    resume: Path | None = None,
    manifest: pd.DataFrame | None = None,
    progress: bool = True,
    score_test: bool = True,
    force_precision: str | None = None,
) -> TrainResult:
    """Train one config to the end (or early stop / callback stop / NaN) and score the test split once.

    `score_test=False` never touches the test split (sweep trials: model selection must not see it).
    `force_precision` ("fp32", "bf16", "fp16") skips the AMP precision check, for tests and benchmarks;
    otherwise a resumed run keeps the precision it started with and a new one chooses (see precision.py).
    """
    callbacks = callbacks or Callback()
    run_dir = Path(run_dir or cfg.train.output_dir / time.strftime("run-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml", header="resolved config of this run")
    s, manifest = build_session(cfg, manifest, progress)
    if resume is not None:
        s.load_state_dict(load_checkpoint(resume, map_location=s.device))
    if s.precision is None or force_precision is not None:
        s.precision = s.pick_precision(force_precision)
    callbacks.on_run_start(_run_info(s, run_dir, manifest))

    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    val_epochs = set(validation_epochs(cfg.train.epochs, cfg.train.val_every))
    status, reason = "completed", f"ran all {cfg.train.epochs} epochs"
    for epoch in range(s.epoch + 1, cfg.train.epochs + 1):
        try:
            train_metrics = _with_oom_backoff(s, epoch, callbacks, lambda: _train_epoch(s, epoch, progress), rollback=True)
            _report_bad_videos(s, epoch, callbacks)
            s.train_history.append({"epoch": epoch, **train_metrics})
            callbacks.on_epoch_end(epoch, train_metrics)
            keep_going = _validate(s, epoch, best_path, callbacks) if epoch in val_epochs else True
        except NonFiniteLoss as exc:
            status, reason = "nan", str(exc) if "epoch" in str(exc) else f"{exc} after epoch {epoch}"
            break
        except OutOfMemoryAtFloor as exc:
            status, reason = "oom", str(exc)
            break
        s.epoch = epoch
        save_checkpoint(s.state_dict(), last_path)
        callbacks.on_checkpoint("last", last_path, epoch)
        _write_run_state(run_dir, s, best_path)
        s.faults.after_epoch(epoch)
        if not keep_going:
            status, reason = "stopped", f"stopped by a callback after validating epoch {epoch}"
            break
        if epoch in val_epochs and s.stopper.should_stop:
            status = "early_stopped"
            reason = (
                f"{cfg.early_stop.metric} did not improve by {cfg.early_stop.min_delta} for "
                f"{cfg.early_stop.patience} validations (best {s.stopper.best:.4f} at epoch {s.stopper.best_epoch})"
            )
            break

    result = TrainResult(
        status=status,
        reason=reason,
        epochs_run=s.epoch if status not in ("nan", "oom") else s.epoch + 1,
        best_epoch=s.stopper.best_epoch,
        best_value=s.stopper.best,
        best_model_path=best_path if best_path.exists() else None,
        last_model_path=last_path if last_path.exists() else None,
        run_dir=run_dir,
        history=s.history,
        train_history=s.train_history,
        events=s.events,
    )
    if score_test and status in ("completed", "early_stopped") and result.best_model_path is not None:
        _score_test(s, result, callbacks)
    result.bad_videos = sorted({e["path"] for e in s.events if e["kind"] == "bad_video"})
    callbacks.on_run_end(result)
    return result
