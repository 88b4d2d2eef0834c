"""Optimizer and per-step learning-rate schedule from the config, through timm's factories."""

from __future__ import annotations

import torch
from torch import nn

from harness.config.schema import OptimConfig
from harness.errors import ConfigError

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """timm's factory keeps weight decay off biases and norms, and skips frozen parameters."""
    from timm.optim import create_optimizer_v2, list_optimizers

    if cfg.name.lower() not in list_optimizers():
        raise ConfigError(f"optim.name must be one of {', '.join(list_optimizers())}, but got {cfg.name!r}")
    return create_optimizer_v2(model, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, updates_per_epoch: int):
    """Linear warmup then cosine to min_lr, stepped per optimizer update (`step_update(n)`); None for constant lr."""
    if cfg.scheduler.type == "none":
        return None
    from timm.scheduler import create_scheduler_v2

    sched = cfg.scheduler
    # warmup_prefix: warmup comes first and the cosine spans the remaining epochs, ending at min_lr on the last step.
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=epochs - sched.warmup_epochs,
        warmup_epochs=sched.warmup_epochs,
        warmup_prefix=True,
        warmup_lr=sched.min_lr if sched.min_lr > 0 else cfg.lr * 0.01,
        min_lr=sched.min_lr,
        step_on_epochs=False,
        updates_per_epoch=max(1, updates_per_epoch),
    )
    return scheduler
