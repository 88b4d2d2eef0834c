"""`harness sweep --gpus 0,1`: one worker process per GPU on this machine, all on one study.

Each worker is the same `harness sweep` command (without --gpus) with `CUDA_VISIBLE_DEVICES` set
to its GPU, so `train.device: auto` picks that GPU as cuda:0. The workers coordinate through the
study's storage exactly as separately started workers do; this only saves typing N commands. Each
prints one plain line per finished trial (`--plain`; a live display cannot be relayed), which shows
here as it comes, prefixed `[gpu N]`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, NamedTuple

from harness.errors import HarnessError

__all__ = ["parse_gpus", "launch_per_gpu", "Worker", "run_workers", "combined_exit_code"]

# Each --gpus worker's position among the workers started together: it gives the worker a sampler seed
# of its own (study._worker_seed).
WORKER_INDEX_ENV = "HARNESS_WORKER_INDEX"

_WAIT_AFTER_INTERRUPT = 120  # seconds a worker gets to record its trial as interrupted


def parse_gpus(spec: str) -> list[str]:
    """`--gpus 0,1` as a list of distinct GPU indices."""
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise HarnessError(f"--gpus must list distinct GPU indices such as 0,1, but got {spec!r}")
    return gpus


class Worker(NamedTuple):
    label: str  # prefixes each line of its output
    command: Sequence[str]
    env: Mapping[str, str]


def _relay(stream: IO[str], prefix: str, lock: threading.Lock) -> None:
    """Copy a worker's output here as it comes, each line whole and prefixed (the lock keeps workers' lines apart)."""
    for line in stream:
        text = line.rstrip("\n")  # the last line may come without one
        with lock:
            sys.stdout.write(f"{prefix} {text}\n")
            sys.stdout.flush()


def combined_exit_code(codes: Sequence[int]) -> int:
    """0 when every worker exited 0, else the worst failure, a death by signal N counting as 128 + N.

    Popen reports a worker killed by a signal as -N; taking the plain maximum would let one such
    worker beside a successful one (0) pass for success.
    """
    as_shell = [128 - code if code < 0 else code for code in codes]
    return max(as_shell, default=0)


def run_workers(workers: Sequence[Worker]) -> int:
    """Start every worker's process, relay their output line by line, and return `combined_exit_code`."""
    procs: list[subprocess.Popen] = []
    relays: list[threading.Thread] = []
    lock = threading.Lock()
    for worker in workers:
        proc = subprocess.Popen(
            list(worker.command), env=dict(worker.env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1,
        )
        procs.append(proc)
        relay = threading.Thread(target=_relay, args=(proc.stdout, f"[{worker.label}]", lock), daemon=True)
        relay.start()
        relays.append(relay)
    try:
        codes = [proc.wait() for proc in procs]
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the workers too; a signal sent to this process alone is passed on.
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=_WAIT_AFTER_INTERRUPT)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        for relay in relays:
            relay.join(timeout=5)
    return combined_exit_code(codes)


def launch_per_gpu(gpus: Sequence[str], argv: Sequence[str]) -> int:
    """Start one `harness` worker per GPU with `argv`, relay their output, and return the worst exit code.

    Non-zero when any worker failed or was killed (see `combined_exit_code`).
    """
    print(f"starting {len(gpus)} sweep workers, one per GPU ({', '.join(gpus)})")
    return run_workers([
        Worker(f"gpu {gpu}", [sys.executable, "-m", "harness", *argv],
               {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1", WORKER_INDEX_ENV: str(index)})
        for index, gpu in enumerate(gpus)
    ])
