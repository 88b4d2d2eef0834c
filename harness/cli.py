"""The `harness` command: one table of subcommands, each a thin typed function over the library.

Heavy libraries (torch, timm, mlflow, optuna) are imported inside the command that needs
them, so `harness --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.errors import HarnessError
from harness.sweep.liveness import GRACE_PERIOD, HEARTBEAT_INTERVAL
from harness.sweep.retry import STORAGE_RETRY_SECONDS

__all__ = ["main"]

EPILOG = """\
typical session:
  harness sweep --space search_spaces/demo.yaml --trials 40   # Optuna study, every trial an MLflow run
  mlflow ui                                                  # compare trials side by side
  harness export-best --study-name demo --out best.yaml      # the winner as a complete config
  harness train --config best.yaml                           # train it
"""


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config", action="append", type=Path, required=required, default=None, metavar="YAML",
        help="config file; repeat to layer (later files override earlier ones; a file may name `base:`)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="dotted override typed by the schema, e.g. --set optim.lr=3e-4 (repeatable)",
    )


def _add_tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here; artifacts in ./mlruns)",
    )


# --- synth -----------------------------------------------------------------------------------
def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("data/synthetic"), help="folder to write (default data/synthetic)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="synthetic option, e.g. --set n_sources=60 --set artefact_strength=0.3 (see `data.synthetic` in configs)")
    p.add_argument("--force", action="store_true", help="regenerate even when a complete tree exists")


def cmd_synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from harness.config.loading import apply_overrides
    from harness.config.schema import SyntheticConfig
    from harness.data.synth import generate_synthetic
    from harness.errors import ConfigError

    try:
        cfg = SyntheticConfig.model_validate(apply_overrides({}, args.overrides))
    except ValidationError as exc:
        problems = [f"--set {'.'.join(map(str, e['loc']))}: {e['msg']}, but got {e.get('input')!r}" for e in exc.errors()]
        raise ConfigError(problems[0], problems) from None
    if (args.out / ".complete").exists() and not args.force:
        print(f"{args.out} already holds a complete synthetic data set (use --force to regenerate)")
        return 0
    root = generate_synthetic(args.out, cfg)
    print(f"wrote a synthetic FF++-shaped tree to {root}")
    return 0


# --- index -----------------------------------------------------------------------------------
def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="FaceForensics++ folder (original_sequences/, manipulated_sequences/, splits/)")
    p.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    p.add_argument("--methods", nargs="+", default=None,
                   help="manipulation methods to include (default: every method present under manipulated_sequences/)")
    p.add_argument("--compression", default="c23", help="c0, c23 or c40 (default c23)")
    p.add_argument("--backend", default="auto",
                   help="a data.backend value (default auto): auto, decord, pyav or torchcodec index video files, "
                        "frames indexes extracted frame folders")
    p.add_argument("--min-frames", type=int, default=8, help="skip videos with fewer frames")


def cmd_index(args: argparse.Namespace) -> int:
    from typing import get_args

    from harness.config.schema import DataConfig
    from harness.data.index import index_ffpp, write_manifest
    from harness.errors import ConfigError

    # Checked here, against the schema, so --help needs no schema import and the choices cannot drift.
    backends = get_args(DataConfig.model_fields["backend"].annotation)
    if args.backend not in backends:
        raise ConfigError(f"--backend must be one of {', '.join(backends)}, but got {args.backend!r}")

    result = index_ffpp(args.root, args.methods, args.compression, args.backend, args.min_frames)
    write_manifest(result.manifest, args.out)
    counts = result.manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
    print(f"wrote {len(result.manifest)} videos to {args.out} ({len(result.skipped)} skipped)")
    print(counts.rename(columns={0: "real", 1: "fake"}).to_string())
    return 0


# --- cache -----------------------------------------------------------------------------------
def _cache_args(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--workers", type=int, default=1,
                   help="processes building at once, each taking other videos (default 1); face detection and "
                        "decoding keep one core busy each, so use about one per core for a face-crop build")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_cache(args: argparse.Namespace) -> int:
    from harness.config import load_config
    from harness.data.cache import build_cache, frame_cache_for
    from harness.data.index import build_manifest
    from harness.errors import ConfigError

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, but got {args.workers}")
    cfg = load_config(args.config, args.overrides)
    manifest = build_manifest(cfg.data, progress=not args.quiet)
    stats = build_cache(manifest, cfg.data, progress=not args.quiet, workers=args.workers)
    print(f"frame cache {frame_cache_for(cfg.data).dir}: {stats.videos} videos ({stats.decoded} decoded now, "
          f"{stats.reused} already cached), {stats.bytes / 2**20:.1f} MiB, {stats.seconds:.1f} s")
    if stats.face_boxes is not None:
        print(f"face boxes (smoothed, original pixels): {stats.face_boxes}")
    if stats.failed:
        why = "failed to decode or showed no face" if cfg.data.face_crop else "failed to decode"
        print(f"{len(stats.failed)} video(s) {why} and were left out (training skips them too): " + ", ".join(stats.failed))
    if not cfg.data.cache:
        print("note: data.cache is false in this config, so runs with it decode every clip instead of reading this cache")
    return 0


# --- train -----------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    _add_config_args(p, required=False)
    _add_tracking_args(p)
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue a run from its `last` checkpoint: the run folder (runs/NAME) or its MLflow run id")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoint folder (default train.output_dir/<run name>)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _resolve_resume(resume: str, tracking_uri: str | None) -> Path:
    import re

    candidate = Path(resume)
    if candidate.is_dir():
        return candidate
    # Only a run id is looked up: opening a SQLite store that is not there would create it.
    if not re.fullmatch(r"[0-9a-f]{32}", resume):
        raise HarnessError(f"--resume must be a run folder or an MLflow run id, but got {resume!r} (no such folder)")
    from harness.track.mlflow_run import open_client

    try:
        run = open_client(tracking_uri).get_run(resume)
    except Exception:
        raise HarnessError(f"--resume must be a run folder or an MLflow run id, but got {resume!r} (neither exists)") from None
    return Path(run.data.tags["run_dir"])


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from harness.config import load_config
    from harness.data.index import build_manifest
    from harness.train.callbacks import Callback
    from harness.train.trainer import fit

    resume_ckpt, run_id = None, None
    if args.resume:
        run_dir = _resolve_resume(args.resume, args.tracking_uri)
        resume_ckpt = run_dir / "last.pt"
        if not resume_ckpt.exists():
            raise HarnessError(f"{resume_ckpt}: no `last` checkpoint to resume from")
        cfg = load_config([run_dir / "config.yaml", *(args.config or [])], args.overrides)
        sidecar = run_dir / "mlflow_run.json"
        run_id = json.loads(sidecar.read_text())["run_id"] if sidecar.exists() else None
    else:
        if not args.config:
            raise HarnessError("harness train needs --config FILE (e.g. --config baseline.yaml --config configs/demo.yaml) or --resume RUN")
        cfg = load_config(args.config, args.overrides)
        name = cfg.tracking.run_name or time.strftime("train-%Y%m%d-%H%M%S")
        run_dir = args.run_dir or cfg.train.output_dir / name

    # Indexed before the run folder or MLflow run exists, so a missing data root or manifest writes nothing.
    manifest = build_manifest(cfg.data, progress=not args.quiet)
    tracker = None
    if not args.no_track:
        from harness.track.mlflow_run import MLflowTracker

        tracker = MLflowTracker(args.tracking_uri, cfg.tracking.experiment, run_name=run_dir.name, run_id=run_id,
                                manifest=manifest)
    try:
        result = fit(cfg, tracker or Callback(), run_dir=run_dir, resume=resume_ckpt, manifest=manifest,
                     progress=not args.quiet)
    except BaseException as exc:
        # A run that never started is not added to MLflow: the error line already says what went wrong.
        if tracker is not None and tracker.run_id:
            tracker.record_failure(exc)
        raise
    _print_train_summary(result, tracker.run_id if tracker is not None else None)
    return 0 if result.status not in ("nan", "oom") else 1


def _print_train_summary(result, run_id: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {result.run_dir.name}: {result.status}", title_justify="left")
    table.add_column("metric")
    table.add_column("val (best epoch)", justify="right")
    table.add_column("test", justify="right")
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    for name in ("video_auc", "clip_auc", "video_ap", "video_eer", "video_acc", "video_f1", "loss"):
        val, test = best.get(f"val_{name}"), result.test_metrics.get(f"test_{name}")
        table.add_row(name, "-" if val is None else f"{val:.4f}", "-" if test is None else f"{test:.4f}")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print(f"{result.reason}; best epoch {result.best_epoch}; checkpoints in {result.run_dir}")
    if run_id:
        console.print(f"MLflow run {run_id} (see it with `mlflow ui`)")


# --- sweep -----------------------------------------------------------------------------------
def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", type=Path, default=None,
                   help="search-space YAML (see search_spaces/); required, except with --status")
    p.add_argument(
        "--config", action="append", type=Path, default=[], metavar="YAML",
        help="config overlay for every trial, layered over the space's base and overlays (repeatable; later files "
             "win); the space's `fixed` keys and each trial's params still win over it",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="dotted override for every trial, after the --config files, e.g. --set data.num_workers=4 "
             "(repeatable); precedence, lowest first: base, overlays, --config, --set, fixed, params",
    )
    p.add_argument("--timeout", type=_seconds_arg, default=None, metavar="SECONDS",
                   help="start no new trial after this wall time (the running trial finishes; the summary says so; "
                        "exit 0); rerunning resumes the study")
    p.add_argument("--trials", type=int, default=40,
                   help="target total of finished (complete or pruned) trials in the study; rerunning resumes "
                        "and runs only the missing ones (default 40)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: a journal file path (default optuna.journal here; several local workers may "
                        "share it) or a database URL such as postgresql+psycopg2://user@host/db for several machines "
                        "(keep the password in ~/.pgpass; one in the URL is masked in logs and MLflow)")
    p.add_argument("--study-name", default=None, help="default: the space file's name without .yaml")
    p.add_argument("--max-failures", type=int, default=10,
                   help="stop (exit 1) when the study holds this many failed trials (default 10)")
    p.add_argument("--allow-space-change", action="store_true",
                   help="resume the study even though its search space (params, fixed keys, base config values, "
                        "metric, pruner) differs from the one it was created with; without it such a rerun exits 2 "
                        "naming the differences. The change is recorded in the study's user attr space_history")
    p.add_argument("--resume-trials", action=argparse.BooleanOptionalAction, default=True,
                   help="a dead worker's trial is retried once; the retry continues from that trial's `last` "
                        "checkpoint when this machine has it (default on; --no-resume-trials starts it over)")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT_INTERVAL, metavar="SECONDS",
                   help=f"database storages: each running trial beats this often, so workers on other machines "
                        f"can tell a dead one (default {HEARTBEAT_INTERVAL}; 0 turns it off)")
    p.add_argument("--grace-period", type=int, default=GRACE_PERIOD, metavar="SECONDS",
                   help=f"database storages: a trial without a beat for this long is failed and retried "
                        f"(default {GRACE_PERIOD})")
    p.add_argument("--storage-retry-seconds", type=float, default=STORAGE_RETRY_SECONDS, metavar="SECONDS",
                   help=f"database storages: when the database goes away (a restart), each worker waits for it, "
                        f"retrying its storage calls with back-off, for up to this long per outage before it gives "
                        f"up (default {STORAGE_RETRY_SECONDS:.0f}; 0 gives up at once)")
    p.add_argument("--gpus", default=None, metavar="LIST",
                   help="start one worker per GPU on this machine, e.g. --gpus 0,1 (each sees only its GPU through "
                        "CUDA_VISIBLE_DEVICES; they share the storage); their output is prefixed [gpu N]")
    p.add_argument("--estimate", action="store_true",
                   help="time a few training and validation steps of the first trial's config on this machine and "
                        "print the sweep's predicted wall time (unpruned, and pruned as on the demo sweep), per worker "
                        "and for --gpus; runs no trial and writes nothing to the study")
    p.add_argument("--status", action="store_true",
                   help="print a one-screen summary of the study in --storage (trials by state, best, failures, running "
                        "workers, MLflow parent run) and exit; starts and writes nothing; the study is --study-name "
                        "or the --space file's name")
    _add_tracking_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress display and no line per trial")
    p.add_argument("--plain", action="store_true",
                   help="one plain line per finished trial instead of the live progress display (for log files; "
                        "what --gpus workers print)")


def _seconds_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is None or not seconds > 0:  # `not >` refuses nan too
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, but got {text!r}")
    return seconds


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The same sweep for one worker of --gpus: every option but --gpus, one plain line per trial (or --quiet)."""
    argv = ["sweep", "--space", str(args.space), "--trials", str(args.trials), "--max-failures", str(args.max_failures),
            "--heartbeat", str(args.heartbeat), "--grace-period", str(args.grace_period),
            "--storage-retry-seconds", repr(args.storage_retry_seconds),
            "--quiet" if args.quiet else "--plain", "--resume-trials" if args.resume_trials else "--no-resume-trials"]
    for flag, value in (("--storage", args.storage), ("--study-name", args.study_name), ("--tracking-uri", args.tracking_uri)):
        if value is not None:
            argv += [flag, value]
    if args.timeout is not None:
        argv += ["--timeout", repr(args.timeout)]
    for path in args.config:
        argv += ["--config", str(path)]
    for override in args.overrides:
        argv += ["--set", override]
    return argv


