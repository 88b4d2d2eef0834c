"""What a sweep shows: a live progress line, the closing table, and the study's plots in MLflow."""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.sweep.study import FINISHED, SweepSummary, finished_count

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from harness.sweep.trial import TrialOutcome

__all__ = ["TrialBar", "summarise", "log_study_artifacts", "print_summary"]


class TrialBar:
    """A rich progress bar over the target trial count: trial n, origin, epoch, the study's metric, its best so far.

    `metric` only labels the values; which one is best the study decides by its direction. `live: False`
    keeps the line per finished trial and drops the bar, for logs and the --gpus workers, whose output
    is relayed line by line.
    """

    def __init__(self, total: int, enabled: bool = True, metric: str = "value", live: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.live = live
        self.metric = metric
        self.state: dict[str, Any] = {}
        self.best: float | None = None
        # The remaining time is extrapolated from the trials finished since this display started, so a
        # resumed sweep does not count the trials an earlier run finished as instant.
        self._first_done: int | None = None
        self._started = time.monotonic()
        self._done = 0

    def __enter__(self) -> TrialBar:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), disable=not (self.enabled and self.live),
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def set_done(self, done: int) -> None:
        if self._first_done is None:
            self._first_done, self._started = done, time.monotonic()
        self._done = done
        self.progress.update(self.task, completed=min(done, self.total))
        self._render()

    def remaining(self) -> float | None:
        """Seconds left at the pace of the trials finished so far in this display; None before the first."""
        finished_here = self._done - (self._first_done or 0)
        if finished_here <= 0:
            return None
        return (time.monotonic() - self._started) / finished_here * max(0, self.total - self._done)

    def start_trial(self, number: int, origin: str) -> None:
        self.state = {"trial": number, "origin": origin, "epoch": 0, "epochs": "?", "value": None}
        self._render()

    def update(self, **values: Any) -> None:
        self.state.update({k: v for k, v in values.items() if v is not None})
        self._render()

    def end_trial(self, outcome: TrialOutcome, study: optuna.Study) -> None:
        self.best = _best_value(study)  # every worker's trials count, compared by the study's direction
        if self.enabled:
            value = "" if outcome.value is None else f"{self.metric} {outcome.value:.4f} "
            line = (f"trial {self.state['trial']:>3} ({self.state['origin']}): {outcome.state.lower():<8} "
                    f"{value}after {outcome.epochs_run} epochs"
                    f"{'' if outcome.state == 'COMPLETE' else ' - ' + outcome.reason}")
            if self.live:
                self.progress.console.print(line)
            else:  # one unwrapped line, flushed at once, whatever the console width
                print(line, flush=True)
        self.set_done(finished_count(study))

    def _render(self) -> None:
        s = self.state
        value = "-" if s.get("value") is None else f"{s['value']:.3f}"
        best = "-" if self.best is None else f"{self.best:.3f}"
        left = self.remaining()
        eta = "left ?" if left is None else f"left ~{_clock(left)}"
        self.progress.update(
            self.task,
            description=f"{eta} | trial {s.get('trial')} ({s.get('origin')}) epoch {s.get('epoch')}/{s.get('epochs')} "
            f"val {self.metric} {value} | best {best}" if s else eta,
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no completed trial yet
        return None


def summarise(
    study: optuna.Study, metric: str, epochs: int, parent_run_id: str, wall: float, ran_here: int
) -> SweepSummary:
    """The study's trials, best first by its direction, and what the sweep spent on them."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in FINISHED]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    maximize = study.direction.name == "MAXIMIZE"
    best = None
    if complete:
        best = (max if maximize else min)(complete, key=lambda t: t.value)
    rows = []
    for t in sorted(complete, key=lambda t: t.value, reverse=maximize) + [t for t in trials if t.state.name != "COMPLETE"]:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "origin": t.user_attrs.get("enqueued_from", "sampled"),
                metric: t.value,
                "epochs": t.user_attrs.get("epochs_run"),
                "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or "",
                **t.params,
            }
        )
    return SweepSummary(
        study_name=study.study_name,
        metric=metric,
        direction="maximize" if maximize else "minimize",
        n_complete=len(complete),
        n_pruned=sum(t.state.name == "PRUNED" for t in trials),
        n_failed=sum(t.state.name == "FAIL" for t in trials),
        epochs_spent=sum(int(t.user_attrs.get("epochs_run") or 0) for t in finished),
        epochs_unpruned=len(finished) * epochs,
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        parent_run_id=parent_run_id,
        wall_seconds=wall,
        ran_here=ran_here,
        rows=rows,
    )


def log_study_artifacts(client: MlflowClient, parent_run_id: str, study: optuna.Study, summary: SweepSummary) -> None:
    """Trials CSV and Optuna's plots (history, importances, parallel coordinates) on the parent run."""
    import optuna.visualization as vis

    from harness.track.plots import save_html

    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(csv, index=False)
        client.log_artifact(parent_run_id, str(csv))
        plots = {
            "optimization_history.html": vis.plot_optimization_history,
            "param_importances.html": vis.plot_param_importances,
            "parallel_coordinate.html": vis.plot_parallel_coordinate,
            "intermediate_values.html": vis.plot_intermediate_values,
        }
        for name, plot in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fig = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need two completed trials with differing params
            client.log_artifact(parent_run_id, str(save_html(fig, Path(tmp) / name)), "study")
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = {
        "n_complete": summary.n_complete,
        "n_pruned": summary.n_pruned,
        "n_failed": summary.n_failed,
        "epochs_spent": summary.epochs_spent,
        "epochs_unpruned": summary.epochs_unpruned,
    }
    if summary.best_value is not None:
        metrics["best_value"] = summary.best_value
        metrics[f"best_{summary.metric}"] = summary.best_value  # the same value, under the metric's name
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def print_summary(summary: SweepSummary, top: int = 10) -> None:
    """The best `top` completed trials, the enqueued ones, failures with their reasons, and the best trial."""
    from rich.console import Console
    from rich.table import Table

    metric = summary.metric
    order = "highest" if summary.direction == "maximize" else "lowest"
    table = Table(title=f"study {summary.study_name}: top trials by {metric} ({order} first)", title_justify="left")
    shown = [r for r in summary.rows if r["state"] == "COMPLETE"][:top]
    marked = [r for r in summary.rows if r["origin"] != "sampled" and r not in shown]
    fixed_cols = ("trial", "state", "origin", metric, "epochs", "reason")
    # Conditional params (focal gamma) exist only on some rows: the columns are their union.
    params = list(dict.fromkeys(k for r in shown + marked for k in r if k not in fixed_cols))
    for col in ["trial", "origin", metric, "epochs", *params]:
        table.add_column(col, justify="right" if col in (metric, "epochs", "trial") else "left")
    for r in shown + marked:
        value = r.get(metric)
        table.add_row(
            str(r["trial"]),
            r["origin"] if r["state"] == "COMPLETE" else f"{r['origin']} ({r['state'].lower()})",
            "-" if value is None else f"{value:.4f}",
            str(r.get("epochs") or "-"),
            *[_fmt(r.get(p)) for p in params],
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    saved = 1 - summary.epochs_spent / summary.epochs_unpruned if summary.epochs_unpruned else 0.0
    console.print(
        f"{summary.n_complete} complete, {summary.n_pruned} pruned, {summary.n_failed} failed; "
        f"epochs spent {summary.epochs_spent} of {summary.epochs_unpruned} unpruned ({saved:.0%} saved); "
        f"{summary.ran_here} trials ran in this process in {summary.wall_seconds:.0f} s"
    )
    failed = [r for r in summary.rows if r["state"] == "FAIL"]
    for r in failed[-top:]:
        console.print(f"failed: trial {r['trial']}: {r['reason'] or 'no reason recorded'}", markup=False)
    if summary.stop_reason:
        console.print(f"stopped early: {summary.stop_reason}", markup=False)
    console.print(f"MLflow parent run {summary.parent_run_id} holds one child run per trial", markup=False)
    if summary.runs_page is not None:
        serve = f"`{summary.ui_command}`, then open " if summary.ui_command else "open "
        console.print(f"compare them: {serve}{summary.runs_page}", markup=False, soft_wrap=True)
    if summary.best_number is not None:
        console.print(f"best: trial {summary.best_number}, {metric} {summary.best_value:.4f}. "
                      f"Export it with `harness export-best --study-name {summary.study_name} --out best.yaml`")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)
