"""Shared fixtures: one small synthetic FF++-shaped tree per test session."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything loads torch: spinning OpenMP threads stall a busy 2-core machine (see harness.cli.main).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist, each worker's torch (and the harness processes it starts) gets its share of the cores: two
# workers of two threads each on 2 cores wait on each other's threads at every parallel op (the train and compare
# end-to-end tests took 90 s with -n 2, 63 s with one thread per worker).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

import pytest

from harness.config.schema import SyntheticConfig

# Small enough to generate in about a second; 6 sources give one pair per split and 5 fakes per real.
SMALL_SYNTHETIC = SyntheticConfig(n_sources=6, frames=24, size=32, burst_frames=6, fps=12.0, seed=0)


@pytest.fixture(scope="session")
def small_synthetic_config() -> SyntheticConfig:
    """The config `synthetic_root` was generated from (copy it with model_copy to vary it)."""
    return SMALL_SYNTHETIC


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a generated tree (c23, 5 methods); treat it as read-only, copy it to change it."""
    from harness.data.synth import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), SMALL_SYNTHETIC, progress=False)


@pytest.fixture(scope="session")
def manifest(synthetic_root: Path):
    """The manifest of `synthetic_root`: all five methods, train split 2 real and 10 fake videos (index_ffpp writes
    no cached index into the tree)."""
    from harness.config.schema import FFPP_METHODS
    from harness.data.index import index_ffpp

    return index_ffpp(synthetic_root, FFPP_METHODS, progress=False).manifest