def _print_sweep_status(args: argparse.Namespace) -> int:
    """`harness sweep --status`: the study's summary, read from its storage and MLflow; nothing runs or is written."""
    import shutil

    from harness.sweep.status import format_status, read_status

    # The space file itself is not read: only its name, which is the sweep's default study name.
    study_name = args.study_name or (args.space.stem if args.space is not None else None)
    if study_name is None:
        raise HarnessError("--status must know the study: pass --study-name NAME or the sweep's --space FILE, "
                           "but got neither")
    # A tracking server that is down should cost the status a few seconds, not MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    status = read_status(study_name, args.storage, args.tracking_uri, grace_period=args.grace_period)
    print(format_status(status, width=max(60, shutil.get_terminal_size((100, 30)).columns)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.sweep.report import print_summary
    from harness.sweep.space import load_space
    from harness.sweep.storage import check_storage
    from harness.sweep.study import run_sweep

    if args.status:
        return _print_sweep_status(args)
    if args.space is None:
        raise HarnessError("--space must name a search-space YAML (e.g. --space search_spaces/demo.yaml) unless "
                           "--status is given, but got none")
    # A bad space, --config, --set or --storage stops here once, before any worker or trial starts.
    space = load_space(args.space, args.config, args.overrides)
    check_storage(args.storage)
    for key in space.shadowed():
        print(f"note: {key} from --config/--set changes no trial: the space "
              f"{'fixes' if key in space.fixed else 'searches'} it")
    if args.estimate:
        from harness.sweep.estimate import estimate_sweep, format_estimate
        from harness.sweep.workers import parse_gpus

        workers = len(parse_gpus(args.gpus)) if args.gpus else 1
        estimate, cfg = estimate_sweep(space, args.trials, workers)
        print(format_estimate(estimate, cfg))
        return 0

    # An HTTP tracking server makes MLflow print two links per closed run, which would break the
    # progress display; the summary names the parent run instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if args.gpus is not None:
        from harness.sweep.study import check_resumed_space
        from harness.sweep.workers import launch_per_gpu, parse_gpus

        # Checked (and a change let through recorded) once here, so the workers, which get no
        # --allow-space-change, find the space they load already recorded.
        for line in check_resumed_space(space, args.study_name, args.storage, args.allow_space_change):
            print(line)
        return launch_per_gpu(parse_gpus(args.gpus), _worker_argv(args))
    summary = run_sweep(space, args.trials, args.storage, args.study_name, args.tracking_uri,
                        args.max_failures, progress=False if args.quiet else "lines" if args.plain else True,
                        resume_trials=args.resume_trials, heartbeat_interval=args.heartbeat,
                        grace_period=args.grace_period, timeout=args.timeout,
                        allow_space_change=args.allow_space_change, storage_retry_seconds=args.storage_retry_seconds)
    print_summary(summary)
    # A --timeout stop was asked for; a --max-failures stop is a failure.
    return 1 if summary.stop_reason and not summary.timed_out else 0


# --- export-best -----------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study-name", required=True, help="the study to read (the sweep's --study-name or space file name)")
    p.add_argument("--storage", default=None, help="Optuna storage the sweep used (default optuna.journal here)")
    p.add_argument("--out", type=Path, default=Path("best.yaml"), help="config file to write (default best.yaml)")
    p.add_argument("--evaluate", action="store_true",
                   help="then score the best trial's best checkpoint on the test split, once (sweep trials score "
                        "validation only), and log the test_* metrics to that trial's MLflow run")
    p.add_argument("--log-model", action="store_true",
                   help="also log the best trial's best checkpoint as an MLflow model (artifact `model` of that "
                        "trial's run: exported graph, signature, input example), named in the YAML header")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="log it as --log-model does and register it in the MLflow Model Registry as a new "
                        "version of NAME (created on first use)")
    _add_tracking_args(p)


def cmd_export_best(args: argparse.Namespace) -> int:
    from harness.sweep.export import evaluate_best, export_best, locate_best_checkpoint, log_best_model

    log_model = args.log_model or args.register is not None
    if args.register is not None:
        from harness.track.model_log import check_model_name

        check_model_name(args.register)
    # Found first, so a missing checkpoint stops the command before it writes anything; scored before the
    # YAML is written, so test data that cannot be read stops it too.
    purpose = "score the test split" if args.evaluate else "log it as an MLflow model"
    target = (locate_best_checkpoint(args.study_name, args.storage, args.tracking_uri, purpose)
              if args.evaluate or log_model else None)
    score = evaluate_best(target, args.tracking_uri) if args.evaluate else None
    logged, registered = log_best_model(target, args.tracking_uri, args.register) if log_model else (None, None)
    model_uri = registered.uri if registered else logged.uri if logged else None
    path, number, value = export_best(args.study_name, args.out, args.storage, model_uri)
    print(f"wrote {path}: trial {number} (validation score {value:.4f}); train it with `harness train --config {path}`")
    if score is not None:
        shown = ", ".join(f"{name} {score.metrics[f'test_{name}']:.4f}" for name in _TEST_SUMMARY
                          if f"test_{name}" in score.metrics)
        print(f"test split, trial {number}'s best checkpoint (epoch {score.epoch}, {score.precision}): {shown}; "
              f"logged to MLflow run {target.run_id}")
    if logged is not None:
        print(f"MLflow model {logged.uri}: trial {number}'s best checkpoint, logged in {logged.seconds:.1f} s")
    if registered is not None:
        print(f"registered {registered.name} version {registered.version}: {registered.uri}")
    return 0


_TEST_SUMMARY = ("video_auc", "clip_auc", "video_ap", "video_eer", "video_acc", "video_f1", "loss")


# --- compare ---------------------------------------------------------------------------------
def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", type=Path, required=True, metavar="YAML",
                   help="the configs to compare, baseline first (e.g. baseline.yaml recommended.yaml best.yaml)")
    p.add_argument("--config", action="append", type=Path, default=[], metavar="YAML", dest="overlays",
                   help="overlay layered onto every config, e.g. configs/demo.yaml (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override applied to every config after the overlays, e.g. --set train.epochs=4 (repeatable)")
    p.add_argument("--seeds", type=_seeds_arg, default=5, metavar="N|auto",
                   help="paired seeds 0..N-1, the same for every config, judged once (default 5); 'auto': seed rounds "
                        "until every contrast is better, worse or equivalent within --margin, or --max-seeds, with "
                        "group-sequential bounds so the repeated looks keep the error rate")
    p.add_argument("--max-seeds", type=int, default=10, help="with --seeds auto: the most seed rounds (default 10)")
    p.add_argument("--margin", type=float, default=0.01,
                   help="the smallest test video AUC difference that matters: within ±margin two configs are "
                        "'equivalent' (default 0.01)")
    p.add_argument("--ablate", action="store_true",
                   help="also run the baseline with each recommendation alone and the second config without each "
                        "alone; recommendations are the differing keys of the first two configs, grouped")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default reports/<first>-vs-<second>...); rerunning with the same --out "
                        "logs to the same MLflow compare run")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of intervals and tests (default 0.95)")
    _add_tracking_args(p)
    p.add_argument("--quiet", action="store_true", help="no line per run")


