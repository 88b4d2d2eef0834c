"""Sweep: search spaces as data (YAML -> Optuna distributions) and the studies that run over them."""

from harness.sweep.space import SearchSpace, build_pruner, build_sampler, load_space

__all__ = ["SearchSpace", "load_space", "build_sampler", "build_pruner"]
