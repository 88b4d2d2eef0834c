"""Validation metrics from clip scores: clip and video level, per manipulation method (scikit-learn)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score, roc_curve

__all__ = [
    "aggregate_videos",
    "binary_metrics",
    "equal_error_rate",
    "eer_threshold",
    "clip_and_video_metrics",
    "attention_entropy",
    "metric_mode",
    "metric_names",
]

# Name parts that say which way a metric improves; one table, read by metric_mode.
_MINIMISED = frozenset({"loss", "eer"})
_MAXIMISED = frozenset({"auc", "ap", "acc", "f1"})


def _both_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def _eer_point(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) where FNR - FPR changes sign, interpolated linearly between the two ROC points around it.

    Every ROC point is kept (drop_intermediate=False), so the two points are neighbours in score order.
    When a ROC point lies exactly on the crossing, the threshold is midway between its score and the
    next lower one: the same point on these scores, with a margin both ways for new ones (a perfectly
    separated split gets a threshold between the classes, not on its lowest positive).
    """
    if not _both_classes(labels):
        return math.nan, math.nan
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    # Non-increasing from +1 (the first point, nothing called positive) to -1 (the last, everything positive).
    gap = (1.0 - tpr) - fpr
    i = int(np.argmax(gap <= 0.0))  # first point at or past the crossing; never 0 (gap[0] = 1) nor the last (-1)
    if gap[i] == 0.0:
        return float(fpr[i]), float((thresholds[i] + thresholds[i + 1]) / 2.0)
    t = gap[i - 1] / (gap[i - 1] - gap[i])  # fraction of the way from point i-1 to point i
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])  # equals the FNR there, by construction
    # roc_curve's first threshold is +inf (nothing positive); a score can only go as high as point 1's.
    upper = thresholds[i - 1] if np.isfinite(thresholds[i - 1]) else thresholds[i]
    return float(eer), float(upper + t * (thresholds[i] - upper))


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The operating point where false-accept and false-reject rates meet (interpolated on the ROC)."""
    return _eer_point(labels, scores)[0]


def eer_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold at the EER crossing, interpolated between the thresholds of the two ROC points
    around it; NaN when a class is missing. Predict positive where score >= threshold."""
    return _eer_point(labels, scores)[1]


def metric_mode(name: str) -> str:
    """"min" or "max": the direction in which the metric called `name` improves.

    Knows every metric `evaluate` reports, with or without a split prefix: loss and *eer* fall,
    *auc*, *ap*, *acc*, *f1* rise (per-method AUCs like video_auc_Deepfakes included).
    """
    parts = set(name.split("_"))
    if parts & _MINIMISED:
        return "min"
    if parts & _MAXIMISED:
        return "max"
    raise ValueError(
        f"a metric that rises or falls when the model improves (its name containing one of "
        f"{sorted(_MINIMISED | _MAXIMISED)}) must be given, but got {name!r}"
    )


def metric_names(methods: Iterable[str]) -> list[str]:
    """Every metric name `evaluate` can report for one split, without its split prefix (val_, test_).

    `methods` are the manifest's manipulation methods; each fake one adds a per-method AUC. Some names
    appear only in some runs: video_threshold without a given threshold (validation), threshold with one
    (test), attention_entropy with attention pooling, skipped_clips when videos failed to decode.
    threshold, loss, attention_entropy and skipped_clips come from trainer.evaluate itself, so
    tests/test_metrics.py runs the real evaluate to keep this list whole.
    """
    per_method = [f"video_auc_{m}" for m in sorted(set(methods) - {"real"})]
    video = [f"video_{part}" for part in ("auc", "ap", "eer", "acc", "f1")]
    return ["clip_auc", "video_threshold", *video, *per_method,
            "threshold", "loss", "attention_entropy", "skipped_clips"]


def binary_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str, threshold: float = 0.5) -> dict[str, float]:
    """AUC, AP, EER, and accuracy and F1 at `threshold`; AUC-type values are NaN when a class is missing."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    both = _both_classes(labels)
    pred = (probs >= threshold).astype(int)
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
    threshold: float | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """All validation metrics, plus the per-video table (for ROC plots and paired tests).

    `methods` is indexed by video_idx: the manipulation method of each manifest row ("real" for originals).
    Per-method AUC pits that method's fake videos against all real videos, which is how FF++ papers report it.

    Video accuracy and F1 are taken at `threshold`. A fixed 0.5 would measure the loss's prior shift
    (pos_weight moves every score) rather than the ranking, so without a threshold (validation) one is
    chosen at these videos' EER point and reported as `video_threshold`; the test split is then scored
    at the threshold of the best validation. Clip level reports only AUC, which needs no threshold.
    """
    video_idx = np.asarray(video_idx)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    metrics = {"clip_auc": binary_metrics(labels, probs, "clip_")["clip_auc"]}
    videos = aggregate_videos(video_idx, probs, labels, aggregation)
    videos["method"] = [methods[i] for i in videos.index]
    video_labels, video_probs = videos["label"].to_numpy(), videos["prob"].to_numpy()
    if threshold is None:
        chosen = eer_threshold(video_labels, video_probs)
        # One class only: no EER to choose at, so the plain 0.5 (and say so through the reported value).
        threshold = 0.5 if math.isnan(chosen) else chosen
        metrics["video_threshold"] = threshold
    metrics.update(binary_metrics(video_labels, video_probs, "video_", threshold))
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