def _seeds_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number or 'auto', but got {text!r}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare.comparison import run_comparison
    from harness.compare.report import print_table

    # One download bar per reused run would bury the one line per run that says what happened.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    outcome = run_comparison(args.configs, args.overlays, args.overrides, args.seeds, args.ablate, args.out,
                             args.tracking_uri, args.level, say=(lambda _: None) if args.quiet else print,
                             max_seeds=args.max_seeds, margin=args.margin)
    seeds = f"auto, at most {args.max_seeds}" if args.seeds == "auto" else str(args.seeds)
    print_table(outcome.summary, outcome.comparison,
                f"compare {outcome.name}: test video AUC, seeds {seeds} (paired; level {args.level}; "
                f"margin ±{args.margin})")
    print(f"{outcome.n_trained} run(s) trained, {len(outcome.records) - outcome.n_trained} reused, in "
          f"{outcome.wall_seconds:.0f} s; report in {outcome.out / 'report.md'}; MLflow run {outcome.parent_run_id}")
    return 0


# --- sync ------------------------------------------------------------------------------------
def _sync_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", nargs="?", type=Path, default=Path("runs"), metavar="FOLDER",
                   help="where to look: every run folder below it with queued MLflow writes (mlflow_outbox.jsonl); "
                        "default runs, train.output_dir's default")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI to deliver to (default: each outbox's own server, recorded when its "
                        "first write was queued; else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")


