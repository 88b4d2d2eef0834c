"""Sweep: search spaces as data (YAML -> Optuna distributions) and the studies that run over them.

Nothing is imported here, so the CLI can read the sweep's defaults without loading Optuna.
"""
