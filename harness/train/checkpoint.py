"""Atomic checkpoints that describe themselves: weights, loop state and the resolved config side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.io import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write to a temp file then rename, so a crash mid-write never leaves a torn checkpoint."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint from elsewhere cannot run code on unpickling."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)
