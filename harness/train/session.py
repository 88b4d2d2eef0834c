"""One run's session: the device, seeded model, loaders, loss and optimizer it trains with, and its whole state.

`build_session` makes it from a config; `Session.state_dict()` is the resumable state saved as
`last.pt`. `fit` drives a session through its epochs; `harness sweep --estimate` and the benches time
its steps without running `fit`.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness.config.schema import Config, TrainConfig
from harness.faults import Faults
from harness.train.callbacks import Callback
from harness.train.early_stopping import EarlyStopping
from harness.train.precision import Precision, autocast_for, choose_precision

__all__ = ["Session", "build_session", "resolve_device", "nvidia_driver", "cpu_fallback_warning", "seed_everything",
           "configure_determinism", "reseed_loader", "rng_state", "set_rng_state", "batching_of"]

log = logging.getLogger(__name__)

NVIDIA_DRIVER_FILES = (Path("/proc/driver/nvidia/version"),)


def resolve_device(name: str) -> torch.device:
    """`train.device` as a torch device; `auto` is CUDA where torch can use it, else CPU.

    Falling back to CPU on a machine with an NVIDIA driver logs a warning that says why and how to
    fix it: a sweep meant for the GPU would otherwise run for days on the CPU without a word. The
    warning is logged once per process, though a sweep resolves the device for every trial.
    """
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    driver = nvidia_driver()
    if driver is not None:
        _warn_once(cpu_fallback_warning(driver, torch.__version__, torch.version.cuda, _cuda_init_error(),
                                        os.environ.get("CUDA_VISIBLE_DEVICES")))
    return torch.device("cpu")


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def nvidia_driver(version_files: Sequence[Path] = NVIDIA_DRIVER_FILES, search_path: str | None = None) -> str | None:
    """What shows an NVIDIA driver here: the first readable version file, else `nvidia-smi` on the path; None if neither.

    `search_path` is searched like $PATH (None: $PATH itself).
    """
    for path in version_files:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        match = re.search(r"Kernel Module\s+(\S+)", text)
        return f"NVIDIA driver {match.group(1)}" if match else f"an NVIDIA driver ({path})"
    smi = shutil.which("nvidia-smi", path=search_path)
    return f"an NVIDIA driver (nvidia-smi at {smi})" if smi else None


def _cuda_init_error() -> str | None:
    """torch's own reason for not using CUDA (e.g. "The NVIDIA driver on your system is too old")."""
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises RuntimeError or AssertionError, depending on the build
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def cpu_fallback_warning(
    driver: str, torch_version: str, cuda_build: str | None, init_error: str | None, visible_devices: str | None
) -> str:
    """One line: `train.device: auto` fell back to CPU although `driver` is there, why, and how to fix it.

    `cuda_build` is `torch.version.cuda` (None: a CPU-only build), `init_error` torch's reason for not
    initialising CUDA, `visible_devices` $CUDA_VISIBLE_DEVICES (None: unset).
    """
    if cuda_build is None:
        why = f"this torch ({torch_version}) is built without CUDA"
        fix = "install torch's CUDA build (README, \"Install on your machine\")"
    elif visible_devices is not None and visible_devices.strip() in ("", "-1"):
        why = f"CUDA_VISIBLE_DEVICES={visible_devices!r} hides every GPU"
        fix = "unset CUDA_VISIBLE_DEVICES or name a GPU in it"
    else:
        shown = "" if visible_devices is None else f", CUDA_VISIBLE_DEVICES={visible_devices!r}"
        reason = (init_error or "no usable GPU").rstrip(".")
        why = f"torch {torch_version} (built for CUDA {cuda_build}{shown}) cannot use it: {reason}"
        fix = ("update the driver, or install a torch built for a CUDA this driver supports (nvidia-smi shows the "
               "highest; README, \"Install on your machine\")")
    return (f"train.device is auto, so this run uses the CPU, although the machine has {driver}: {why}. To train on "
            f"the GPU, {fix}; to train on the CPU on purpose, set train.device: cpu.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_determinism(train: TrainConfig) -> None:
    """Set torch's process-wide kernel choices from `train.deterministic` (and `train.cudnn_benchmark`).

    Every run sets them, on or off, so one run's choice never leaks into the next run of a sweep worker.
    """
    on = train.deterministic
    if on:
        # cuBLAS reads this when it creates its first handle and workspace, i.e. at the process's first
        # cuBLAS call; set later, it has no effect (deterministic mode then warns at each such call).
        # fit sets it before building the model, so only an earlier run in the same process can be first.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = on
    # Benchmark mode times candidate kernels and may pick another one in the next run.
    torch.backends.cudnn.benchmark = train.cudnn_benchmark and not on
    # warn_only: an op without a deterministic kernel warns instead of failing the run.
    torch.use_deterministic_algorithms(on, warn_only=True)


def reseed_loader(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> None:
    """Shuffling depends on (seed, epoch) alone, so a resumed run draws the same batches."""
    generator = getattr(loader.sampler, "generator", None) or loader.generator
    if generator is not None:
        generator.manual_seed(seed * 1_000_003 + epoch)
    dataset = loader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


@dataclass
class Session:
    """Everything one run trains with; `state_dict()` is the whole resumable state, saved as `last.pt`."""

    cfg: Config
    device: torch.device
    loaders: Any
    class_counts: tuple[int, int]
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    faults: Faults = field(default_factory=Faults)
    precision: Precision | None = None  # decided once per run (see fit), then kept across resumes
    epoch: int = 0
    num_updates: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_history: list[dict[str, float]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stop": self.stopper.state_dict(),
            "epoch": self.epoch,
            "num_updates": self.num_updates,
            "history": self.history,
            "train_history": self.train_history,
            **rng_state(self.device),
            "precision": self.precision.state_dict() if self.precision is not None else None,
            "config": self.cfg.model_dump(mode="json"),
            # What an out-of-memory back-off changed, so a resumed run starts at the size that fitted.
            "batching": batching_of(self.cfg),
            "events": self.events,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["early_stop"])
        self.epoch, self.num_updates = state["epoch"], state["num_updates"]
        self.history, self.train_history = list(state["history"]), list(state["train_history"])
        self.events = list(state.get("events", []))
        set_rng_state(state, self.device)
        if state.get("precision"):
            self.precision = Precision(**state["precision"])
        batching = state.get("batching")
        if batching and batching != batching_of(self.cfg):
            self.set_batching(**batching)
        if self.scheduler is not None:
            # The schedule is a pure function of the update count, so it needs no state of its own.
            self.scheduler.step_update(self.num_updates)

    def set_batching(self, batch_size: int, grad_accum_steps: int, max_train_batches: int | None) -> None:
        """Change the micro-batch (and what goes with it) and rebuild the loaders over the same datasets."""
        train = self.cfg.train.model_copy(
            update={"batch_size": batch_size, "grad_accum_steps": grad_accum_steps, "max_train_batches": max_train_batches}
        )
        self.cfg = self.cfg.model_copy(update={"train": train})
        self.loaders = self.loaders.with_batch_size(batch_size)

    def report(self, epoch: int, kind: str, message: str, values: dict[str, float], callbacks: Callback, **detail: Any) -> None:
        """Log an adjustment or a skip, keep it for `last.pt` and the result, and tell the callbacks."""
        log.warning(message)
        self.events.append({"epoch": epoch, "kind": kind, "message": message, **values, **detail})
        callbacks.on_event(epoch, kind, message, values)

    def autocast(self) -> AbstractContextManager:
        """Autocast in the run's chosen precision; before one is chosen, in what train.amp asks for."""
        return autocast_for(self.precision, self.cfg.train.amp, self.device.type)

    def pick_precision(self, force: str | None = None) -> Precision:
        """train.amp's precision for this device and CPU, timing a few steps of a copy of the model where that decides."""
        clip_shape = (min(2, self.cfg.train.batch_size), self.cfg.data.n_segment, 3, self.cfg.data.input_size, self.cfg.data.input_size)
        probe: dict[str, Any] = {}

        def step(precision: Precision) -> None:
            # Built on first use: the copy and clips cost nothing where no probe runs (fp32, CUDA, no native bf16).
            if not probe:
                probe["model"] = copy.deepcopy(self.model).train()  # the run's weights and BN statistics stay untouched
                probe["clips"] = torch.randint(0, 256, clip_shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                probe["labels"] = (torch.arange(clip_shape[0]) % 2).float()
            model = probe["model"]
            with precision.autocast(self.device.type):
                logits, _ = model(probe["clips"].to(self.device))
            self.loss_fn(logits.float(), probe["labels"].to(self.device)).backward()
            model.zero_grad(set_to_none=True)

        # Forked: dropout in the probe must not move the run's random stream.
        with torch.random.fork_rng(devices=[]):
            return choose_precision(self.cfg.train.amp, self.device.type, step, force=force)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every global random stream a run draws from, so a resumed run continues them, not restarts them.

    numpy's state is stored as tensors and ints, which a weights_only load accepts.
    """
    np_state = np.random.get_state(legacy=False)
    version, python_state, gauss_next = random.getstate()
    state = {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python_rng": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` saved; older checkpoints without numpy, Python or CUDA states keep those as seeded."""
    torch.set_rng_state(state["torch_rng"].cpu())
    if "numpy_rng" in state:
        saved = state["numpy_rng"]
        np.random.set_state({
            "bit_generator": "MT19937",
            "state": {"key": saved["key"].cpu().numpy().astype(np.uint32), "pos": saved["pos"]},
            "has_gauss": saved["has_gauss"],
            "gauss": saved["gauss"],
        })
    if "python_rng" in state:
        saved = state["python_rng"]
        random.setstate((saved["version"], tuple(saved["state"]), saved["gauss_next"]))
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])


def batching_of(cfg: Config) -> dict[str, int | None]:
    """The micro-batch settings an out-of-memory back-off changes."""
    t = cfg.train
    return {"batch_size": t.batch_size, "grad_accum_steps": t.grad_accum_steps, "max_train_batches": t.max_train_batches}


def build_session(cfg: Config, manifest: pd.DataFrame | None = None, progress: bool = False) -> tuple[Session, pd.DataFrame]:
    """The run's device, seeded model, loaders, loss, optimizer and schedule; the manifest is built if not given."""
    from harness.data.dataset import build_loaders, class_counts
    from harness.data.index import build_manifest
    from harness.model.detector import build_detector
    from harness.train.losses import build_loss
    from harness.train.optim import build_optimizer, build_scheduler

    device = resolve_device(cfg.train.device)
    configure_determinism(cfg.train)  # before the model reaches the device: see CUBLAS_WORKSPACE_CONFIG there
    seed_everything(cfg.seed)
    # The model first, straight after seeding: its initial weights then depend on the seed and the
    # model config alone, not on what indexing or data loading happen to draw for another data config.
    model = build_detector(cfg.model, cfg.data.n_segment).to(device)
    if manifest is None:
        manifest = build_manifest(cfg.data, progress=progress)
    loaders = build_loaders(manifest, cfg.data, cfg.train.batch_size, cfg.seed, device.type,
                            clips_per_epoch=cfg.train.clips_per_epoch)
    counts = class_counts(manifest, "train")
    if device.type == "cuda" and cfg.train.channels_last:
        # NHWC convolutions: 883 -> 1786 clips/s (fp32) and 751 -> 950 (AMP) at batch 32x8x224 on an H200;
        # CPUs gain nothing from it, so it stays off there.
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    n_batches = len(loaders.train)
    if cfg.train.max_train_batches is not None:
        n_batches = min(n_batches, cfg.train.max_train_batches)
    updates_per_epoch = math.ceil(n_batches / cfg.train.grad_accum_steps)
    session = Session(
        cfg=cfg,
        device=device,
        loaders=loaders,
        class_counts=counts,
        model=model,
        loss_fn=build_loss(cfg.loss, counts).to(device),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.optim, cfg.train.epochs, updates_per_epoch),
        # fp16 needs loss scaling against underflow; bf16 (CPU autocast) and fp32 do not.
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.train.amp and device.type == "cuda"),
        stopper=EarlyStopping(cfg.early_stop.mode, cfg.early_stop.patience, cfg.early_stop.min_delta),
        faults=Faults.from_env(),
    )
    return session, manifest
