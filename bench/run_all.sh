#!/usr/bin/env bash
# Every CPU speed figure of the README's Measured section, one line per figure.
#   bench/run_all.sh                   the full set (about 32 min on 2 cores: two 40-trial demo sweeps, two demo trainings)
#   bench/run_all.sh --quick           the same code paths on tiny settings (about 3 min), to check it runs
# Run it on a quiet machine: each figure is a ratio measured within one run, but a busy box still adds noise.
# The GPU figures are bench/gpu_loader.py (and bench/gpu_check.py), on a machine with CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE   # spinning OpenMP threads stall a busy 2-core box
PY=${PYTHON:-.venv/bin/python}
if [[ "${1:-}" == "--quick" ]]; then
  "$PY" bench/speed.py --clips 48 --steps 3 --epochs 1 --reps 1
  "$PY" bench/sweep_prune.py --trials 3 --epochs 2
  "$PY" bench/amp_cpu.py --epochs 1
else
  "$PY" bench/speed.py --clips 400 --steps 20 --epochs 8 --reps 3
  "$PY" bench/speed.py --figures cache --clips 192 --set data.root=data/synthetic224 \
    --set data.synthetic.size=224 --set data.synthetic.n_sources=12 --set data.synthetic.val_sources=2 \
    --set data.synthetic.test_sources=2 --set data.input_size=224
  "$PY" bench/sweep_prune.py --trials 40
  "$PY" bench/amp_cpu.py
fi
