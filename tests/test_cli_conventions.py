"""CLI conventions: --version, shell completion, the key listing, `harness sweep --config/--set/--timeout`,
the `--gpus` workers' prefixed lines, and the warning when `train.device: auto` falls back to CPU."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from harness.cli import COMMANDS, _worker_argv, build_parser, main
from harness.config.keys import leaf_keys
from helpers import ROOT, write_space

DEMO = ROOT / "search_spaces" / "demo.yaml"


def _option_strings(parser) -> dict[str, list[str]]:
    """Every subcommand's flags, read from the parser the scripts are written from."""
    subcommands = parser._subparsers._group_actions[0].choices
    return {name: [s for a in sub._actions for s in a.option_strings] for name, sub in subcommands.items()}


# --- --version, completion, keys ---------------------------------------------------------------
def test_version_prints_the_installed_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"harness {version('harness')}\n"


def test_bash_completion_names_every_subcommand_and_flag_and_completes_them(tmp_path: Path, capsys) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for name, flags in _option_strings(build_parser()).items():
        assert name in script
        assert all(flag in script for flag in flags), name
    path = tmp_path / "harness.bash"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    # What bash offers after `harness sw<TAB>`, `harness sweep --ti<TAB>` and `harness completion <TAB>`.
    probe = (
        f"source {path}\n"
        "ask() { COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); COMP_LINE=\"$*\"; COMP_POINT=${#COMP_LINE};"
        " _shtab_harness harness \"${@: -1}\" \"${@: -2:1}\"; echo \"${COMPREPLY[*]}\"; }\n"
        "ask harness sw\nask harness sweep --ti\nask harness completion ''\n"
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["sweep", "--timeout", "bash zsh"]


def test_zsh_completion_names_every_subcommand_and_flag(tmp_path: Path, capsys) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef harness")
    for name, flags in _option_strings(build_parser()).items():
        assert f"{name}:" in script
        assert all(flag in script for flag in flags if flag.startswith("--")), name
    assert '"*--config[' in script and ":_files" in script  # path options complete file names
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed here: the script's syntax was not checked")
    (tmp_path / "_harness").write_text(script)
    subprocess.run(["zsh", "-n", str(tmp_path / "_harness")], check=True)


def test_completion_lists_every_command_of_the_table() -> None:
    assert set(_option_strings(build_parser())) == set(COMMANDS)


def test_keys_lists_every_config_key_with_its_type_default_and_description(capsys) -> None:
    assert main(["keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["key", "type", "default", "description"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == leaf_keys()
    assert rows["optim.lr"].split() == ["optim.lr", "float", ">", "0", "0.001"]
    assert rows["train.val_every"].split()[1:5] == ["int", ">", "0", "1"]
    assert rows["train.val_every"].endswith("validate every N epochs and always at the last")
    assert rows["model.aggregate"].split()[1:3] == ["mean|attention", "mean"]
    assert rows["train.max_train_batches"].split()[1:6] == ["int", ">", "0", "or", "null"]


def test_keys_of_one_section_or_key_and_an_unknown_one(capsys) -> None:
    assert main(["keys", "optim.scheduler"]) == 0
    keys = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert keys == ["optim.scheduler.type", "optim.scheduler.warmup_epochs", "optim.scheduler.min_lr"]
    assert main(["keys", "train.amp"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["train.amp", "bool", "false"]
    assert main(["keys", "optim.lrr"]) == 2
    err = capsys.readouterr().err
    assert "'lrr' is unknown" in err and "lr" in err


# --- sweep --config / --set ----------------------------------------------------------------------
def test_sweep_layers_sit_between_the_space_overlays_and_its_fixed_keys_and_params(tmp_path: Path) -> None:
    from harness.sweep.space import load_space

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"batch_size": 4, "val_every": 3}, "data": {"num_workers": 1}}))
    space = load_space(DEMO, [overlay], ["train.batch_size=2", "optim.lr=0.5", "seed=7"])
    cfg = space.first_config()  # the enqueued baseline trial
    assert cfg.train.batch_size == 2  # --set wins over --config
    assert cfg.data.num_workers == 1 and cfg.seed == 7  # both reach the trial
    assert cfg.train.val_every == 1  # the space's fixed key wins over --config
    assert cfg.optim.lr == pytest.approx(1e-3)  # the trial's param wins over --set
    assert cfg.data.input_size == 64  # the space's own overlay (configs/demo.yaml) is still there
    sampled = space.config_for({**space.enqueue_params()[1], "optim.lr": 2e-4})
    assert (sampled.train.batch_size, sampled.optim.lr) == (2, pytest.approx(2e-4))
    assert set(space.shadowed()) == {"train.val_every", "optim.lr"}
    assert load_space(DEMO).first_config().train.batch_size == 16  # without layers: configs/demo.yaml's


def test_sweep_refuses_unknown_keys_and_bad_values_naming_them_and_writes_nothing(tmp_path: Path, capsys) -> None:
    journal = tmp_path / "optuna.journal"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"epochz": 2}}))
    code = main(["sweep", "--space", str(DEMO), "--storage", str(journal), "--tracking-uri", str(tmp_path / "mlruns"),
                 "--config", str(overlay), "--set", "optim.lrr=1e-3", "--set", "train.epochs=many", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert str(overlay) in err[0] and "'epochz' is unknown" in err[0]
    assert "--set optim.lrr=1e-3" in err[1] and "'lrr' is unknown" in err[1]
    assert "--set train.epochs=many" in err[2] and "but got 'many'" in err[2]
    assert not journal.exists() and not (tmp_path / "mlruns").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--space", str(DEMO), "--timeout", "-5"])
    assert exit_.value.code == 2
    assert "--timeout: must be a number of seconds > 0, but got '-5'" in capsys.readouterr().err


def test_gpus_workers_get_every_layer_the_timeout_and_plain_lines() -> None:
    parser = build_parser()
    args = parser.parse_args(["sweep", "--space", "s.yaml", "--trials", "7", "--gpus", "0,1", "--config", "a.yaml",
                              "--config", "b.yaml", "--set", "optim.lr=3e-4", "--set", "seed=2", "--timeout", "90"])
    worker = parser.parse_args(_worker_argv(args))
    assert worker.gpus is None and worker.plain and not worker.quiet
    for name in ("space", "trials", "config", "overrides", "timeout", "storage", "study_name", "resume_trials"):
        assert getattr(worker, name) == getattr(args, name), name
    quiet = parser.parse_args(_worker_argv(parser.parse_args(["sweep", "--space", "s.yaml", "--gpus", "0", "--quiet"])))
    assert quiet.quiet and not quiet.plain


def test_sweep_estimate_times_the_config_with_the_command_line_layers(
    synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, synthetic_root, {"type": "median", "n_warmup_steps": 0})
    overlay = tmp_path / "epochs.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"epochs": 3, "batch_size": 6}}))
    assert main(["sweep", "--space", str(space), "--trials", "10", "--estimate", "--config", str(overlay),
                 "--set", "train.batch_size=4", "--storage", str(tmp_path / "optuna.journal")]) == 0
    out = capsys.readouterr().out
    assert "s per batch of 4" in out and "3 validations in 3 epochs" in out
    assert not (tmp_path / "optuna.journal").exists()


# --- sweep --timeout -----------------------------------------------------------------------------
class _Clock:
    """The study module's `time`, with a perf_counter that can be moved forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.offset

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.mark.slow
def test_sweep_timeout_lets_the_running_trial_finish_and_starts_no_other(
    synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import optuna
    from mlflow import MlflowClient

    import harness.sweep.study as study_module
    import harness.sweep.trial as trial_module
    from harness.sweep.storage import open_storage

    clock = _Clock()
    real_fit = trial_module.fit

    def fit_then_an_hour_passes(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        clock.offset += 3600  # the first trial ran past --timeout 600
        return result

    monkeypatch.setattr(study_module, "time", clock)
    monkeypatch.setattr(trial_module, "fit", fit_then_an_hour_passes)
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, synthetic_root, {"type": "none"})
    journal, uri = str(tmp_path / "optuna.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["sweep", "--space", str(space), "--trials", "3", "--storage", journal, "--study-name", "t",
                 "--tracking-uri", uri, "--timeout", "600", "--set", "train.epochs=2", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "stopped early: --timeout reached with 1 of 3 trials finished" in out
    assert out.count("trial   0 (baseline.yaml): complete") == 1  # --plain: one line per finished trial
    trials = optuna.load_study(study_name="t", storage=open_storage(journal)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "WAITING"]  # the enqueued recommended trial waits for a rerun
    assert trials[0].user_attrs["epochs_run"] == 2  # --set reached the trial
    parent = optuna.load_study(study_name="t", storage=open_storage(journal)).user_attrs["mlflow_parent_run_id"]
    assert MlflowClient(uri).get_run(parent).info.status == "FINISHED"  # a planned stop is no failure


# --- --gpus workers: lines as they come, prefixed ------------------------------------------------
def test_worker_lines_are_relayed_as_they_come_prefixed_by_the_gpu(tmp_path: Path, capsys) -> None:
    from harness.sweep.workers import Worker, run_workers

    go = tmp_path / "go"
    # Worker 0 prints a trial line, then waits for the test to see that line before it finishes.
    waits = (f"import pathlib, time\nprint('trial 0 (sampled): complete', flush=True)\n"
             f"deadline = time.time() + 60\nwhile not pathlib.Path({str(go)!r}).exists() and time.time() < deadline:\n"
             f"    time.sleep(0.05)\nprint('trial 2 (sampled): pruned', end='')\n")
    fails = "import sys\nprint('trial 1 (sampled): complete')\nsys.exit(3)\n"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [Worker("gpu 0", [sys.executable, "-c", waits], env), Worker("gpu 1", [sys.executable, "-c", fails], env)]
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", run_workers(workers)))
    runner.start()
    seen = ""
    deadline = time.monotonic() + 60
    while "[gpu 0] trial 0 (sampled): complete\n" not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
        seen += capsys.readouterr().out
    assert runner.is_alive(), "the line came only once the worker had finished"
    go.touch()
    runner.join(timeout=60)
    lines = (seen + capsys.readouterr().out).splitlines()
    assert sorted(lines) == ["[gpu 0] trial 0 (sampled): complete", "[gpu 0] trial 2 (sampled): pruned",
                             "[gpu 1] trial 1 (sampled): complete"]
    assert result["code"] == 3  # the worst worker's exit code


@pytest.mark.slow
def test_sweep_gpus_on_a_cpu_machine_relays_each_workers_trial_lines(
    synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import optuna

    from harness.sweep.storage import open_storage

    # Each worker sees "its GPU" through CUDA_VISIBLE_DEVICES; without CUDA, train.device auto trains on the CPU.
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, synthetic_root, {"type": "none"})
    journal = str(tmp_path / "optuna.journal")
    assert main(["sweep", "--space", str(space), "--trials", "2", "--gpus", "0,1", "--storage", journal,
                 "--study-name", "g", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "--set", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    trial_lines = [line for line in out.splitlines() if " trial " in line and "after 1 epochs" in line]
    assert len(trial_lines) == 2, out
    assert all(line.startswith(("[gpu 0] trial ", "[gpu 1] trial ")) for line in trial_lines)
    trials = optuna.load_study(study_name="g", storage=open_storage(journal)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(t.user_attrs["epochs_run"] == 1 for t in trials)


# --- train.device: auto falling back to CPU ------------------------------------------------------
NVRM = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"


def test_an_nvidia_driver_is_found_by_its_version_file_or_nvidia_smi(tmp_path: Path) -> None:
    from harness.train.session import nvidia_driver

    version_file, empty = tmp_path / "version", tmp_path / "empty"
    version_file.write_text(NVRM)
    empty.mkdir()
    assert nvidia_driver([tmp_path / "absent", version_file], search_path=str(empty)) == "NVIDIA driver 550.54.14"
    assert nvidia_driver([tmp_path / "absent"], search_path=str(empty)) is None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    assert nvidia_driver([tmp_path / "absent"], search_path=str(bin_dir)) == f"an NVIDIA driver (nvidia-smi at {smi})"


def test_the_fallback_warning_says_why_and_how_to_fix_it() -> None:
    from harness.train.session import cpu_fallback_warning

    cpu_build = cpu_fallback_warning("NVIDIA driver 550.54.14", "2.14.1+cpu", None, "Torch not compiled", None)
    assert "this torch (2.14.1+cpu) is built without CUDA" in cpu_build
    assert "install torch's CUDA build (README" in cpu_build and "set train.device: cpu" in cpu_build
    old = cpu_fallback_warning("NVIDIA driver 418.1", "2.14.1", "13.0",
                               "The NVIDIA driver on your system is too old (found version 10010).", "0")
    assert "built for CUDA 13.0, CUDA_VISIBLE_DEVICES='0') cannot use it: The NVIDIA driver on your system is too old" in old
    assert "update the driver" in old
    hidden = cpu_fallback_warning("NVIDIA driver 550.54.14", "2.14.1", "13.0", "no CUDA GPUs are available", "")
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in hidden and "unset CUDA_VISIBLE_DEVICES" in hidden
    assert all("\n" not in w for w in (cpu_build, old, hidden))


def test_auto_device_falling_back_to_cpu_warns_once_where_a_driver_is_present(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import torch

    from harness.train import session

    if torch.cuda.is_available():
        pytest.skip("CUDA works here, so train.device auto does not fall back")
    version_file = tmp_path / "version"
    version_file.write_text(NVRM)
    find = session.nvidia_driver
    monkeypatch.setattr(session, "nvidia_driver", lambda: find([version_file], search_path=""))
    session._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="harness.train.session"):
        assert session.resolve_device("auto").type == "cpu"
        assert session.resolve_device("auto").type == "cpu"  # a sweep's next trial: no second warning
        assert session.resolve_device("cpu").type == "cpu"  # asked for: no warning
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "uses the CPU, although the machine has NVIDIA driver 550.54.14" in warnings[0]
    caplog.clear()
    monkeypatch.setattr(session, "nvidia_driver", lambda: find([tmp_path / "absent"], search_path=""))
    assert session.resolve_device("auto").type == "cpu"
    assert not caplog.records  # a machine without a driver: CPU is expected
