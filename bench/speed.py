"""Speed figures of the demo on this machine, one line per figure, each a ratio measured in one run.

  cache     cached vs decord clip loading on the same clips, interleaved (and JPEG/WebP as the
            alternative storage: size per frame and load time)
  loader    the DataLoader's clips/s (cache on/off, 0 or 2 workers) vs the trainer's consumption
            (train-step clips/s on batches already in memory); CPU augmentation cost per clip
  tracking  `fit` wall time with MLflow + Optuna reporting on vs off (interleaved repeats)
  help      `harness --help` start-up time

Usage: python bench/speed.py [--figures cache loader tracking help] [--clips 200] [--epochs 4] [--reps 2]
The 40-trial sweep figure is bench/sweep_prune.py; bench/run_all.sh runs everything.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads stall a busy 2-core box

import numpy as np
import torch
from PIL import Image

from harness.config import load_config
from harness.config.schema import Config
from harness.data.cache import CachedReader, build_cache, frame_cache_for
from harness.data.dataset import build_loaders
from harness.data.index import build_manifest
from harness.data.readers import DecordReader
from harness.data.sampling import clip_span, sample_segment_indices

ROOT = Path(__file__).resolve().parents[1]


def demo_config(overrides: list[str]) -> Config:
    return load_config([ROOT / "baseline.yaml", ROOT / "configs/demo.yaml"],
                       [f"data.root={ROOT / 'data/synthetic'}", *overrides])


def _ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def _clips(manifest, cfg: Config, n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """n training-style clips (path, frame indices) over random videos of the manifest."""
    rng = np.random.default_rng(seed)
    rows = manifest.iloc[rng.integers(0, len(manifest), n)]
    return [(str(r.path), sample_segment_indices(int(r.n_frames), cfg.data.n_segment, clip_span(float(r.fps), cfg.data.clip_seconds), rng))
            for r in rows.itertuples()]


def _encode(frames: np.ndarray, fmt: str) -> list[bytes]:
    out = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format=fmt, quality=90)
        out.append(buf.getvalue())
    return out


def _decode(blobs: list[bytes]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def figure_cache(cfg: Config, n_clips: int) -> None:
    manifest = build_manifest(cfg.data, progress=False)
    stats = build_cache(manifest, cfg.data, progress=False)
    cache = frame_cache_for(cfg.data)
    cached = CachedReader(cache, DecordReader(), dict(zip(manifest["path"], manifest["n_frames"])))
    decord = DecordReader()
    clips = _clips(manifest, cfg, n_clips, seed=0)
    videos = sorted({p for p, _ in clips})
    encoded = {fmt: {v: _encode(np.asarray(cache.load(v)), fmt) for v in videos} for fmt in ("JPEG", "WEBP")}
    size = cfg.data.input_size
    t0 = time.perf_counter()
    for path, idx in clips:  # first pass: opens every memory map once, as a run's first epoch does
        cached.read(path, idx, size)
    first_pass = (time.perf_counter() - t0) / len(clips)
    readers = {
        "decord": lambda path, idx: decord.read(path, idx, size),
        "cache": lambda path, idx: cached.read(path, idx, size),
        "JPEG": lambda path, idx: _decode([encoded["JPEG"][path][i] for i in idx]),
        "WEBP": lambda path, idx: _decode([encoded["WEBP"][path][i] for i in idx]),
    }
    decord.read(*clips[0], size)
    # Interleaved in blocks of one batch (as a loader reads them), so load on the shared machine hits
    # every method alike; per clip = block time / clips, median over blocks.
    block = cfg.train.batch_size
    times: dict[str, list[float]] = {name: [] for name in readers}
    for start in range(0, len(clips) - block + 1, block):
        for name, read in readers.items():
            t0 = time.perf_counter()
            for path, idx in clips[start:start + block]:
                read(path, idx)
            times[name].append((time.perf_counter() - t0) / block)
    # The strictest order: each cached read right after a decord read of the same clip (cold CPU caches).
    strict = []
    for path, idx in clips:
        a = decord.read(path, idx, size)
        t0 = time.perf_counter()
        b = cached.read(path, idx, size)
        strict.append(time.perf_counter() - t0)
        assert np.array_equal(a, b), f"cached frames of {path} differ from decoded ones"
    raw = size * size * 3
    per_frame = {fmt: np.mean([len(b) for v in videos for b in encoded[fmt][v]]) for fmt in ("JPEG", "WEBP")}
    d, c = _ms(times["decord"]), _ms(times["cache"])
    print(f"[1] cache: {len(clips)} clips of {cfg.data.n_segment}x{size}x{size} in blocks of {block}, median per clip: "
          f"decord {d:.2f} ms, memmap cache {c:.3f} ms -> {d / c:.0f}x faster (target >= 30x); frames identical; "
          f"clip by clip right after decord {_ms(strict):.3f} ms -> {d / _ms(strict):.0f}x; "
          f"first read of each video (opens its map) {1000 * first_pass:.3f} ms -> {d / (1000 * first_pass):.0f}x")
    print(f"[1] format: per frame raw uint8 {raw / 1024:.1f} KiB, JPEG q90 {per_frame['JPEG'] / 1024:.1f} KiB "
          f"({raw / per_frame['JPEG']:.1f}x smaller, {_ms(times['JPEG']):.2f} ms/clip = {d / _ms(times['JPEG']):.0f}x decord), "
          f"WebP q90 {per_frame['WEBP'] / 1024:.1f} KiB ({raw / per_frame['WEBP']:.1f}x smaller, {_ms(times['WEBP']):.2f} ms/clip "
          f"= {d / _ms(times['WEBP']):.0f}x decord); synthetic frames compress far better than real faces")
    print(f"[1] cache size: {stats.videos} videos, {stats.bytes / 2**20:.1f} MiB at {size}px "
          f"({stats.bytes / stats.videos / 2**20:.2f} MiB per video); built in {stats.seconds:.1f} s "
          f"({stats.decoded} decoded now) under {cache.dir}")


def _train_step_rate(cfg: Config, batch: dict, steps: int) -> float:
    from harness.model.detector import build_detector
    from harness.train.losses import build_loss

    model = build_detector(cfg.model, cfg.data.n_segment)
    loss_fn = build_loss(cfg.loss, (1, 5))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    model.train()

    def step() -> None:
        logits, _ = model(batch["clip"])
        loss_fn(logits.float(), batch["label"].float()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(batch["label"]) / (time.perf_counter() - t0)


def _loader_rate(cfg: Config, manifest) -> float:
    """Clips/s of the train loader over its second epoch: workers (persistent) and memory maps are warm then."""
    loaders = build_loaders(manifest, cfg.data, cfg.train.batch_size, cfg.seed)
    rate = 0.0
    for epoch in (1, 2):
        loaders.train_dataset.set_epoch(epoch)
        n, t0 = 0, time.perf_counter()
        for batch in loaders.train:
            n += len(batch["label"])
        rate = n / (time.perf_counter() - t0)
    del loaders
    return rate


def figure_loader(cfg: Config, steps: int) -> None:
    manifest = build_manifest(cfg.data, progress=False)
    build_cache(manifest, cfg.data, progress=False)
    loaders = build_loaders(manifest, cfg.data, cfg.train.batch_size, cfg.seed)
    batch = next(iter(loaders.train))
    train = _train_step_rate(cfg, batch, steps)
    rates = {}
    for cache in (True, False):
        for workers in (0, 2):
            c = cfg.model_copy(deep=True)
            c.data.cache, c.data.num_workers = cache, workers
            rates[(cache, workers)] = _loader_rate(c, manifest)
    parts = ", ".join(f"{'cache' if k[0] else 'decord'} w{k[1]} {v:.0f} ({v / train:.1f}x)" for k, v in rates.items())
    print(f"[2] loader (second epoch, {len(loaders.train)} batches) vs trainer: train step consumes {train:.0f} clips/s (batch {cfg.train.batch_size}, "
          f"{cfg.data.input_size}px, {torch.get_num_threads()} torch threads); loader clips/s (x consumption): {parts}")
    from harness.config.schema import AugmentConfig
    from harness.data.augment import ClipAugment

    augment = ClipAugment(AugmentConfig(hflip=True, color_jitter=[0.2, 0.2, 0.2, 0.1]))  # the advice's
    clip = batch["clip"][0]
    augment(clip)
    t = []
    for _ in range(30):
        t0 = time.perf_counter()
        augment(clip)
        t.append(time.perf_counter() - t0)
    print(f"[2] augmentation (hflip + ColorJitter(0.2,0.2,0.2,0.1)) per clip on the CPU: {_ms(t):.2f} ms "
          f"= {_ms(t) / (1000 / train):.2f}x a clip's train step")


def figure_tracking(cfg: Config, epochs: int, reps: int) -> None:
    import optuna

    from harness.sweep.trial import PruningReporter
    from harness.track.mlflow_run import MLflowTracker
    from harness.train.callbacks import Callback, CallbackList
    from harness.train.trainer import fit

    manifest = build_manifest(cfg.data, progress=False)
    build_cache(manifest, cfg.data, progress=False)
    cfg = cfg.model_copy(deep=True)
    cfg.train.epochs = epochs
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    walls: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
        # Creates the database (its schema migrations take seconds) and imports MLflow outside the timing;
        # the tracker opens its store on the first run it makes, so the warm-up must make one.
        warm_up = MLflowTracker(uri, "bench", run_name="warm-up")
        warm_up.ensure_run()
        warm_up.finish()
        for rep in range(reps):
            for mode in ("off", "on"):  # interleaved
                if mode == "on":
                    callbacks = CallbackList([MLflowTracker(uri, "bench", run_name=f"rep{rep}", manifest=manifest),
                                              PruningReporter(study.ask(), "video_auc")])
                else:
                    callbacks = Callback()
                t0 = time.perf_counter()
                fit(cfg, callbacks, run_dir=Path(tmp) / f"{mode}{rep}", manifest=manifest, progress=False)
                walls[mode].append(time.perf_counter() - t0)
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    print(f"[3] tracking: fit of {epochs} epochs, median of {reps}: off {off:.1f} s, MLflow + Optuna on {on:.1f} s "
          f"-> overhead {100 * (on - off) / off:+.1f}% (target <= 5%); per epoch {1000 * (on - off) / epochs:+.0f} ms")


def figure_help(reps: int = 5) -> None:
    harness = Path(sys.executable).with_name("harness")
    command = [str(harness)] if harness.exists() else [sys.executable, "-m", "harness"]

    def wall(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - t0

    python = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(reps))
    help_ = statistics.median(wall([*command, "--help"]) for _ in range(reps))
    print(f"[5] `harness --help`: {help_:.2f} s median of {reps} (bare python start {python:.2f} s, "
          f"{help_ / python:.1f}x) (target < 1 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", nargs="+", default=["cache", "loader", "tracking", "help"],
                        choices=["cache", "loader", "tracking", "help"])
    parser.add_argument("--clips", type=int, default=200, help="clips for the cache figure")
    parser.add_argument("--steps", type=int, default=10, help="train steps timed for the trainer's consumption")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit in the tracking figure")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repeats of the tracking figure")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="override the demo config, e.g. --set data.input_size=224")
    args = parser.parse_args()
    cfg = demo_config(args.overrides)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"demo data {cfg.data.root}, input {cfg.data.input_size}px")
    if "cache" in args.figures:
        figure_cache(cfg, args.clips)
    if "loader" in args.figures:
        figure_loader(cfg, args.steps)
    if "tracking" in args.figures:
        figure_tracking(cfg, args.epochs, args.reps)
    if "help" in args.figures:
        figure_help()


if __name__ == "__main__":
    main()
