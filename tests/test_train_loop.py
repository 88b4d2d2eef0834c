"""The loop's arithmetic on a tiny model: accumulation, schedule, early stopping, NaN handling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from harness.config.loading import config_from_dict
from harness.train.early_stopping import EarlyStopping
from harness.train.optim import build_optimizer, build_scheduler
from harness.train.session import Session
from harness.train.trainer import NonFiniteLoss, train_one_epoch, validation_epochs


class TinyClipModel(nn.Module):
    """Same call shape as the Detector: (B, T, 3, H, W) -> (logits (B,), attention or None)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor):
        feats = x.float().mean(dim=(1, 3, 4))  # (B, 3)
        return self.head(feats).squeeze(-1), None


def _batches(n: int, size: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    clips = torch.rand(n * size, 2, 3, 4, 4, generator=g)
    labels = (torch.rand(n * size, generator=g) > 0.5).float()
    return [
        {"clip": clips[i * size : (i + 1) * size], "label": labels[i * size : (i + 1) * size], "video_idx": torch.arange(size)}
        for i in range(n)
    ]


def _cfg(**train):
    return config_from_dict({"train": {"epochs": 1, **train}, "optim": {"name": "sgd", "lr": 0.5, "weight_decay": 0.0}})


def _session(model: nn.Module, batches: list[dict], accum: int) -> Session:
    """A session around hand-made batches: only what train_one_epoch reads is real."""
    return Session(
        cfg=_cfg(grad_accum_steps=accum), device=torch.device("cpu"), loaders=SimpleNamespace(train=batches),
        class_counts=(1, 1), model=model, loss_fn=nn.BCEWithLogitsLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5), scheduler=None,
        scaler=torch.amp.GradScaler("cpu", enabled=False), stopper=EarlyStopping("max", 1, 0.0),
    )


def _one_epoch(batches, accum: int):
    torch.manual_seed(0)
    model = TinyClipModel()
    s = _session(model, batches, accum)
    train_one_epoch(s, 1, progress=False)
    return model, s.num_updates


def test_accumulating_k_micro_batches_equals_one_large_batch() -> None:
    micro = _batches(4, 2)
    large = [{k: torch.cat([b[k] for b in micro]) for k in micro[0]}]
    m_accum, updates_accum = _one_epoch(micro, accum=4)
    m_large, updates_large = _one_epoch(large, accum=1)
    assert updates_accum == updates_large == 1
    # Equal-sized micro-batches: the mean of means is the large batch's mean; only float rounding differs.
    for a, b in zip(m_accum.parameters(), m_large.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_trailing_partial_group_is_still_applied_as_a_mean() -> None:
    micro = _batches(3, 2)
    _, updates = _one_epoch(micro, accum=2)
    assert updates == 2
    # The last group holds one micro-batch: stepping it alone must equal accum=1 on that batch.
    m_first, _ = _one_epoch(micro[:2], accum=2)
    torch.manual_seed(0)
    ref = TinyClipModel()
    ref.load_state_dict(m_first.state_dict())
    train_one_epoch(_session(ref, micro[2:], accum=1), 1, progress=False)
    m_all, _ = _one_epoch(micro, accum=2)
    for a, b in zip(m_all.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_nan_loss_raises_a_clear_reason() -> None:
    batches = _batches(2, 2)
    batches[1]["clip"][0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="loss became nan at epoch 1, batch 2"):
        _one_epoch(batches, accum=1)


def test_non_finite_outputs_at_validation_raise_instead_of_reaching_sklearn() -> None:
    from harness.train.trainer import evaluate

    class Batches(list):
        dataset = type("D", (), {"manifest": __import__("pandas").DataFrame({"method": ["real", "Deepfakes"]})})()

    model = TinyClipModel()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))  # what an overflowed update leaves behind
    batch = {"clip": torch.ones(2, 2, 3, 4, 4), "label": torch.tensor([0.0, 1.0]), "video_idx": torch.tensor([0, 1])}
    with pytest.raises(NonFiniteLoss, match="non-finite while scoring val"):
        evaluate(model, Batches([batch]), nn.BCEWithLogitsLoss(), _cfg(), torch.device("cpu"), prefix="val_")


def test_focal_gamma_below_one_really_gives_nan_gradients() -> None:
    # Why the schema refuses 0 < gamma < 1: torchvision's focal loss on a saturated clip.
    from torchvision.ops import sigmoid_focal_loss

    for gamma, finite in [(0.5, False), (1.0, True), (2.0, True)]:
        logits = torch.tensor([20.0, 2.0], requires_grad=True)
        sigmoid_focal_loss(logits, torch.ones(2), alpha=-1, gamma=gamma, reduction="mean").backward()
        assert bool(torch.isfinite(logits.grad).all()) is finite


def test_scheduler_warms_up_then_follows_cosine_to_min_lr() -> None:
    cfg = config_from_dict(
        {"train": {"epochs": 10}, "optim": {"lr": 1e-3, "scheduler": {"type": "cosine", "warmup_epochs": 3, "min_lr": 1e-5}}}
    )
    model = nn.Linear(2, 1)
    opt = build_optimizer(model, cfg.optim)
    per_epoch = 5
    sched = build_scheduler(opt, cfg.optim, cfg.train.epochs, per_epoch)
    lrs = []
    for update in range(1, cfg.train.epochs * per_epoch + 1):
        sched.step_update(update)
        lrs.append(opt.param_groups[0]["lr"])
    warm = lrs[: 3 * per_epoch]
    cos = lrs[3 * per_epoch :]
    assert all(b > a for a, b in zip(warm, warm[1:])), "warmup must rise"
    assert warm[-1] == pytest.approx(1e-3, rel=1e-6)
    assert all(b <= a for a, b in zip(cos, cos[1:])), "cosine must fall"
    assert cos[-1] == pytest.approx(1e-5, rel=0.05, abs=2e-6)
    # Half-way through the cosine the lr is the mid point of max and min.
    mid = cos[len(cos) // 2]
    assert mid == pytest.approx((1e-3 + 1e-5) / 2, rel=0.1)


def test_constant_lr_has_no_scheduler() -> None:
    cfg = config_from_dict({})
    assert build_scheduler(build_optimizer(nn.Linear(2, 1), cfg.optim), cfg.optim, 5, 3) is None


def test_early_stopping_stops_at_the_right_validation() -> None:
    stop = EarlyStopping(mode="max", patience=3, min_delta=0.01)
    sequence = [0.60, 0.70, 0.705, 0.71, 0.69, 0.70]  # 0.705 and 0.71 are within min_delta of 0.70
    stopped_at = None
    for epoch, value in enumerate(sequence, start=1):
        stop.step(value, epoch)
        if stop.should_stop:
            stopped_at = epoch
            break
    assert (stop.best, stop.best_epoch, stopped_at) == (0.70, 2, 5)


def test_early_stopping_min_mode_and_nan_never_improves() -> None:
    stop = EarlyStopping(mode="min", patience=2)
    assert stop.step(1.0, 1) and stop.step(0.5, 2)
    assert not stop.step(math.nan, 3)
    assert not stop.step(0.6, 4)
    assert stop.should_stop and stop.best_epoch == 2


def test_validation_schedule_includes_the_last_epoch() -> None:
    assert validation_epochs(7, 2) == [2, 4, 6, 7]
    assert validation_epochs(4, 1) == [1, 2, 3, 4]
