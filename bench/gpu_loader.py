"""GPU check of the input pipeline: does the frame cache keep the accelerator fed at the user's setting?

At batch 32 x 8 segments x 224x224 (MobileNetV4-conv-small + TSM, the baseline model), with the
trainer's real loaders and `train_one_epoch`, one line per setting:
  - loader only: clips/s of the decord loader vs the cached loader (same workers, second epoch);
  - training: clips/s and peak GPU memory, decord vs cache x fp32 vs AMP (channels_last on), and
    the cached fp32 run with channels_last off;
  - augmentation (hflip + ColorJitter(0.2, 0.2, 0.2, 0.1)): per clip on one CPU core vs per clip
    on the GPU, as clips/s, to compare with the training rate;
  - feed vs train step (the question of the "feed the GPU" work): the cached loader with the
    recommended augmentation, placed in the loader workers or batched on the device
    (data.augment.run_on), delivering batches to the device, against the train step's own rate on a
    batch already there (fp32 and AMP, channels_last on and off); feed / step >= 1.0 means training
    is model-bound.
The demo videos are 64x64, decoded and upscaled to 224 by decord, so decoding them is cheaper
than decoding real 224+ px FF++ videos: the decord figures are an upper bound on decord's speed.

Usage (about 3 minutes on an H200, after the demo data exists under --data):
  python bench/gpu_loader.py --data data/synthetic [--workers 8] [--batches 20]
Without a GPU it runs on the CPU (--device defaults to cuda only where there is one) and says which
GPU figures it could not measure. Smoke test: python bench/gpu_loader.py --size 64 --batch 4 --batches 2 --workers 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from machine import cpu_description  # bench/machine.py: scripts run from bench/

from harness.config import load_config
from harness.config.schema import AugmentConfig, Config
from harness.data.augment import ClipAugment, apply_clip_params
from harness.data.cache import build_cache
from harness.data.dataset import build_loaders
from harness.data.device_batch import clips_to_device
from harness.data.index import build_manifest
from harness.sweep.estimate import optimizer_step
from harness.train import trainer
from harness.train.session import build_session, reseed_loader

ROOT = Path(__file__).resolve().parents[1]


# The feed settings: where the recommended augmentation runs and where the JPEG cache is decoded.
FEEDS = {"augment+decode in loader": ("loader", "loader"), "augment on device": ("device", "loader"),
         "augment+decode on device": ("device", "device")}


def make_config(args: argparse.Namespace, cache: bool, amp: bool, channels_last: bool, augment_on: str | None = None,
                decode_on: str | None = None) -> Config:
    """The demo data at the user's batch; `augment_on` (loader/device) turns on the recommended augmentation,
    `decode_on` (loader/device) reads a JPEG cache decoded there."""
    augment = ([] if augment_on is None else
               ["data.augment.hflip=true", "data.augment.color_jitter=[0.2,0.2,0.2,0.1]", f"data.augment.run_on={augment_on}"])
    if decode_on is not None:
        augment += ["data.cache_format=jpeg", f"data.decode_on={decode_on}"]
    return load_config(
        [ROOT / "baseline.yaml", ROOT / "configs/demo.yaml"],
        [f"data.root={args.data.resolve()}", f"data.input_size={args.size}", f"data.num_workers={args.workers}",
         f"data.cache={cache}", f"train.batch_size={args.batch}", f"train.amp={amp}", f"train.device={args.device}",
         f"train.channels_last={channels_last}", f"train.max_train_batches={args.batches}", "train.cudnn_benchmark=true",
         *augment],
    )


def loader_rate(cfg: Config, manifest, device: str) -> float:
    """Clips/s of the train loader alone in its second epoch (workers started, maps open), copied to the device,
    with the batch's augmentation applied there when the config puts it on the device."""
    loaders = build_loaders(manifest, cfg.data, cfg.train.batch_size, cfg.seed, device)
    rate = 0.0
    for epoch in (1, 2):
        loaders.train_dataset.set_epoch(epoch)
        n, t0 = 0, time.perf_counter()
        for i, batch in enumerate(loaders.train):
            if i >= cfg.train.max_train_batches:
                break
            clips = clips_to_device(batch, torch.device(device))
            if "augment" in batch:
                apply_clip_params(clips, batch["augment"])
            n += len(batch["label"])
        if device == "cuda":
            torch.cuda.synchronize()
        rate = n / (time.perf_counter() - t0)
    return rate


def train_rate(cfg: Config, manifest) -> tuple[float, float]:
    """Clips/s of `train_one_epoch` in the second epoch, and its peak GPU memory in GiB."""
    # The trainer's own session, so channels_last, cudnn.benchmark and the loaders are what `fit` uses.
    s, _ = build_session(cfg, manifest)
    s.precision = s.pick_precision()
    rate, peak = 0.0, float("nan")
    for epoch in (1, 2):
        reseed_loader(s.loaders.train, cfg.seed, epoch)
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rate = trainer.train_one_epoch(s, epoch, progress=False)["clips_per_s"]
        if s.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
    return rate, peak


