"""Atomic checkpoints that describe themselves: weights, loop state and the resolved config side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.io import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write to a temp file then rename, so a crash mid-write never leaves a torn checkpoint.

    A full disk raises DiskFull naming the folder and leaves the previous checkpoint at `path` as it was.
    """
    path = Path(path)
    # Checkpoints live in run folders under train.output_dir, the key that moves them to a larger disk.
    with atomic_path(path, setting="train.output_dir") as tmp:
        # Through a Python file: torch.save given a path reports a failed write as a RuntimeError without its
        # errno, so a full disk could not be told from any other failure.
        with open(tmp, "wb") as file:
            torch.save(state, file)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint from elsewhere cannot run code on unpickling."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)
