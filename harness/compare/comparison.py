"""`harness compare` from end to end: check the inputs, run (or find) every run, analyse, write, log.

Everything is checked before the first run starts; a failed run is reported and left out of the
pairs, and the comparison goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.compare.ablation import Arm, Recommendation, ablation_arms, derive_recommendations
from harness.compare.analysis import comparison_frame, contrast_decisions, runs_frame, summary_frame
from harness.compare.runner import RunRecord, load_arms, parent_run, run_arms, slug
from harness.compare.sequential import FIRST_LOOK, UNDECIDED, SequentialDesign
from harness.config.loading import save_config
from harness.errors import HarnessError

__all__ = ["CompareError", "CompareOutcome", "run_comparison", "default_out", "plan_arms", "AUTO", "DETERMINISTIC"]

AUTO = "auto"
# A comparison claims "seed k" means the same run; on a GPU that needs deterministic kernels. The
# user's own --set comes later and may switch it off.
DETERMINISTIC = "train.deterministic=true"


class CompareError(HarnessError):
    """A comparison cannot run as asked (too few seeds or configs, an interval level out of range)."""


@dataclass
class CompareOutcome:
    name: str
    out: Path
    parent_run_id: str
    arms: list[Arm]
    recommendations: list[Recommendation]
    records: list[RunRecord]
    runs: pd.DataFrame
    summary: pd.DataFrame
    comparison: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def n_trained(self) -> int:
        return sum(not r.reused for r in self.records)


def _check(config_paths: Sequence[Path], seeds: int | str, level: float, max_seeds: int, margin: float) -> None:
    problems = []
    if len(config_paths) < 2:
        problems.append(f"--configs needs a baseline and at least one other config, but got {len(config_paths)} file(s)")
    if seeds != AUTO and (not isinstance(seeds, int) or seeds < 2):
        problems.append(f"--seeds must be 'auto' or a whole number >= 2 (a paired comparison needs two seeds), but got {seeds}")
    if seeds == AUTO and max_seeds < FIRST_LOOK:
        problems.append(f"--max-seeds must be >= {FIRST_LOOK} (the first look is at {FIRST_LOOK} seeds), but got {max_seeds}")
    if not 0.0 < margin < 0.5:
        problems.append(f"--margin must lie in (0, 0.5), e.g. 0.01 (AUC), but got {margin}")
    if not 0.5 < level < 1.0:
        problems.append(f"--level must lie in (0.5, 1), e.g. 0.95, but got {level}")
    if problems:
        raise CompareError(problems[0], problems)


def default_out(arms: Sequence[Arm], ablate: bool) -> Path:
    """reports/<first>-vs-<second>[...][-ablate]."""
    return Path("reports") / ("-vs-".join(slug(a.name) for a in arms) + ("-ablate" if ablate else ""))


def plan_arms(
    config_paths: Sequence[Path], overlays: Sequence[Path] = (), overrides: Sequence[str] = (), ablate: bool = False
) -> tuple[list[Arm], list[Recommendation]]:
    """The given configs and, with `ablate`, the baseline plus / recommended minus each recommendation."""
    arms = load_arms(config_paths, overlays, overrides)
    if not ablate:
        return arms, []
    recs = derive_recommendations(arms[0].config, arms[1].config)
    return arms + ablation_arms(arms[0], arms[1], recs), recs


def _write_outputs(outcome: CompareOutcome, settings: dict, level: float) -> list[Path]:
    from harness.compare.plots import plot_auc_by_config, plot_val_curves
    from harness.compare.report import compare_csv, markdown_report

    out = outcome.out
    order = [a.name for a in outcome.arms]
    files = [
        plot_auc_by_config(outcome.runs, order, out / "auc_by_config.png"),
        plot_val_curves(outcome.records, outcome.arms, out / "val_curves.png"),
    ]
    compare_csv(outcome.summary, outcome.comparison).to_csv(out / "compare.csv", index=False)
    outcome.runs.to_csv(out / "runs.csv", index=False)
    synthetic = any(a.config.data.source == "synthetic" for a in outcome.arms)
    text = markdown_report(settings, outcome.summary, outcome.comparison, outcome.recommendations, level, synthetic,
                           [f.name for f in files])
    (out / "report.md").write_text(text)
    return [out / "report.md", out / "compare.csv", out / "runs.csv", *files]


def _undecided(records: Sequence[RunRecord], arms: Sequence[Arm], design: SequentialDesign, level: float,
               margin: float) -> set[str]:
    order = [a.name for a in arms]
    decisions = contrast_decisions(runs_frame(records), order[0], order, design, 1.0 - level, margin)
    return {name for name, d in decisions.items() if d["decision"].verdict == UNDECIDED}


def _run_rounds(arms: Sequence[Arm], design: SequentialDesign, level: float, margin: float,
                run_round: Callable[[Sequence[Arm], int], list[RunRecord]], say: Callable[[str], None]) -> list[RunRecord]:
    """Seed rounds 0, 1, ...: each round gives seed k to the baseline and every config still undecided.

    A contrast decided at a look is frozen (its config gets no more seeds); the rounds end when all
    are decided or at the design's last look.
    """
    records: list[RunRecord] = []
    for k in range(design.looks[-1]):
        pending = {a.name for a in arms[1:]} if k < FIRST_LOOK else _undecided(records, arms, design, level, margin)
        if not pending:
            break
        if k >= FIRST_LOOK:
            say(f"round {k + 1}: {len(pending)} of {len(arms) - 1} contrast(s) undecided; seed {k} for the baseline "
                f"and {', '.join(sorted(pending))}")
        records += run_round([arms[0], *[a for a in arms[1:] if a.name in pending]], k)
    left = _undecided(records, arms, design, level, margin)
    say(f"stopped after {max(r.seed for r in records) + 1} seed round(s): "
        + (f"{len(left)} contrast(s) still undecided at --max-seeds {design.looks[-1]}" if left else "every contrast decided"))
    return records


def _index_data(arms: Sequence[Arm]) -> None:
    """Index each arm's data once before anything is written, so a missing root or split stops the comparison."""
    from harness.data.index import build_manifest

    seen: list[Any] = []
    for arm in arms:
        if arm.config.data not in seen:  # ablated arms mostly share their data
            seen.append(arm.config.data)
            build_manifest(arm.config.data, progress=False)