def step_rate(cfg: Config, manifest, steps: int) -> float:
    """Clips/s of the train step alone: forward, backward and optimizer step on one batch already on the device."""
    s, _ = build_session(cfg, manifest)
    s.precision = s.pick_precision()
    clips = clips_to_device(next(iter(s.loaders.train)), s.device)
    labels = (torch.arange(len(clips), device=s.device) % 2).float()

    s.model.train()
    for _ in range(2):  # warm-up: cuDNN autotuning, allocator
        optimizer_step(s, clips, labels)
    if s.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer_step(s, clips, labels)
    if s.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(clips) / (time.perf_counter() - t0)


def augment_rates(size: int, device: str) -> tuple[float, float]:
    augment = ClipAugment(AugmentConfig(hflip=True, color_jitter=[0.2, 0.2, 0.2, 0.1]))
    clip = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8)
    rates = []
    for where in ("cpu", device):
        x = clip.to(where)
        augment(x)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            augment(x)
            if where == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rates.append(1 / statistics.median(times))
    return rates[0], rates[1]


def gpu_decode_difference(manifest, args: argparse.Namespace) -> float:
    """Largest pixel difference between one batch's JPEG frames decoded on the GPU and on the CPU."""
    cfg = make_config(args, True, False, True, "device", "device")
    batch = next(iter(build_loaders(manifest, cfg.data, 4, cfg.seed, "cuda").train))
    gpu, cpu = clips_to_device(batch, torch.device("cuda")).cpu(), clips_to_device(batch, torch.device("cpu"))
    return float((gpu.int() - cpu.int()).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic", help="synthetic demo tree (made on first use)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="train batches per epoch (two epochs per setting)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.workers))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"CPU: {cpu_description()}")
    print(f"device: {name}, torch {torch.__version__}, {os.cpu_count()} CPU cores, {args.workers} loader workers; "
          f"batch {args.batch} x 8 x {args.size}x{args.size}, {args.batches} batches per epoch")

    cfg = make_config(args, cache=True, amp=False, channels_last=True)
    manifest = build_manifest(cfg.data, progress=False)
    stats = build_cache(manifest, cfg.data, progress=False)
    print(f"cache: {stats.videos} videos, {stats.bytes / 2**30:.2f} GiB at {args.size}px, built in {stats.seconds:.1f} s "
          f"({stats.decoded} decoded)")

    rates = {cache: loader_rate(make_config(args, cache, False, True), manifest, args.device) for cache in (False, True)}
    print(f"loader only: decord {rates[False]:.0f} clips/s, cache {rates[True]:.0f} clips/s "
          f"({rates[True] / rates[False]:.1f}x)")
    for cache, amp, channels_last in ((False, False, True), (True, False, True), (False, True, True),
                                      (True, True, True), (True, False, False)):
        rate, peak = train_rate(make_config(args, cache, amp, channels_last), manifest)
        print(f"train: {'cache ' if cache else 'decord'} amp={amp!s:<5} channels_last={channels_last!s:<5} "
              f"{rate:7.1f} clips/s  peak {peak:5.2f} GiB")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    cpu, gpu = augment_rates(args.size, args.device)
    print(f"augmentation per clip: CPU (1 core) {cpu:.0f} clips/s, x{args.workers} workers ~{cpu * args.workers:.0f}; "
          f"{args.device} {gpu:.0f} clips/s")

    build_cache(manifest, make_config(args, True, False, True, "device", "device").data, progress=False)  # the JPEG cache
    feed = {name: loader_rate(make_config(args, True, False, True, *where), manifest, args.device)
            for name, where in FEEDS.items()}
    print(f"feed (JPEG q90 cache + recommended augmentation, delivered to {args.device}): "
          + ", ".join(f"{name} {rate:.0f} clips/s" for name, rate in feed.items()))
    for amp, channels_last in ((False, True), (True, True), (False, False), (True, False)):
        rate = step_rate(make_config(args, True, amp, channels_last), manifest, args.batches)
        print(f"train step alone: amp={amp!s:<5} channels_last={channels_last!s:<5} {rate:7.1f} clips/s; feed / step: "
              + ", ".join(f"{name} {feed_rate / rate:.2f}" for name, feed_rate in feed.items()) + " (target >= 1.0)")
    if args.device != "cuda":
        print("not measured here (no CUDA device): every figure above on a GPU, decode_jpeg on the GPU (nvJPEG) and "
              "its pixel difference from the CPU decode, peak GPU memory")
    else:
        print(f"decode_jpeg on {name} vs CPU, same frames: max |difference| {gpu_decode_difference(manifest, args):.0f} "
              f"levels of 255")


if __name__ == "__main__":
    main()
