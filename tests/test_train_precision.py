"""AMP's precision: CPU flags decide whether bf16 is worth timing, a short probe decides between the two."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from harness.train.precision import Precision, choose_precision, cpu_flags, has_native_bf16

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}
WITH_AMX = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16"}


class TimedStep:
    """A train step that takes a set time per precision, and counts its calls."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.calls: list[str] = []

    def __call__(self, precision: Precision) -> None:
        self.calls.append(precision.name)
        time.sleep(self.seconds[precision.name])


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "absent") == frozenset()  # not Linux: treated as no native bf16


def test_native_bf16_needs_avx512_bf16_or_amx() -> None:
    assert not has_native_bf16(AVX2_ONLY)
    assert has_native_bf16(WITH_AMX)
    assert has_native_bf16(AVX2_ONLY | {"avx512_bf16"})


def test_amp_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_one_warning(caplog) -> None:
    step = TimedStep({"fp32": 0.0, "bf16": 0.0})
    with caplog.at_level(logging.WARNING, logger="harness.train.precision"):
        chosen = choose_precision(True, "cpu", step, flags=AVX2_ONLY)
    assert chosen.name == "fp32" and chosen.dtype is None
    assert chosen.label == "fp32 (fallback: this CPU lacks native bf16 (amx_bf16 or avx512_bf16))"
    assert step.calls == []  # no probe: emulated bf16 is known to be slow
    assert [r.getMessage() for r in caplog.records] == [f"train.amp: running in {chosen.label}"]


def test_the_probe_keeps_bf16_where_it_is_faster() -> None:
    step = TimedStep({"fp32": 0.05, "bf16": 0.005})
    chosen = choose_precision(True, "cpu", step, flags=WITH_AMX)
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16
    assert chosen.note.startswith("probe: bf16 ") and "vs fp32" in chosen.note
    assert step.calls == ["fp32"] * 3 + ["bf16"] * 3  # one warm-up and two timed steps each


def test_the_probe_keeps_fp32_and_stops_timing_a_bf16_that_cannot_win() -> None:
    step = TimedStep({"fp32": 0.01, "bf16": 0.2})
    chosen = choose_precision(True, "cpu", step, flags=WITH_AMX)
    assert chosen.name == "fp32" and chosen.note.startswith("probe: bf16 over 3x fp32's")
    assert step.calls == ["fp32"] * 3 + ["bf16"]  # its warm-up alone spent the budget


def test_no_probe_without_amp_on_cuda_or_when_forced() -> None:
    step = TimedStep({"fp32": 0.0, "bf16": 0.0})
    assert choose_precision(False, "cpu", step, flags=WITH_AMX) == Precision("fp32")
    assert choose_precision(True, "cuda", step, flags=AVX2_ONLY) == Precision("fp16")
    assert choose_precision(True, "cpu", step, flags=WITH_AMX, force="bf16") == Precision("bf16", "forced")
    assert step.calls == []
    with pytest.raises(ValueError, match=r"precision must be one of \['bf16', 'fp16', 'fp32'\], but got 'fp8'"):
        choose_precision(True, "cpu", step, force="fp8")
