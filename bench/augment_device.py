"""Augmentation throughput: per clip as the loader does it vs batched as the trainer does it on its device.

hflip + ColorJitter(0.2, 0.2, 0.2, 0.1) on uint8 batches of 32 x 8 x 3 x 224 x 224, one line each:
  - loader: `ClipAugment` clip by clip on one CPU thread (one loader worker's share);
  - batched on the CPU with all its threads, and on CUDA when there is a device;
both as clips/s, to compare with the rate the model trains at.

Usage: python bench/augment_device.py [--batch 32] [--segments 8] [--size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import cpu_description

from harness.config.schema import AugmentConfig
from harness.data.augment import ClipAugment, apply_clip_params, draw_clip_params

CFG = AugmentConfig(hflip=True, color_jitter=[0.2, 0.2, 0.2, 0.1])


def loader_rate(clips: torch.Tensor, repeats: int) -> float:
    augment, threads = ClipAugment(CFG), torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker augments its clip on one core
    try:
        start = time.perf_counter()
        for _ in range(repeats):
            for clip in clips:
                augment(clip)
        return repeats * len(clips) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def batched_rate(clips: torch.Tensor, params: torch.Tensor, repeats: int) -> float:
    sync = torch.cuda.synchronize if clips.is_cuda else (lambda: None)
    apply_clip_params(clips, params)  # warm-up: kernels, allocator
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        apply_clip_params(clips, params)
    sync()
    return repeats * len(clips) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (args.batch, args.segments, 3, args.size, args.size)
    clips = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = torch.stack([draw_clip_params(CFG, torch.Generator().manual_seed(b)) for b in range(args.batch)])
    print(f"batch {' x '.join(map(str, shape))} uint8, hflip + ColorJitter{tuple(CFG.color_jitter)}")
    print(f"CPU: {cpu_description()}")
    print(f"  loader, per clip, 1 thread:   {loader_rate(clips, args.repeats):8.1f} clips/s")
    print(f"  batched, {torch.get_num_threads()} threads:          {batched_rate(clips, params, args.repeats):8.1f} clips/s")
    if torch.cuda.is_available():
        rate = batched_rate(clips.cuda(), params, args.repeats)
        print(f"CUDA: {torch.cuda.get_device_name()}\n  batched:                      {rate:8.1f} clips/s")
    else:
        print("CUDA: not measured (no CUDA device)")


if __name__ == "__main__":
    main()
