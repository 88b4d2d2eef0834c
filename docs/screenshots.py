"""Screenshots of the two UIs README shows, taken by headless Chromium against a real demo sweep.

Usage (from the repository root, after `apt-get install chromium`):
    python docs/screenshots.py --work /tmp/harness-shots --trials 6
It runs `harness sweep --space search_spaces/demo.yaml --trials N` in --work (skipped when that folder
already holds a study) and `harness export-best --register deepfake-detector` (skipped when best.yaml is
there), serves the folder's MLflow store with `mlflow ui` and its journal with
`optuna-dashboard`, both on 127.0.0.1, and writes docs/mlflow_ui.png and docs/optuna_dashboard.png.

Chromium is driven over its DevTools pipe (standard library only), so the page can be acted on
before the shot: the MLflow runs table gets the sweep's child runs expanded and the assistant
panel closed, as a user would have it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WIDTH, HEIGHT = 1600, 900
# Chromium's own network traffic (updates, sync, DNS of Google's hosts) fails on a closed network and slows it.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-pipe"]

# MLflow 3.17's UI picks GenAI or model-training pages from this URL parameter (else the browser's last
# choice, GenAI on a fresh one); the experiment's mlflow.experimentKind tag does not decide it there.
MLFLOW_RUNS_PAGE = "#/experiments/{experiment}/runs?workflowType=machine_learning"
# Expand the sweep's parent run (its child runs are the trials) and close the assistant side panel.
MLFLOW_EXPAND = 'document.querySelector(\'button[data-component-id$="runnamecellrenderer.tsx_46"]\')'
MLFLOW_ACT = f"{MLFLOW_EXPAND}.click(); document.querySelectorAll('button[aria-label=\"Close\"]').forEach(b => b.click())"
MLFLOW_EXPANDED = "document.querySelectorAll('a[href*=\"/runs/\"]').length > 2"
DASHBOARD_READY = "document.querySelectorAll('.js-plotly-plot').length >= 2"


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


class Browser:
    """Headless Chromium spoken to over `--remote-debugging-pipe`: JSON messages ending in NUL on fds 3 and 4."""

    def __init__(self, profile: Path) -> None:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise SystemExit("chromium must be installed (apt-get install chromium), but it is not on PATH")
        shutil.rmtree(profile, ignore_errors=True)
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()

        def wire_fds() -> None:  # Chromium reads commands on fd 3 and answers on fd 4
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.process = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        pass_fds=(3, 4), preexec_fn=wire_fds, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command and return its result, skipping the events that arrive meanwhile."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed its DevTools pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)["result"].get(
            "value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"!!({expression})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the page never satisfied {expression!r} within {timeout:.0f} s")
            time.sleep(0.5)

    def shoot(self, url: str, out: Path, ready: str, act: str | None = None, done: str | None = None,
              settle: float = 3) -> None:
        """Open `url`, wait until `ready` holds, run `act` and wait until `done` holds, then save a PNG as `out`."""
        self.call("Page.navigate", session=True, url=url)
        self.wait_for(ready)
        if act is not None:
            self.evaluate(f"{{ {act}; }} true")
        if done is not None:
            self.wait_for(done)
        time.sleep(settle)  # charts and rows animate in after the data arrives
        png = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        out.write_bytes(base64.b64decode(png))
        print(f"wrote {out} ({out.stat().st_size // 1024} KiB) from {url}")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        self.process.wait(timeout=30)
        os.close(self._to_browser)
        os.close(self._from_browser)


def harness_experiment(work: Path) -> str:
    from mlflow import MlflowClient

    experiment = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_experiment_by_name("harness")
    if experiment is None:
        raise SystemExit(f"{work / 'mlflow.db'} must hold the harness experiment, but it does not")
    return experiment.experiment_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/harness-shots"), help="folder of the demo sweep")
    parser.add_argument("--trials", type=int, default=6, help="demo trials to run when --work has no study yet")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "optuna.journal").exists():
        subprocess.run([str(BIN / "harness"), "sweep", "--space", str(ROOT / "search_spaces/demo.yaml"),
                        "--trials", str(args.trials), "--quiet"], cwd=work, check=True)
    if not (work / "best.yaml").exists():  # README's last step; it fills the best trial's Models column
        subprocess.run([str(BIN / "harness"), "export-best", "--study-name", "demo", "--out", "best.yaml",
                        "--register", "deepfake-detector"], cwd=work, check=True)

    browser = Browser(work / "chromium-profile")
    try:
        port = free_port()
        with serve([str(BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
                    "--port", str(port)], f"http://127.0.0.1:{port}/health", work):
            page = MLFLOW_RUNS_PAGE.format(experiment=harness_experiment(work))
            browser.shoot(f"http://127.0.0.1:{port}/{page}", args.out / "mlflow_ui.png", ready=MLFLOW_EXPAND,
                          act=MLFLOW_ACT, done=MLFLOW_EXPANDED)
        port = free_port()
        with serve([str(BIN / "optuna-dashboard"), "optuna.journal", "--host", "127.0.0.1", "--port", str(port),
                    "--server", "wsgiref"], f"http://127.0.0.1:{port}/api/studies", work):
            browser.shoot(f"http://127.0.0.1:{port}/dashboard/studies/0", args.out / "optuna_dashboard.png",
                          ready=DASHBOARD_READY)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