def cmd_sync(args: argparse.Namespace) -> int:
    from harness.track.outbox import Outbox, deliver_pending, unreachable_reason

    if not args.folder.is_dir():
        raise HarnessError(f"FOLDER must be a folder of runs (e.g. runs or runs/sweeps/STUDY), but got {str(args.folder)!r} "
                           f"(no such folder)")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # two links per closed run otherwise
    deliveries = deliver_pending(args.folder, args.tracking_uri, announce=False)
    for delivery in deliveries:
        line = f"{delivery.folder}: delivered {delivery.delivered} queued write(s)"
        if delivery.rejected:
            line += f", {delivery.rejected} refused by MLflow (kept in {Outbox(delivery.folder).rejected.name})"
        if delivery.left:
            line += f", {delivery.left} left: MLflow unreachable ({unreachable_reason(delivery.error)})"
        print(line)
    left = sum(d.left for d in deliveries)
    if not deliveries:
        print(f"nothing to deliver: no queued MLflow writes under {args.folder}")
    elif left:
        print(f"{left} write(s) still queued; rerun `harness sync` once the tracking server is back")
    return 1 if left else 0


# --- keys ------------------------------------------------------------------------------------
def _keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("section", nargs="?", default="",
                   help="only the keys under this section or this one key, e.g. optim or train.amp (default: all)")


