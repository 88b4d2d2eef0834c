"""Threshold-free and thresholded metrics on hand-computed score sets: EER, its threshold, directions, names."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness.train.metrics import clip_and_video_metrics, eer_threshold, equal_error_rate, metric_mode, metric_names


def test_eer_interpolates_between_the_two_roc_points_around_the_crossing() -> None:
    # Scores descending: 0.3 N, 0.25 P, 0.2 N, 0.1 N. ROC points (FPR, FNR): (0, 1), (1/3, 1) at 0.3,
    # (1/3, 0) at 0.25, ... FNR - FPR goes 2/3 -> -1/3, so the crossing is 2/3 of the way: FPR = FNR = 1/3.
    # (The nearest ROC point alone, averaged, would say 1/6.)
    labels, scores = np.array([0, 0, 0, 1]), np.array([0.1, 0.2, 0.3, 0.25])
    assert equal_error_rate(labels, scores) == pytest.approx(1 / 3)
    assert eer_threshold(labels, scores) == pytest.approx(0.3 + 2 / 3 * (0.25 - 0.3))


def test_eer_on_a_second_hand_computed_roc() -> None:
    # Descending: 0.9 P, 0.7 P, 0.6 N, 0.4 P, 0.2 N. Points (FPR, FNR): (0, 1), (0, 2/3), (0, 1/3) at 0.7,
    # (1/2, 1/3) at 0.6, ... FNR - FPR goes 1/3 -> -1/6: 2/3 of the way, FPR = 0 + 2/3 * 1/2 = 1/3 = FNR.
    labels, scores = np.array([0, 0, 1, 1, 1]), np.array([0.2, 0.6, 0.4, 0.7, 0.9])
    assert equal_error_rate(labels, scores) == pytest.approx(1 / 3)
    assert eer_threshold(labels, scores) == pytest.approx(0.7 + 2 / 3 * (0.6 - 0.7))


def test_eer_at_a_roc_point_on_the_crossing_takes_the_threshold_midway_to_the_next_score() -> None:
    # Descending: 0.8 P, 0.4 N, 0.35 P, 0.1 N. The point at 0.4 has FPR = FNR = 1/2 exactly.
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert equal_error_rate(labels, scores) == pytest.approx(0.5)
    assert eer_threshold(labels, scores) == pytest.approx((0.4 + 0.35) / 2)
    # Perfectly separated: no error, and a threshold between the classes rather than on the lowest positive.
    assert equal_error_rate(np.array([0, 1]), np.array([0.2, 0.9])) == 0.0
    assert eer_threshold(np.array([0, 1]), np.array([0.2, 0.9])) == pytest.approx(0.55)


def test_eer_with_all_scores_tied_is_one_half_and_needs_both_classes() -> None:
    assert equal_error_rate(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert eer_threshold(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(equal_error_rate(np.array([1, 1]), np.array([0.2, 0.3])))


def _videos(real: list[float], fake: list[float], **kwargs) -> dict[str, float]:
    """Video metrics for one clip per video: real videos first, then fakes."""
    probs = real + fake
    labels = [0] * len(real) + [1] * len(fake)
    methods = ["real"] * len(real) + ["Deepfakes"] * len(fake)
    metrics, _ = clip_and_video_metrics(np.arange(len(probs)), probs, labels, methods, **kwargs)
    return metrics


def test_accuracy_and_f1_use_the_threshold_chosen_on_validation() -> None:
    # pos_weight < 1 (fakes are the majority) pushes every score down: perfectly ranked, all below 0.5.
    val = _videos(real=[0.05, 0.10], fake=[0.15, 0.20, 0.30, 0.40, 0.45, 0.35])
    assert val["video_auc"] == 1.0
    assert val["video_threshold"] == pytest.approx(0.125)  # between the top real and the lowest fake
    assert val["video_acc"] == 1.0 and val["video_f1"] == 1.0
    at_half = _videos(real=[0.05, 0.10], fake=[0.15, 0.20, 0.30, 0.40, 0.45, 0.35], threshold=0.5)
    assert at_half["video_acc"] == 0.25 and at_half["video_f1"] == 0.0  # what a fixed 0.5 reported

    # The test split keeps the validation threshold unchanged and reports none of its own.
    test = _videos(real=[0.08, 0.12, 0.14], fake=[0.11, 0.20, 0.30, 0.35], threshold=val["video_threshold"])
    assert "video_threshold" not in test
    assert test["video_acc"] == pytest.approx(5 / 7)  # the 0.14 real called fake, the 0.11 fake called real
    assert test["video_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # TP 3, FP 1, FN 1


def test_a_validation_split_with_one_class_falls_back_to_one_half() -> None:
    val = _videos(real=[], fake=[0.3, 0.7])
    assert val["video_threshold"] == 0.5 and val["video_acc"] == 0.5


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("loss", "min"), ("video_eer", "min"), ("val_loss", "min"), ("test_video_eer", "min"),
        ("video_auc", "max"), ("clip_auc", "max"), ("video_ap", "max"), ("video_acc", "max"), ("video_f1", "max"),
        ("video_auc_Deepfakes", "max"), ("best_clip_auc", "max"),
    ],
)
def test_each_metric_knows_its_direction(name: str, mode: str) -> None:
    assert metric_mode(name) == mode


def test_a_metric_without_a_direction_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"must be given, but got 'attention_entropy'"):
        metric_mode("attention_entropy")


class _AttentionClipModel(torch.nn.Module):
    """The Detector's call shape with attention pooling: (B, T, 3, H, W) -> (logits (B,), weights (B, T))."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 1)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = clips.float().mean(dim=(3, 4))  # (B, T, 3)
        logits = self.head(feats.mean(dim=1)).squeeze(-1)  # (B,)
        return logits, torch.softmax(self.head(feats).squeeze(-1), dim=1)  # weights (B, T)


