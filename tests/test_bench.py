"""The benchmark scripts build what they measure from the shipped files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.sweep.space import load_space

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_bench_space_is_the_demo_space_with_pruning_off_and_its_own_cache(tmp_path: Path) -> None:
    bench = _load("sweep_prune")
    path = bench.write_space(tmp_path, "unpruned", {"type": "none"},
                             {"data.cache_dir": str(tmp_path / "cache"), "train.epochs": 2})
    space, demo = load_space(path), load_space(ROOT / "search_spaces/demo.yaml")
    assert space.study.pruner == {"type": "none"}
    assert [p.name for p in space.study.enqueue] == ["baseline.yaml", "recommended.yaml"]
    assert [p.name for p in space.params] == [p.name for p in demo.params]
    cfg = space.config_for(space.enqueue_params()[0])
    assert (cfg.train.epochs, cfg.data.cache_dir, cfg.data.input_size) == (2, tmp_path / "cache", 64)
