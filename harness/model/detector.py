"""The clip-level deepfake detector: timm backbone (+TSM) per frame, temporal pooling, one logit."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from torch import Tensor, nn

from harness.config.schema import ModelConfig
from harness.errors import ConfigError
from harness.model.batchnorm import freeze_batchnorm, keep_frozen_bn_eval
from harness.model.pooling import build_pooling
from harness.model.temporal_shift import insert_residual_shift

__all__ = ["Detector", "build_detector", "create_backbone", "feature_dim"]


class Detector(nn.Module):
    """Clips (B, T, 3, H, W) -> (logits (B,), attention weights (B, T) or None).

    Normalisation lives here, from the backbone's own pretrained config, so data code
    only hands over uint8 frames or floats in [0, 1] and never needs to know the model.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pool: nn.Module,
        n_segment: int,
        dropout: float = 0.0,
        frozen_bn: list[str] | None = None,
        shifted_blocks: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = feature_dim(backbone)
        self.head = nn.Linear(self.feature_dim, 1)
        self.n_segment = n_segment
        self.frozen_bn = list(frozen_bn or [])
        self.shifted_blocks = list(shifted_blocks or [])
        data_cfg = resolve_data_config({}, model=backbone)
        # Non-persistent: they follow .to(device) but stay out of checkpoints, since they
        # are derived from the backbone name, not learnt.
        self.register_buffer("mean", torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        # Frozen BatchNorms must not pick up batch statistics when training resumes.
        keep_frozen_bn_eval(self.backbone, self.frozen_bn)
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        b, t, c, h, w = x.shape
        if t != self.n_segment:
            raise ValueError(f"clips must have n_segment={self.n_segment} frames (x.shape[1]), but got {t}")
        # Clip-major, time-contiguous frames: the layout temporal_shift expects.
        x = x.reshape(b * t, c, h, w)  # (B*T, 3, H, W)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        feats = self.backbone(x)  # (B*T, D)
        feats = feats.view(b, t, -1)  # (B, T, D)
        pooled, weights = self.pool(feats)  # (B, D), (B, T) or None
        logits = self.head(self.dropout(pooled)).squeeze(-1)  # (B,)
        return logits, weights


def feature_dim(backbone: nn.Module) -> int:
    """Width of the backbone's pooled output with num_classes=0."""
    # timm's MobileNetV4 with num_classes=0 still runs conv_head + norm_head, so the
    # output width is head_hidden_size (1280 for conv_small), not num_features (960).
    return getattr(backbone, "head_hidden_size", backbone.num_features)


def create_backbone(model_cfg: ModelConfig) -> nn.Module:
    """The timm backbone without classifier (features before it), pretrained from a local file if asked."""
    if not timm.is_model(model_cfg.backbone):
        family = timm.list_models("mobilenetv4*")
        raise ConfigError(f"model.backbone must be a timm model name (e.g. one of {family}), but got {model_cfg.backbone!r}")
    if not model_cfg.pretrained:
        return timm.create_model(model_cfg.backbone, pretrained=False, num_classes=0)

    path = model_cfg.pretrained_file
    if path is None or not Path(path).is_file():
        raise ConfigError(f"model.pretrained_file must be an existing weights file, but got {path}")
    # timm loads the file non-strictly once the classifier is dropped (num_classes=0 differs
    # from the weights' 1000), so a file for another model would silently leave the
    # backbone random. Check the keys first and fail loudly instead.
    _check_weights_match(model_cfg.backbone, Path(path))
    try:
        return timm.create_model(
            model_cfg.backbone,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path)),
            num_classes=0,
        )
    except RuntimeError as e:  # same keys, other shapes: e.g. a different width variant
        first_line = str(e).splitlines()[0]
        raise ConfigError(
            f"model.pretrained_file must hold {model_cfg.backbone} weights, but loading {path} failed: {first_line}"
        ) from e


def _check_weights_match(name: str, path: Path) -> None:
    file_keys = set(timm.models.load_state_dict(str(path)).keys())
    with torch.device("meta"):  # key names only; no memory or init cost
        wanted = timm.create_model(name, pretrained=False, num_classes=0).state_dict().keys()
    missing = [k for k in wanted if k not in file_keys]
    if missing:
        raise ConfigError(
            f"model.pretrained_file must hold {name} weights, but {path} lacks {len(missing)} of its "
            f"{len(wanted)} keys (first: {missing[:3]})"
        )


def build_detector(model_cfg: ModelConfig, n_segment: int) -> Detector:
    """Backbone, then TSM (shift after loading, which it does not affect), BN freezing, pooling, head.

    Parts every config has (backbone, head) draw their initial weights from the global torch RNG
    in a fixed order; parts that depend on a config choice are built under a forked RNG. So for
    one seed, two configs start from identical shared weights and differ only in what one of them
    adds (e.g. attention pooling's scorer), and an A/B comparison measures the choice, not the init.
    """
    backbone = create_backbone(model_cfg)
    with _config_specific_init():
        shifted = insert_residual_shift(backbone, n_segment, model_cfg.fold_div) if model_cfg.temporal_shift else []
        frozen = freeze_batchnorm(backbone, model_cfg.freeze_bn_fraction)
        pool = build_pooling(model_cfg.aggregate, feature_dim(backbone))
    return Detector(  # builds the head, from the same RNG state whatever the choices above
        backbone,
        pool,
        n_segment=n_segment,
        dropout=model_cfg.dropout,
        frozen_bn=frozen,
        shifted_blocks=shifted,
    )


def _config_specific_init():
    """Build inside this to leave the global torch RNG as it was: the next shared part's init stays put.

    CPU only (devices=[]): modules are built on the CPU and moved to the device afterwards.
    """
    return torch.random.fork_rng(devices=[])
