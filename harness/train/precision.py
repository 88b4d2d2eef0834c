"""Which precision a run computes in: `train.amp` asks, the device decides.

CUDA runs fp16 autocast with loss scaling, as asked. On a CPU, bf16 autocast only pays where the
CPU has bf16 arithmetic (AVX-512 BF16 or AMX); without it bf16 is emulated, and the recommended demo
ran 20x slower than fp32, so AMP falls back to fp32. Even with it, bf16 can lose: on a 2-core KVM Xeon
with AMX and AVX-512 BF16, a MobileNetV4+TSM train step of the demo was 1.2x slower in bf16 on an idle
machine and up to 15x slower (nearly all in convolution backward) while other processes shared its
cores. So a short timed probe of a few train steps, at run start, keeps whichever is faster.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Precision", "requested_precision", "recorded_precision", "label_name", "cpu_flags", "has_native_bf16", "choose_precision", "autocast_for",
           "NATIVE_BF16_FLAGS"]

log = logging.getLogger(__name__)

# /proc/cpuinfo flags of CPUs that compute in bf16 natively (AVX-512 BF16: Cooper Lake, Zen 4; AMX: Sapphire Rapids).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 must beat fp32 by this factor to be kept: on a near tie, fp32's exact arithmetic wins and timing noise cannot flip the choice.
_MARGIN = 1.1
# bf16 stops being timed once it has spent this many times fp32's whole probe: it cannot win from there.
_BUDGET = 3.0


@dataclass(frozen=True)
class Precision:
    """What autocast computes in ("fp32", "bf16" or "fp16"), and why when it is not what train.amp asked."""

    name: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.name not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, but got {self.name!r}")

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    @property
    def label(self) -> str:
        """The name with its reason, e.g. "fp32 (fallback: ...)": what the run's tag shows."""
        return f"{self.name} ({self.note})" if self.note else self.name

    def autocast(self, device_type: str) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)

    def state_dict(self) -> dict[str, str]:
        return asdict(self)


def recorded_precision(run_dir: Path) -> str | None:
    """The precision name ("fp32", "bf16", "fp16") a run wrote to its run_state.json; None without one."""
    state = run_dir / "run_state.json"
    label = json.loads(state.read_text()).get("precision") if state.is_file() else None
    return label_name(label) if label else None


def label_name(label: str) -> str:
    """A `Precision.label` such as "fp32 (fallback: ...)" (also the harness.amp tag) -> its name."""
    return label.split(" ", 1)[0]


def requested_precision(amp: bool, device_type: str) -> Precision:
    """What `train.amp` asks for on this device, unchecked: fp16 on CUDA (fast on consumer GPUs), bf16 elsewhere."""
    if not amp:
        return Precision("fp32")
    return Precision("fp16" if device_type == "cuda" else "bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where the file is missing (other systems)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def has_native_bf16(flags: Iterable[str]) -> bool:
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)


def choose_precision(
    amp: bool,
    device_type: str,
    step: Callable[[Precision], Any],
    flags: Iterable[str] | None = None,
    force: str | None = None,
    probe_steps: int = 2,
) -> Precision:
    """The precision a run should compute in.

    `step(precision)` runs one train step (forward and backward) in that precision; it is only
    called on a CPU with native bf16 when AMP is asked for. `flags` defaults to this machine's CPU
    flags; `force` ("fp32", "bf16", "fp16") skips every check, for tests and benchmarks.
    """
    if force is not None:
        return Precision(force, "forced")
    asked = requested_precision(amp, device_type)
    if asked.name != "bf16" or device_type != "cpu":
        return asked  # fp32, or CUDA's fp16 as configured: nothing to decide
    flags = cpu_flags() if flags is None else frozenset(flags)
    if not has_native_bf16(flags):
        chosen = Precision("fp32", f"fallback: this CPU lacks native bf16 ({' or '.join(sorted(NATIVE_BF16_FLAGS))})")
    else:
        chosen = _faster_of_bf16_and_fp32(step, probe_steps)
    if chosen.name != "bf16":
        log.warning("train.amp: running in %s", chosen.label)
    return chosen


def _faster_of_bf16_and_fp32(step: Callable[[Precision], Any], steps: int) -> Precision:
    fp32, fp32_total = _seconds_per_step(step, Precision("fp32"), steps, budget=math.inf)
    bf16, _ = _seconds_per_step(step, Precision("bf16"), steps, budget=_BUDGET * fp32_total)
    if math.isinf(bf16):
        return Precision("fp32", f"probe: bf16 over {_BUDGET:g}x fp32's {fp32_total * 1000:.0f} ms for {steps + 1} steps")
    timing = f"bf16 {bf16 * 1000:.0f} vs fp32 {fp32 * 1000:.0f} ms/step"
    if bf16 * _MARGIN < fp32:
        return Precision("bf16", f"probe: {timing}")
    return Precision("fp32", f"probe: {timing}")


def _seconds_per_step(step: Callable[[Precision], Any], precision: Precision, steps: int, budget: float) -> tuple[float, float]:
    """(fastest of `steps` timed steps after one warm-up, seconds spent in all); inf once `budget` is spent."""
    start = time.perf_counter()
    step(precision)  # warm-up: allocations and oneDNN's kernel choices happen in the first step
    fastest = math.inf
    for _ in range(steps):
        if time.perf_counter() - start > budget:
            return math.inf, time.perf_counter() - start
        t = time.perf_counter()
        step(precision)
        fastest = min(fastest, time.perf_counter() - t)
    return fastest, time.perf_counter() - start


def autocast_for(precision: Precision | None, amp: bool, device_type: str) -> AbstractContextManager:
    """Autocast in a run's chosen precision; before one is chosen (direct calls), in what `train.amp` asks for."""
    return (precision or requested_precision(amp, device_type)).autocast(device_type)