def run_comparison(
    config_paths: Sequence[Path],
    overlays: Sequence[Path] = (),
    overrides: Sequence[str] = (),
    seeds: int | str = 3,
    ablate: bool = False,
    out: Path | None = None,
    tracking_uri: str | None = None,
    level: float = 0.95,
    say: Callable[[str], None] = print,
    max_seeds: int = 10,
    margin: float = 0.01,
) -> CompareOutcome:
    """Run every config (and, with `ablate`, every single-recommendation variant) on paired seeds.

    `seeds` a number: seeds 0..seeds-1, judged in one look. `seeds="auto"`: seed rounds until every
    contrast is better, worse or equivalent within ±margin, or `max_seeds`, under group-sequential bounds.
    """
    from harness.track.mlflow_run import experiment_id, open_client

    _check(config_paths, seeds, level, max_seeds, margin)
    started = time.perf_counter()
    arms, recs = plan_arms(config_paths, overlays, [DETERMINISTIC, *overrides], ablate)
    _index_data(arms)
    out = Path(out) if out is not None else default_out(arms[: len(config_paths)], ablate)
    name = out.name
    design = SequentialDesign.auto(max_seeds, 1.0 - level, margin) if seeds == AUTO else None
    settings = {
        "name": name, "configs": [str(p) for p in config_paths], "overlays": [str(p) for p in overlays],
        "set": list(overrides), "seeds": seeds if seeds == AUTO else list(range(seeds)), "ablate": ablate,
        "level": level, "margin": margin, **({"max_seeds": max_seeds} if seeds == AUTO else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    for arm in arms:  # every config as it ran, so an ablated one can be trained again by hand
        save_config(arm.config, out / "configs" / f"{slug(arm.name)}.yaml", header=f"{arm.name} (harness compare {name})")

    client = open_client(tracking_uri)
    experiment = arms[0].config.tracking.experiment
    exp_id = experiment_id(client, experiment)
    parent_id = parent_run(client, exp_id, name, out, settings)
    run_root = arms[0].config.train.output_dir / "compare" / name
    precisions: dict[bool, str] = {}  # one autocast precision per train.amp setting for the whole comparison

    def run_round(round_arms: Sequence[Arm], seed: int) -> list[RunRecord]:
        return run_arms(round_arms, [seed], client, experiment, exp_id, parent_id, tracking_uri, run_root, name, say,
                        precisions)

    try:
        if design is None:
            records = run_arms(arms, list(range(seeds)), client, experiment, exp_id, parent_id, tracking_uri,
                               run_root, name, say, precisions)
        else:
            records = _run_rounds(arms, design, level, margin, run_round, say)
    except BaseException:
        client.set_terminated(parent_id, "KILLED")
        raise
    runs = runs_frame(records)
    order = [a.name for a in arms]
    outcome = CompareOutcome(
        name=name, out=out, parent_run_id=parent_id, arms=arms, recommendations=recs, records=records, runs=runs,
        summary=summary_frame(runs, order),
        comparison=comparison_frame(runs, records, order[0], order, level, design=design, margin=margin),
    )
    outcome.files = _write_outputs(outcome, settings, level)
    for path in [*outcome.files, *sorted((out / "configs").glob("*.yaml"))]:
        client.log_artifact(parent_id, str(path), None if path.parent == out else "configs")
    client.set_tag(parent_id, "compare.trained", str(outcome.n_trained))
    client.set_terminated(parent_id, "FINISHED")
    outcome.wall_seconds = time.perf_counter() - started
    return outcome