def test_metric_names_holds_every_name_evaluate_reports() -> None:
    from harness.config.loading import config_from_dict
    from harness.train.trainer import evaluate

    methods = ["real", "real", "Deepfakes", "Deepfakes", "FaceSwap", "FaceSwap"]

    class Loader(list):  # evaluate reads each video's method from its loader's dataset manifest
        dataset = type("Dataset", (), {"manifest": pd.DataFrame({"method": methods})})()

    # Every optional name on: attention weights, a video that failed to decode, with and without a threshold.
    batch = {
        "clip": torch.rand(6, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0)),
        "label": torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
        "video_idx": torch.arange(6),
        "valid": torch.tensor([True, True, True, True, True, False]),
    }
    cfg, model, cpu = config_from_dict({}), _AttentionClipModel(), torch.device("cpu")
    emitted: set[str] = set()
    for prefix, threshold in (("val_", None), ("test_", 0.5)):
        loss_fn = torch.nn.BCEWithLogitsLoss()
        metrics, _ = evaluate(model, Loader([batch]), loss_fn, cfg, cpu, prefix, threshold=threshold)
        assert all(key.startswith(prefix) for key in metrics)
        emitted |= {key.removeprefix(prefix) for key in metrics}
    assert emitted == set(metric_names(methods))
    assert "video_auc_FaceSwap" in emitted and "video_auc_real" not in emitted


def test_a_misspelt_early_stop_metric_is_refused_at_load_with_the_names_allowed() -> None:
    from harness.config.loading import config_from_dict
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match=r"early_stop.metric must be one of clip_auc, .*video_auc_Deepfakes, "
                                          r"loss, but got 'video_acu'") as caught:
        config_from_dict({"data": {"methods": ["Deepfakes"]}, "early_stop": {"metric": "video_acu"}})
    assert len(caught.value.problems) == 1 and "video_auc_FaceSwap" not in caught.value.problems[0]
    # A reported name with no direction cannot tell early stopping which epoch was best.
    with pytest.raises(ConfigError, match=r"early_stop.monitor_secondary must be one of .* but got 'video_threshold'"):
        config_from_dict({"early_stop": {"monitor_secondary": "video_threshold"}})
    # Per-method names follow the configured methods: synthetic data's, or FF++'s five when data.methods is null.
    synthetic = {"source": "synthetic", "synthetic": {"methods": ["Face2Face"]}}
    assert config_from_dict({"data": synthetic, "early_stop": {"metric": "video_auc_Face2Face"}})
    with pytest.raises(ConfigError, match="but got 'video_auc_Deepfakes'"):
        config_from_dict({"data": synthetic, "early_stop": {"metric": "video_auc_Deepfakes"}})
    assert config_from_dict({"early_stop": {"metric": "video_auc_NeuralTextures", "monitor_secondary": "loss"}})
    # A CSV names its methods only once read, so there any per-method AUC passes and other typos do not.
    csv = {"source": "csv", "manifest": "videos.csv"}
    assert config_from_dict({"data": csv, "early_stop": {"metric": "video_auc_MyMethod"}})
    with pytest.raises(ConfigError, match=r"video_auc_<method> \(a method of data.manifest\), but got 'video_aucc'"):
        config_from_dict({"data": csv, "early_stop": {"metric": "video_aucc"}})
