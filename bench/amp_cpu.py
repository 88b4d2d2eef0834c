"""AMP on this CPU: the demo's `harness train` with train.amp=true vs false, wall time of each and the ratio.

Prints the CPU model and the flags that decide what CPU autocast costs (avx512_bf16 and amx_bf16 mean
native bf16; amx_tile and amx_int8 come with AMX), then runs the README's demo command
`harness train --config baseline.yaml --config configs/demo.yaml` twice, fp32 first, each in its own
process, with a scratch MLflow store, checkpoints and frame cache in a temporary folder. The cache is
built before either run and outside the timing, so neither run pays for decoding. What AMP computes in
is the trainer's choice (harness/train/precision.py), read back from each run's run_state.json.

Usage: python bench/amp_cpu.py [--epochs 8] [--set key=value ...] [--workdir DIR]
A quick check: python bench/amp_cpu.py --epochs 1   (a minute or two, not the figure)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("baseline.yaml", "configs/demo.yaml")
SHOWN_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
TARGET = 1.1  # amp / fp32 wall time: AMP may cost at most 10 % on a CPU


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first `model name` in /proc/cpuinfo, or what Python's platform module knows elsewhere."""
    import platform

    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """One line: model, cores, each flag that matters for bf16, and whether the trainer counts bf16 as native."""
    from harness.train.precision import cpu_flags, has_native_bf16

    flags = cpu_flags(cpuinfo)
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in SHOWN_FLAGS)
    native = "yes" if has_native_bf16(flags) else "no"
    return f"cpu: {cpu_model(cpuinfo)}, {os.cpu_count()} cores; {shown} (native bf16: {native})"


def harness_command() -> list[str]:
    harness = Path(sys.executable).with_name("harness")
    return [str(harness)] if harness.exists() else [sys.executable, "-m", "harness"]


def scratch_overrides(workdir: Path, epochs: int | None, extra: list[str]) -> list[str]:
    """Checkpoints and frame cache in `workdir`; the demo's own data, which both runs read."""
    overrides = [f"train.output_dir={workdir / 'runs'}", f"data.cache_dir={workdir / 'frame_cache'}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    return [*overrides, *extra]


def _config_args(overrides: list[str]) -> list[str]:
    args = [arg for name in CONFIGS for arg in ("--config", str(ROOT / name))]
    return args + [arg for o in overrides for arg in ("--set", o)]


def cache_command(overrides: list[str]) -> list[str]:
    return [*harness_command(), "cache", *_config_args(overrides), "--quiet"]


def train_command(workdir: Path, amp: bool, overrides: list[str]) -> list[str]:
    name = "amp" if amp else "fp32"
    return [*harness_command(), "train", *_config_args([*overrides, f"train.amp={str(amp).lower()}"]),
            "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--run-dir", str(workdir / "runs" / name), "--quiet"]


def _run(cmd: list[str]) -> float:
    """Wall seconds of one command, run from the repo root (the demo's relative data.root resolves there)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # spinning threads stall a busy 2-core box
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall


def ran_in(run_dir: Path) -> str:
    """The precision label the run recorded, e.g. "bf16 (probe: ...)" or "fp32 (fallback: ...)"."""
    state = run_dir / "run_state.json"
    if not state.is_file():
        return "unknown (no run_state.json)"
    return json.loads(state.read_text()).get("precision") or "fp32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs of both runs (default: the demo's 8)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="another override for both runs, e.g. --set data.input_size=128")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the MLflow store and checkpoints here")
    args = parser.parse_args()

    print(describe_cpu())
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-amp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = scratch_overrides(workdir, args.epochs, args.overrides)
    cache = _run(cache_command(overrides))
    print(f"[amp] frame cache built in {cache:.1f} s (not timed below); work folder {workdir}")
    walls = {}
    for amp in (False, True):
        walls[amp] = _run(train_command(workdir, amp, overrides))
        name = "amp" if amp else "fp32"
        print(f"[amp] train.amp={str(amp).lower():<5} {walls[amp]:6.1f} s wall; ran in {ran_in(workdir / 'runs' / name)}")
    ratio = walls[True] / walls[False]
    verdict = "met" if ratio <= TARGET else "missed"
    print(f"[amp] amp / fp32 = {ratio:.2f}x (target <= {TARGET}x): {verdict}")


if __name__ == "__main__":
    main()
