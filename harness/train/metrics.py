"""Validation metrics from clip scores: clip and video level, per manipulation method (scikit-learn)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score, roc_curve

__all__ = ["aggregate_videos", "binary_metrics", "equal_error_rate", "clip_and_video_metrics", "attention_entropy"]


def _both_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The operating point where false-accept and false-reject rates meet (interpolated on the ROC)."""
    if not _both_classes(labels):
        return math.nan
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0)


def binary_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str) -> dict[str, float]:
    """AUC, AP, EER, accuracy and F1 at 0.5; AUC-type values are NaN when a class is missing."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    both = _both_classes(labels)
    pred = (probs >= 0.5).astype(int)
    return {
        f"{prefix}auc": float(roc_auc_score(labels, probs)) if both else math.nan,
        f"{prefix}ap": float(average_precision_score(labels, probs)) if both else math.nan,
        f"{prefix}eer": equal_error_rate(labels, probs),
        f"{prefix}acc": float(accuracy_score(labels, pred)),
        f"{prefix}f1": float(f1_score(labels, pred, zero_division=0.0)),
    }


def aggregate_videos(
    video_idx: np.ndarray, probs: np.ndarray, labels: np.ndarray, how: str = "mean"
) -> pd.DataFrame:
    """One row per video: its label and its clips' probabilities reduced by `how` (mean, max, median)."""
    frame = pd.DataFrame({"video_idx": video_idx, "prob": probs, "label": labels})
    grouped = frame.groupby("video_idx", sort=True)
    return pd.DataFrame({"prob": grouped["prob"].agg(how), "label": grouped["label"].first()})


def clip_and_video_metrics(
    video_idx: Sequence[int],
    probs: Sequence[float],
    labels: Sequence[float],
    methods: Sequence[str],
    aggregation: str = "mean",
) -> tuple[dict[str, float], pd.DataFrame]:
    """All validation metrics, plus the per-video table (for ROC plots and paired tests).

    `methods` is indexed by video_idx: the manipulation method of each manifest row ("real" for originals).
    Per-method AUC pits that method's fake videos against all real videos, which is how FF++ papers report it.
    """
    video_idx = np.asarray(video_idx)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    metrics = {"clip_auc": binary_metrics(labels, probs, "clip_")["clip_auc"]}
    videos = aggregate_videos(video_idx, probs, labels, aggregation)
    videos["method"] = [methods[i] for i in videos.index]
    metrics.update(binary_metrics(videos["label"].to_numpy(), videos["prob"].to_numpy(), "video_"))
    real = videos[videos["label"] == 0]
    for method in sorted(set(videos["method"]) - {"real"}):
        subset = pd.concat([real, videos[videos["method"] == method]])
        both = _both_classes(subset["label"].to_numpy())
        metrics[f"video_auc_{method}"] = (
            float(roc_auc_score(subset["label"], subset["prob"])) if both else math.nan
        )
    return metrics, videos


def attention_entropy(weights: np.ndarray) -> float:
    """Mean entropy (nats) of per-clip attention weights; log(T) means uniform, 0 means one frame."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 1e-12, 1.0)
    return float(np.mean(-(w * np.log(w)).sum(axis=-1)))
