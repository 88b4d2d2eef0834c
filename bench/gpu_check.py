"""GPU check, for a machine with CUDA: the trainer's CUDA path and the 8 GB question.

1. `fit` on the demo data with baseline (fp32) and recommended (fp16 autocast + GradScaler,
   accumulation 2) on CUDA: status, validation AUC, clips/s and peak memory per epoch.
2. The user's setting, batch 32 x 8 segments x 224x224 with MobileNetV4-conv-small + TSM:
   training-step clips/s and peak memory, fp32 vs AMP, mean/fold 8 vs attention/fold 4, with
   random uint8 clips already on the GPU (so it measures the model, not the loader).

Usage: python bench/gpu_check.py --data data/synthetic [--steps 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from harness.config import load_config
from harness.model.detector import build_detector
from harness.train.losses import build_loss
from harness.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


def demo_fits(data: Path, epochs: int, device: str) -> None:
    for name in ("baseline", "recommended"):
        cfg = load_config(
            [ROOT / f"{name}.yaml", ROOT / "configs/demo.yaml"],
            [f"data.root={data}", f"train.device={device}", f"train.epochs={epochs}", "train.val_every=1",
             "optim.scheduler.warmup_epochs=1" if name == "recommended" else "seed=0", "train.output_dir=/tmp/gpu_runs"],
        )
        t0 = time.perf_counter()
        result = fit(cfg, run_dir=Path("/tmp/gpu_runs") / name, progress=False)
        print(f"fit {name:<11} amp={cfg.train.amp!s:<5} status={result.status} in {time.perf_counter() - t0:.1f}s; "
              f"val_video_auc={[round(h['val_video_auc'], 3) for h in result.history]} "
              f"test_video_auc={result.test_metrics.get('test_video_auc', float('nan')):.3f}")
        for row in result.train_history:
            print(f"   epoch {row['epoch']}: loss {row['train_loss']:.4f} clips/s {row['clips_per_s']:.1f} "
                  f"peak {row.get('gpu_peak_mem_mb', float('nan')):.0f} MiB")


def step_bench(config: str, amp: bool, batch: int, size: int, steps: int, channels_last: bool, device: str) -> tuple[float, float]:
    cfg = load_config([ROOT / config])
    model = build_detector(cfg.model, cfg.data.n_segment).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, (1, 5)).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")
    x = torch.randint(0, 256, (batch, cfg.data.n_segment, 3, size, size), dtype=torch.uint8, device=device)
    y = (torch.rand(batch, device=device) > 1 / 6).float()

    def step() -> None:
        with torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16, enabled=amp):
            logits, _ = model(x)
            loss = loss_fn(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    cuda = device == "cuda"
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del model, opt, x
    if cuda:
        torch.cuda.empty_cache()
    return batch * steps / seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/synthetic")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name} torch {torch.__version__}")
    torch.backends.cudnn.benchmark = True
    if not args.skip_fit:
        demo_fits(args.data, args.epochs, args.device)
    for config in ("baseline.yaml", "recommended.yaml"):
        for amp in (False, True):
            for cl in (False, True):
                rate, peak = step_bench(config, amp, args.batch, args.size, args.steps, cl, args.device)
                print(f"step {config:<17} batch {args.batch}x8x{args.size} amp={amp!s:<5} channels_last={cl!s:<5} "
                      f"{rate:7.1f} clips/s  peak {peak:5.2f} GiB  fits 8 GB: {'yes' if peak < 7.5 else 'no'}")


if __name__ == "__main__":
    main()
