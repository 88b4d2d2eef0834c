"""Figure 4: the demo sweep pruned vs unpruned: epochs spent, best video AUC, wall time, decodes.

Runs `run_sweep` on search_spaces/demo.yaml twice in a fresh folder (own journal, MLflow store and
checkpoints): as shipped (its pruner) and with pruning off (`pruner: {type: none}`), same TPE seed.
Both share a fresh frame cache in that folder: the first sweep decodes each video once, the second none.

Usage: python bench/sweep_prune.py [--trials 40] [--epochs 8] [--pruner '{type: median, n_startup_trials: 3}']
A quick check: python bench/sweep_prune.py --trials 3 --epochs 2   (minutes, not the figure)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads stall a busy 2-core box

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPACE = ROOT / "search_spaces/demo.yaml"


def write_space(folder: Path, name: str, pruner: dict, fixed: dict) -> Path:
    """demo.yaml with absolute paths, another pruner and extra fixed keys, written to `folder/name.yaml`."""
    space = yaml.safe_load(DEMO_SPACE.read_text())
    here = DEMO_SPACE.parent
    space["base"] = [str((here / p).resolve()) for p in space.get("base", [])]
    space["overlays"] = [str((here / p).resolve()) for p in space.get("overlays", [])]
    space["study"]["enqueue"] = [str((here / p).resolve()) for p in space["study"].get("enqueue", [])]
    space["study"]["pruner"] = pruner
    space["fixed"] = {**space.get("fixed", {}), **fixed}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs for every trial (default: the demo's 8)")
    parser.add_argument("--pruner", type=yaml.safe_load, default=None,
                        help="pruner of the pruned sweep as YAML (default: the one in search_spaces/demo.yaml)")
    parser.add_argument("--only", choices=["pruned", "unpruned"], default=None, help="run one of the two sweeps")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the journals and MLflow store here")
    args = parser.parse_args()

    from harness.sweep.study import run_sweep
    from harness.track.mlflow_run import open_client

    shipped = yaml.safe_load(DEMO_SPACE.read_text())["study"]["pruner"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sweep-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # A fresh frame cache: the pruned sweep must decode each video once, the unpruned one none.
    fixed = {"data.root": str(ROOT / "data/synthetic"), "data.cache_dir": str(workdir / "frame_cache"),
             "train.output_dir": str(workdir / "runs")}
    if args.epochs is not None:
        fixed["train.epochs"] = args.epochs
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    print(f"machine: {os.cpu_count()} CPU cores; {args.trials} trials per sweep; work folder {workdir}")
    results = {}
    for name, pruner in (("pruned", args.pruner or shipped), ("unpruned", {"type": "none"})):
        if args.only not in (None, name):
            continue
        space = write_space(workdir, name, pruner, fixed)
        t0 = time.perf_counter()
        summary = run_sweep(space, args.trials, storage=str(workdir / f"{name}.journal"), study_name=f"bench-{name}",
                            tracking_uri=uri, progress=False)
        wall = time.perf_counter() - t0
        metrics = open_client(uri).get_run(summary.parent_run_id).data.metrics
        results[name] = summary
        print(f"[4] {name:<8} pruner {pruner}: {wall / 60:.1f} min wall, {summary.n_complete} complete, "
              f"{summary.n_pruned} pruned, {summary.n_failed} failed; {summary.epochs_spent} of "
              f"{summary.epochs_unpruned} epochs; best val video AUC {summary.best_value:.4f} (trial {summary.best_number}); "
              f"video decodes {metrics.get('cache_decodes', 0):.0f}, at most "
              f"{metrics.get('cache_max_decodes_per_video', 0):.0f} per video")
    if len(results) == 2:
        p, u = results["pruned"], results["unpruned"]
        print(f"[4] pruned / unpruned: {p.epochs_spent} / {u.epochs_spent} epochs = {100 * p.epochs_spent / u.epochs_spent:.0f}% "
              f"(target <= 40%); best video AUC {p.best_value:.4f} vs {u.best_value:.4f}, "
              f"difference {p.best_value - u.best_value:+.4f} (target within 0.01); pruned sweep "
              f"{p.wall_seconds / 60:.1f} min (target <= 10 min on 2 cores)")


if __name__ == "__main__":
    main()
