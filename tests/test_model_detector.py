"""The Detector end to end on a tiny MobileNetV4: shapes, input handling, normalisation, weights, channels_last."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config

from harness.config.schema import ModelConfig
from harness.errors import ConfigError
from harness.model.detector import build_detector

BACKBONE = "mobilenetv4_conv_small"


def _clips(b: int = 2, t: int = 4, size: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8)


def test_mean_pooling_detector_outputs_one_logit_per_clip() -> None:
    detector = build_detector(ModelConfig(aggregate="mean"), n_segment=4).eval()
    logits, weights = detector(_clips())
    assert logits.shape == (2,) and weights is None
    assert torch.isfinite(logits).all()


def test_attention_detector_returns_frame_weights() -> None:
    detector = build_detector(ModelConfig(aggregate="attention", dropout=0.3), n_segment=4).eval()
    logits, weights = detector(_clips())
    assert logits.shape == (2,) and weights.shape == (2, 4)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))


def test_feature_width_is_what_the_backbone_emits() -> None:
    detector = build_detector(ModelConfig(), n_segment=4)
    assert detector.backbone(torch.rand(4, 3, 32, 32)).shape == (4, detector.feature_dim)
    assert detector.feature_dim == 1280  # head_hidden_size; num_features is 960
    assert detector.head.in_features == 1280


def test_uint8_and_unit_float_inputs_agree() -> None:
    detector = build_detector(ModelConfig(), n_segment=4).eval()
    clips = _clips()
    with torch.no_grad():
        torch.testing.assert_close(detector(clips)[0], detector(clips.float() / 255)[0])


def test_normalisation_follows_the_backbone_data_config() -> None:
    detector = build_detector(ModelConfig(), n_segment=4).eval()
    cfg = resolve_data_config({}, model=detector.backbone)
    assert detector.mean.flatten().tolist() == pytest.approx(list(cfg["mean"]))
    assert detector.std.flatten().tolist() == pytest.approx(list(cfg["std"]))
    assert "mean" not in detector.state_dict() and "std" not in detector.state_dict()

    seen: list[torch.Tensor] = []
    detector.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    clips = _clips()
    detector(clips)
    frames = clips.reshape(8, 3, 32, 32).float() / 255  # (B*T, 3, H, W), clip-major
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (frames - mean) / std)


def test_detector_trains_end_to_end() -> None:
    detector = build_detector(ModelConfig(aggregate="attention"), n_segment=4).train()
    logits, _ = detector(_clips())
    logits.sum().backward()
    assert detector.head.weight.grad is not None
    assert detector.backbone.conv_stem.weight.grad.abs().sum() > 0
    assert detector.pool.score.weight.grad.abs().sum() > 0


def test_detector_refuses_clips_of_another_length() -> None:
    detector = build_detector(ModelConfig(), n_segment=4)
    with pytest.raises(ValueError, match="n_segment=4 frames"):
        detector(_clips(t=3))


def test_temporal_shift_switch() -> None:
    assert len(build_detector(ModelConfig(temporal_shift=True), n_segment=4).shifted_blocks) == 10
    assert build_detector(ModelConfig(temporal_shift=False), n_segment=4).shifted_blocks == []


def test_channels_last_gives_the_same_output() -> None:
    detector = build_detector(ModelConfig(aggregate="attention", fold_div=4), n_segment=4).eval()
    clips = _clips(size=64)  # big enough that shifted maps are 4x4, where the layouts differ
    with torch.no_grad():
        expected = detector(clips)[0]
        detector.to(memory_format=torch.channels_last)
        layouts: list[bool] = []
        block = detector.backbone.get_submodule(detector.shifted_blocks[0])
        block.pw_exp.register_forward_pre_hook(
            lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
        got = detector(clips)[0]
    assert layouts == [True]  # the shift ran on, and kept, channels_last
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_pretrained_weights_load_by_name_into_the_shifted_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    plain = timm.create_model(BACKBONE)  # with its 1000-class classifier, as published weights come
    weights = tmp_path / "mnv4.pth"
    torch.save(plain.state_dict(), weights)
    detector = build_detector(
        ModelConfig(pretrained=True, pretrained_file=weights, freeze_bn_fraction=0.3), n_segment=4
    )
    assert len(detector.shifted_blocks) > 0
    loaded = detector.backbone.state_dict()
    expected = {k: v for k, v in plain.state_dict().items() if not k.startswith("classifier.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_missing_pretrained_file_names_the_key(tmp_path: Path) -> None:
    cfg = ModelConfig(pretrained=True, pretrained_file=tmp_path / "absent.pth")
    with pytest.raises(ConfigError, match="model.pretrained_file must be an existing weights file"):
        build_detector(cfg, n_segment=4)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), weights)
    with pytest.raises(ConfigError, match="must hold mobilenetv4_conv_small weights"):
        build_detector(ModelConfig(pretrained=True, pretrained_file=weights), n_segment=4)


def test_unknown_backbone_lists_the_family() -> None:
    with pytest.raises(ConfigError, match=r"model.backbone must be a timm model name .*mobilenetv4_conv_small.*but got 'mnv4'"):
        build_detector(ModelConfig(backbone="mnv4"), n_segment=4)


def _built_with_seed(cfg: ModelConfig, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The detector's initial state and the next draw of the global RNG after building it."""
    torch.manual_seed(seed)
    detector = build_detector(cfg, n_segment=4)
    return detector.state_dict(), torch.rand(3)


@pytest.mark.parametrize(
    "change",
    [
        {"aggregate": "attention"},
        {"fold_div": 4},
        {"dropout": 0.3},
        {"freeze_bn_fraction": 0.333},
        {"temporal_shift": False},
        {"aggregate": "attention", "fold_div": 4, "dropout": 0.3, "freeze_bn_fraction": 0.333},
    ],
)
def test_a_config_choice_leaves_the_shared_initial_weights_alone(change: dict) -> None:
    base, base_next = _built_with_seed(ModelConfig(aggregate="mean", fold_div=8))
    other, other_next = _built_with_seed(ModelConfig(**{"aggregate": "mean", "fold_div": 8, **change}))
    shared = [k for k in base if k in other and base[k].shape == other[k].shape]
    assert "head.weight" in shared and "backbone.conv_stem.weight" in shared
    for key in shared:
        assert torch.equal(base[key], other[key]), key
    assert torch.equal(base_next, other_next)  # what is built after the model (data order, dropout) starts equal too
    if change.get("aggregate") == "attention":
        assert {k for k in other if k not in base} == {"pool.score.weight", "pool.score.bias"}


def test_another_seed_gives_other_initial_weights() -> None:
    one, _ = _built_with_seed(ModelConfig(), seed=0)
    two, _ = _built_with_seed(ModelConfig(), seed=1)
    assert not torch.equal(one["head.weight"], two["head.weight"])
