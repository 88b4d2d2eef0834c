"""Figures people would rather look at than read: training curves and ROC curves as PNG, plotly figures as HTML."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["headless_pyplot", "save_figure", "save_html", "plot_curves", "plot_roc"]


def headless_pyplot():
    """pyplot on the Agg backend; every figure module here draws through this."""
    import matplotlib

    matplotlib.use("Agg")  # headless machines and worker processes have no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG and free the figure (figures left open pile up over a sweep's trials)."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    headless_pyplot().close(fig)
    return path


def save_html(fig, path: Path) -> Path:
    """Write a plotly figure as a page that opens offline: plotly.js (~4.8 MB) is inside the file.

    A page that loads plotly.js from its CDN shows nothing on a machine without internet access, which is
    where the MLflow UI of a training cluster often runs.
    """
    path = Path(path)
    fig.write_html(str(path), include_plotlyjs=True)
    return path


def plot_curves(train_history: Sequence[dict], history: Sequence[dict], path: Path, title: str = "") -> Path:
    """Loss (train and val), validation AUCs and the learning rate against the epoch."""
    plt = headless_pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    train = pd.DataFrame(train_history)
    val = pd.DataFrame(history)
    if not train.empty:
        axes[0].plot(train["epoch"], train["train_loss"], marker="o", label="train")
        axes[2].plot(train["epoch"], train["lr"], marker=".")
    if not val.empty:
        axes[0].plot(val["epoch"], val["val_loss"], marker="o", label="val")
        for name in ("val_video_auc", "val_clip_auc"):
            if name in val:
                axes[1].plot(val["epoch"], val[name], marker="o", label=name.removeprefix("val_"))
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].set(title="validation AUC", xlabel="epoch", ylim=(0.0, 1.02))
    axes[2].set(title="learning rate", xlabel="epoch", yscale="log")
    for ax in axes[:2]:
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_roc(videos: pd.DataFrame, path: Path, title: str = "test ROC (video level)") -> Path:
    """All videos, and each manipulation method against the real videos."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    groups = {"all": videos}
    real = videos[videos["label"] == 0]
    for method in sorted(set(videos.get("method", [])) - {"real"}):
        groups[method] = pd.concat([real, videos[videos["method"] == method]])
    for name, frame in groups.items():
        if frame["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(frame["label"], frame["prob"])
        auc = roc_auc_score(frame["label"], frame["prob"])
        ax.plot(fpr, tpr, lw=2.2 if name == "all" else 1.0, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)
