"""Model: timm backbone with temporal shift, BatchNorm freezing, temporal pooling and a one-logit head."""

from harness.model.batchnorm import freeze_batchnorm, keep_frozen_bn_eval
from harness.model.detector import Detector, build_detector, create_backbone, feature_dim
from harness.model.pooling import AttentionPool, MeanPool, build_pooling
from harness.model.temporal_shift import TemporalShift, insert_residual_shift, temporal_shift

__all__ = [
    "Detector",
    "build_detector",
    "create_backbone",
    "feature_dim",
    "temporal_shift",
    "TemporalShift",
    "insert_residual_shift",
    "MeanPool",
    "AttentionPool",
    "build_pooling",
    "freeze_batchnorm",
    "keep_frozen_bn_eval",
]