def cmd_keys(args: argparse.Namespace) -> int:
    from harness.config.keys import default_text, describe_type, field_of, key_problem, known_keys, leaf_keys
    from harness.errors import ConfigError

    section = args.section
    if section and not known_keys(section) and key_problem(section) is not None:
        raise ConfigError(key_problem(section))
    keys = leaf_keys(section) if not section or known_keys(section) else [section]
    rows = [(key, describe_type(key), default_text(key), field_of(key).description or "") for key in keys]
    # Long types and defaults (a list of methods) overflow their column rather than widen it for every row.
    widths = [max(len(r[0]) for r in rows), min(28, max(len(r[1]) for r in rows)), min(12, max(len(r[2]) for r in rows))]
    for row in [("key", "type", "default", "description"), *rows]:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[3]]).rstrip())
    return 0


# --- completion ------------------------------------------------------------------------------
_SHELLS = ("bash", "zsh")
_SHELL_METAVAR = "{" + ",".join(_SHELLS) + "}"


def _completion_args(p: argparse.ArgumentParser) -> None:
    # Checked in the command, not by argparse `choices`, so a wrong name is one error line and exit 2.
    p.add_argument("shell", metavar=_SHELL_METAVAR,
                   help="bash: `eval \"$(harness completion bash)\"` in ~/.bashrc; zsh: `harness completion zsh > "
                        "~/.zfunc/_harness` with ~/.zfunc in $fpath before compinit")


