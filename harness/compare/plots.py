"""The comparison's figures: test AUC per config over seeds, and validation curves overlaid, as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.compare.ablation import Arm
from harness.compare.runner import RunRecord
from harness.track.plots import headless_pyplot, save_figure

__all__ = ["plot_auc_by_config", "plot_val_curves"]


def plot_auc_by_config(runs: pd.DataFrame, order: Sequence[str], path: Path, metric: str = "test_video_auc") -> Path:
    """A box per config with every seed as a point; the dashed line is the baseline's (first config's) median."""
    plt = headless_pyplot()
    ok = runs[runs["status"].isin(["completed", "early_stopped"])]
    values = [ok.loc[ok["config"] == name, metric].dropna().to_numpy() for name in order]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.42 * len(order)))
    positions = np.arange(len(order))[::-1]  # the first config on top
    ax.boxplot([v if len(v) else [np.nan] for v in values], positions=positions, vert=False, widths=0.55,
               showfliers=False, medianprops={"color": "black"})
    seeds = sorted(ok["seed"].unique())
    markers = "osD^v<>ph*"
    for pos, name in zip(positions, order):
        rows = ok[ok["config"] == name]
        for seed, value in zip(rows["seed"], rows[metric]):
            # Same marker for the same seed in every row, so a paired seed can be followed down the figure.
            ax.scatter(value, pos + (seeds.index(seed) - (len(seeds) - 1) / 2) * 0.08,
                       marker=markers[seeds.index(seed) % len(markers)], s=22, zorder=3, color="tab:blue", alpha=0.8)
    if len(values[0]):
        ax.axvline(float(np.median(values[0])), color="grey", ls="--", lw=0.8)
    ax.set_yticks(positions, order, fontsize=8)
    ax.set(xlabel=metric.replace("_", " "), title=f"{metric.replace('_', ' ')} per config ({len(seeds)} seeds; marker = seed)")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_val_curves(records: Sequence[RunRecord], arms: Sequence[Arm], path: Path) -> Path:
    """Validation video AUC against the epoch: thin lines per seed, a thick line for each config's mean.

    With ablations the given configs, the baseline-plus-one and the recommended-minus-one arms get a
    panel each, so sixteen curves do not share one axis.
    """
    plt = headless_pyplot()
    panels = [(kind, [a for a in arms if a.kind == kind]) for kind in ("given", "added", "removed")]
    panels = [(kind, group) for kind, group in panels if group]
    titles = {"given": "configs", "added": "baseline + one recommendation", "removed": "recommended - one recommendation"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (kind, group) in zip(axes[0], panels):
        colors = plt.get_cmap("tab10" if len(group) <= 10 else "tab20")
        for i, arm in enumerate(group):
            curves = [pd.Series(dict(r.val_curve)) for r in records if r.arm == arm.name and r.val_curve]
            if not curves:
                continue
            color = colors(i % colors.N)
            for c in curves:
                ax.plot(c.index, c.values, color=color, lw=0.6, alpha=0.35)
            mean = pd.concat(curves, axis=1).mean(axis=1)
            ax.plot(mean.index, mean.values, color=color, lw=2.0, marker="o", ms=3, label=arm.name)
        ax.set(title=titles[kind], xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("validation video AUC")
    return save_figure(fig, path)
