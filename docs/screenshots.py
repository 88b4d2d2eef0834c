"""Screenshots of the two UIs README shows, taken by headless Chromium against a real demo sweep.

Usage (from the repository root, after `apt-get install chromium`):
    python docs/screenshots.py --work /tmp/harness-shots --trials 8
It runs `harness sweep --space search_spaces/demo.yaml --trials N` in --work (skipped when that folder
already holds a finished study), serves the folder's MLflow store with `mlflow ui` and its journal with
`optuna-dashboard`, both on 127.0.0.1, and writes docs/mlflow_ui.png and docs/optuna_dashboard.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Chromium's own network traffic (updates, sync, DNS of Google's hosts) fails on a closed network and slows it.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1500,950"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(argv: list[str], url: str, cwd: Path, timeout: float = 120) -> Iterator[None]:
    """Run a server until `url` answers 200, yield, then stop its process group."""
    log = open(cwd / f"{Path(argv[0]).name}.log", "w")
    process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} must answer at {url}, but it did not; see {log.name}")
            time.sleep(0.5)
        yield
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
        log.close()


def shoot(url: str, out: Path, work: Path, wait_ms: int = 12000) -> None:
    """Load `url` in a fresh headless Chromium profile and save the page as `out` (PNG)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium must be installed (apt-get install chromium), but it is not on PATH")
    profile = work / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB) from {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/harness-shots"), help="folder of the demo sweep")
    parser.add_argument("--trials", type=int, default=8, help="demo trials to run when --work has no study yet")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "optuna.journal").exists():
        subprocess.run([str(BIN / "harness"), "sweep", "--space", str(ROOT / "search_spaces/demo.yaml"),
                        "--trials", str(args.trials), "--quiet"], cwd=work, check=True)

    port = free_port()
    with serve([str(BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
                "--port", str(port)], f"http://127.0.0.1:{port}/health", work):
        # Experiment 1 is the harness's (0 is MLflow's Default); the runs table with the sweep's parent run.
        shoot(f"http://127.0.0.1:{port}/#/experiments/1", args.out / "mlflow_ui.png", work)
    port = free_port()
    with serve([str(BIN / "optuna-dashboard"), "optuna.journal", "--host", "127.0.0.1", "--port", str(port),
                "--server", "wsgiref"], f"http://127.0.0.1:{port}/api/studies", work):
        shoot(f"http://127.0.0.1:{port}/dashboard/studies/0", args.out / "optuna_dashboard.png", work)


if __name__ == "__main__":
    main()
