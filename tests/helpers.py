"""Helpers several test modules share: the repository root, tiny config overrides, a tiny search space,
and a video corrupted behind the manifest's back. Import them with `from helpers import ...` (pytest puts
tests/ on sys.path); fixtures live in conftest.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

__all__ = ["ROOT", "corrupt_keeping_size_and_mtime", "tiny_overrides", "write_space"]

ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(root: Path, tmp: Path) -> list[str]:
    """`--set` items that train on the generated tree at `root` in a few seconds, writing under `tmp`."""
    return [
        # The generated tree has FF++'s layout, so the real FF++ indexing path reads it.
        "data.source=ffpp",
        f"data.root={root}",
        "data.input_size=32",
        "data.num_workers=0",
        # The test tree's 24-frame videos hold two distinct 2 s windows; more would repeat them.
        "data.clips_per_video_eval=2",
        "train.epochs=4",
        "train.batch_size=8",
        f"train.output_dir={tmp / 'runs'}",
    ]


def write_space(tmp: Path, root: Path, pruner: dict, epochs: int = 4) -> Path:
    """The demo space's knobs over baseline + demo + a tiny overlay, so trials take seconds; `epochs` per trial."""
    (tmp / "tiny.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"source": "ffpp", "root": str(root), "input_size": 32},
                "train": {"epochs": epochs, "batch_size": 8, "output_dir": str(tmp / "runs")},
            }
        )
    )
    space = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    space["base"] = [str(ROOT / "baseline.yaml")]
    space["overlays"] = [str(ROOT / "configs" / "demo.yaml"), str(tmp / "tiny.yaml")]
    space["study"]["enqueue"] = [str(ROOT / "baseline.yaml"), str(ROOT / "recommended.yaml")]
    space["study"]["pruner"] = pruner
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def corrupt_keeping_size_and_mtime(path: Path) -> None:
    """Random bytes of the same size with the same mtime: the cached manifest still lists the file as fine."""
    stat = path.stat()
    path.write_bytes(np.random.default_rng(0).integers(0, 256, stat.st_size, dtype=np.uint8).tobytes())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
