"""GPU check of the out-of-memory back-off with a real CUDA out-of-memory error, not an injected one.

The process is capped to `--cap-gib` of GPU memory (torch.cuda.set_per_process_memory_fraction),
so the user's batch of 32 clips x 8 frames at 224x224 (about 4.1 GiB at fp32, measured) cannot fit.
`fit` must then halve the micro-batch and double accumulation until it fits, and finish.
It prints the back-off events, the micro-batch each epoch ran at and its peak memory.

Usage: python bench/gpu_oom.py --data data/synthetic [--cap-gib 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from harness.config import load_config
from harness.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic")
    parser.add_argument("--cap-gib", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_oom.py needs CUDA")

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(args.cap_gib * 2**30 / total, 0)
    out = Path(tempfile.mkdtemp(prefix="gpu_oom_"))
    cfg = load_config(
        [ROOT / "baseline.yaml", ROOT / "configs/demo.yaml"],
        [f"data.root={args.data}", f"data.cache_dir={out / 'cache'}", "data.input_size=224", "data.num_workers=4",
         f"train.batch_size={args.batch}", f"train.amp={str(args.amp).lower()}", "train.epochs=2",
         "train.max_train_batches=4", "train.device=cuda", f"train.output_dir={out}"],
    )
    print(f"{torch.cuda.get_device_name(0)}: capped at {args.cap_gib} GiB of {total / 2**30:.0f} GiB; "
          f"batch {args.batch} x 8 x 224 px, amp={args.amp}")
    start = time.perf_counter()
    result = fit(cfg, run_dir=out / "run", progress=False)
    print(f"status {result.status} in {time.perf_counter() - start:.1f} s: {result.reason}")
    for event in result.events:
        print(f"  event epoch {event['epoch']}: {event['message']}")
    state = torch.load(out / "run" / "last.pt", weights_only=True, map_location="cpu")
    print(f"  final batching: {state['batching']}")
    for row in result.train_history:
        print(f"  epoch {row['epoch']}: peak {row.get('gpu_peak_mem_mb', float('nan')):.0f} MiB, "
              f"{row['clips_per_s']:.0f} clips/s, loss {row['train_loss']:.4f}")


if __name__ == "__main__":
    main()