def _add_completion_hints(parser: argparse.ArgumentParser, files: dict[str, str]) -> None:
    """File names for every option whose value is a path, and the shells for `completion`, in every subcommand."""
    for action in parser._actions:
        if action.type is Path:
            action.complete = files  # read by shtab
        if action.metavar == _SHELL_METAVAR:
            action.choices = _SHELLS  # completed, though checked in the command
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_completion_hints(sub, files)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    if args.shell not in _SHELLS:
        raise HarnessError(f"the shell must be one of {', '.join(_SHELLS)}, but got {args.shell!r}")
    # Written from the parser itself, so every subcommand and flag is there and none can drift.
    parser = build_parser()
    _add_completion_hints(parser, shtab.FILE)
    print(shtab.complete(parser, shell=args.shell))
    return 0


# --- the table -------------------------------------------------------------------------------
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "synth": ("write the embedded synthetic FF++-shaped data set", _synth_args, cmd_synth),
    "index": ("index a FaceForensics++ tree into a manifest CSV", _index_args, cmd_index),
    "cache": ("decode every video of a config's data once into the frame cache that runs and sweeps share", _cache_args, cmd_cache),
    "train": ("train one config, logged to MLflow", _train_args, cmd_train),
    "sweep": ("run (or resume) an Optuna study over config keys; every trial an MLflow run", _sweep_args, cmd_sweep),
    "export-best": ("write the study's best trial as a complete config YAML", _export_args, cmd_export_best),
    "compare": ("run configs on paired seeds (optionally ablating each recommendation) and test the differences",
                _compare_args, cmd_compare),
    "sync": ("deliver MLflow writes queued while the tracking server was unreachable", _sync_args, cmd_sync),
    "keys": ("list every config key with its type, default and description", _keys_args, cmd_keys),
    "completion": ("print a bash or zsh completion script for harness", _completion_args, cmd_completion),
}


class _VersionAction(argparse.Action):
    """`harness --version`: the installed package's version, looked up only when asked (it costs a metadata read)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"harness {version('harness')}")
        except PackageNotFoundError:
            print("harness (version unknown: not installed; `pip install -e .` installs it)")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Measure whether tuning advice helps a TSM-MobileNetV4 deepfake detector: "
        "Optuna sweeps, MLflow tracking, exported configs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        add_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that spin while waiting turn a busy 2-core machine (a second sweep worker, a
    # data loader) into a 20x slowdown; passive waiting costs little when the machine is idle.
    # It must be set before torch loads libgomp, which happens lazily inside the commands.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except HarnessError as exc:
        for line in exc.problems:
            print(f"harness {args.command}: error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"harness {args.command}: interrupted", file=sys.stderr)
        return 130
