"""A study's recorded search space: what changes its hash, the difference lines, and a resume with another space
refused, noted or let through (--allow-space-change), on real journal storages and through `harness sweep`."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from harness.cli import main
from harness.config.keys import key_problem
from harness.errors import StudyError
from harness.sweep.space import SearchSpace, load_space
from harness.sweep.space_identity import (
    _NO_BEARING,
    HASH_ATTR,
    HISTORY_ATTR,
    SPACE_ATTR,
    check_space,
    describe_space,
    differences,
    record_space,
    space_hash,
)
from harness.sweep.storage import open_storage
from harness.sweep.study import check_resumed_space
from helpers import ROOT, write_space

BASE = {
    "base": [str(ROOT / "baseline.yaml")],
    "overlays": [str(ROOT / "configs" / "demo.yaml")],
    "fixed": {"train.val_every": 1, "train.epochs": 4, "loss.auto_pos_weight": False},
    "study": {"direction": "maximize", "metric": "video_auc", "sampler": {"type": "tpe", "seed": 0},
              "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 0}},
    "params": {
        "optim.lr": {"type": "float", "low": 1.0e-5, "high": 3.0e-3, "log": True},
        "model.fold_div": {"type": "categorical", "choices": [4, 8]},
        "loss.type": {"type": "categorical", "choices": ["bce", "focal_bce"]},
        "loss.gamma": {"type": "float", "low": 1.0, "high": 4.0, "when": {"loss.type": "focal_bce"},
                       "otherwise": {"loss.gamma": None}},
    },
}


def space_with(tmp_path: Path, change=None, name: str = "space.yaml", **cli) -> SearchSpace:
    """BASE, changed in place by `change(body)`, written to `name` and loaded (with `--config/--set` in `cli`)."""
    body = copy.deepcopy(BASE)
    if change is not None:
        change(body)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return load_space(path, **cli)


def lines_between(tmp_path: Path, change=None, **cli) -> list[str]:
    before = space_with(tmp_path, name="before.yaml")
    after = space_with(tmp_path, change, name="after.yaml", **cli)
    return differences(describe_space(before), describe_space(after), after.fixed)


def test_the_same_space_reordered_and_commented_has_the_same_hash(tmp_path: Path) -> None:
    original = space_with(tmp_path)
    text = f"""# the same space, written by hand in another order
study:   # sampler and pruner first
  pruner: {{n_warmup_steps: 0, type: median, n_startup_trials: 3.0}}
  sampler: {{seed: 0, type: tpe}}
  metric: video_auc
  direction: maximize
params:
  loss.gamma: {{otherwise: {{loss.gamma: null}}, when: {{loss.type: [focal_bce]}}, type: float, low: 1, high: 4.0}}
  loss.type: {{type: categorical, choices: [bce, focal_bce]}}
  model.fold_div: {{type: categorical, choices: [4, 8]}}
  optim.lr: {{type: float, low: 0.00001, high: 3e-3, log: true}}   # 3e-3 without a dot is text to PyYAML
fixed: {{loss.auto_pos_weight: false, train.epochs: 4, train.val_every: 1}}
overlays: [{ROOT / "configs" / "demo.yaml"}]
base: [{ROOT / "baseline.yaml"}]
"""
    path = tmp_path / "by_hand.yaml"
    path.write_text(text)
    assert space_hash(describe_space(load_space(path))) == space_hash(describe_space(original))


def test_what_a_trial_config_cannot_tell_apart_leaves_the_hash_alone(tmp_path: Path) -> None:
    original = space_hash(describe_space(space_with(tmp_path)))

    def sampler_and_enqueue(body: dict) -> None:
        body["study"]["sampler"] = {"type": "random", "seed": 7}
        body["study"]["enqueue"] = [str(ROOT / "baseline.yaml")]

    def fixed_to_the_base_value(body: dict) -> None:
        del body["fixed"]["train.val_every"]  # baseline.yaml's own value is 1 too

    assert space_hash(describe_space(space_with(tmp_path, sampler_and_enqueue))) == original
    assert space_hash(describe_space(space_with(tmp_path, fixed_to_the_base_value))) == original
    # Where files live and how fast a trial runs; and the base value of a key a param sets in every trial.
    quiet = space_with(tmp_path, overrides=["data.num_workers=3", "train.output_dir=elsewhere", "optim.lr=0.5",
                                            "data.root=/somewhere/else"])
    assert space_hash(describe_space(quiet)) == original


def test_a_changed_bound_choice_or_fixed_value_is_named_in_one_line_each(tmp_path: Path) -> None:
    def bound(body: dict) -> None:
        body["params"]["optim.lr"]["high"] = 0.01

    def choice(body: dict) -> None:
        body["params"]["model.fold_div"]["choices"] = [4, 8, 16]

    def fixed(body: dict) -> None:
        body["fixed"]["train.epochs"] = 8

    assert lines_between(tmp_path, bound) == ["params.optim.lr.high: 0.003 -> 0.01"]
    assert lines_between(tmp_path, choice) == ["params.model.fold_div.choices: [4, 8] -> [4, 8, 16]"]
    assert lines_between(tmp_path, fixed) == ["fixed.train.epochs: 4 -> 8"]


def test_an_added_param_a_pruner_and_a_base_value_are_differences(tmp_path: Path) -> None:
    def added(body: dict) -> None:
        body["params"]["model.dropout"] = {"type": "float", "low": 0.0, "high": 0.5}

    def pruner(body: dict) -> None:
        body["study"]["pruner"]["n_startup_trials"] = 5

    def removed(body: dict) -> None:
        del body["params"]["model.fold_div"]

    # The param sets model.dropout in every trial now, so the base's value no longer counts; without the
    # removed param, every trial gets the base's value.
    assert lines_between(tmp_path, added) == ["params.model.dropout: added"]
    assert lines_between(tmp_path, removed) == ["params.model.fold_div: removed", "config.model.fold_div: added (8)"]
    assert lines_between(tmp_path, pruner) == ["study.pruner.n_startup_trials: 3 -> 5"]
    assert lines_between(tmp_path, overrides=["train.batch_size=4"]) == ["config.train.batch_size: 16 -> 4"]


def test_keys_without_bearing_on_a_trial_are_config_keys() -> None:
    assert [key for key in _NO_BEARING if key_problem(key)] == []


def _journal_study(tmp_path: Path, space: SearchSpace, name: str = "s") -> optuna.Study:
    storage = open_storage(str(tmp_path / "optuna.journal"))
    return optuna.create_study(study_name=name, storage=storage, direction=space.study.direction)


def test_a_resumed_study_is_refused_noted_or_let_through_with_its_history(tmp_path: Path) -> None:
    space = space_with(tmp_path)
    study = _journal_study(tmp_path, space)

    # Created before the check: the current space is recorded, with a note.
    notes = check_space(study, space)
    assert len(notes) == 1 and notes[0].startswith("note: study 's' holds no record")
    assert study.user_attrs[HASH_ATTR] == space_hash(describe_space(space))
    assert check_space(study, space) == []

    def bound(body: dict) -> None:
        body["params"]["optim.lr"]["high"] = 0.01

    changed = space_with(tmp_path, bound, name="changed.yaml")
    with pytest.raises(StudyError) as refused:
        check_space(study, changed)
    assert refused.value.problems[1:] == ["params.optim.lr.high: 0.003 -> 0.01"]
    assert "must be resumed with the search space it was created with" in refused.value.problems[0]
    assert study.user_attrs[HASH_ATTR] == space_hash(describe_space(space))  # nothing recorded

    warning = check_space(study, changed, allow_change=True)
    assert warning[0].startswith("warning: study 's' goes on with a changed search space")
    assert warning[1:] == ["  params.optim.lr.high: 0.003 -> 0.01"]
    attrs = study.user_attrs
    assert attrs[HASH_ATTR] == space_hash(describe_space(changed)) == space_hash(attrs[SPACE_ATTR])
    history = attrs[HISTORY_ATTR]
    assert [entry["changes"] for entry in history] == [[], ["params.optim.lr.high: 0.003 -> 0.01"]]
    assert history[1]["from"] == history[0]["to"] and history[1]["to"] == attrs[HASH_ATTR]
    assert check_space(study, changed) == []


def test_a_change_optuna_refuses_within_a_study_is_refused_even_when_allowed(tmp_path: Path) -> None:
    space = space_with(tmp_path)
    study = _journal_study(tmp_path, space)
    record_space(study, space)
    trial = study.ask()
    space.suggest(trial)
    study.tell(trial, 0.5)

    def choice(body: dict) -> None:
        body["params"]["model.fold_div"]["choices"] = [8, 4]
        body["study"]["direction"] = "minimize"

    with pytest.raises(StudyError) as refused:
        check_space(study, space_with(tmp_path, choice, name="changed.yaml"), allow_change=True)
    assert "even with --allow-space-change" in refused.value.problems[0]
    assert refused.value.problems[1:] == [
        "study.direction: a study keeps the direction it was created with, but got maximize -> minimize",
        "params.model.fold_div: a categorical param keeps its choices, in order, within a study, "
        "but got [4, 8] -> [8, 4]",
    ]
    assert HISTORY_ATTR not in study.user_attrs


def test_the_early_check_creates_nothing_for_a_study_that_does_not_exist(tmp_path: Path) -> None:
    space = space_with(tmp_path)
    journal = tmp_path / "optuna.journal"
    assert check_resumed_space(space, "s", str(journal)) == []
    assert check_resumed_space(space, "s", f"sqlite:///{tmp_path / 'optuna.db'}") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]
    _journal_study(tmp_path, space, "other")
    assert check_resumed_space(space, "s", str(journal)) == []
    assert optuna.get_all_study_names(open_storage(str(journal))) == ["other"]


# --- through `harness sweep` ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_rerun_with_a_changed_space_exits_2_before_any_data_and_the_flag_lets_it_through_with_history(
    synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=1)
    journal = str(tmp_path / "optuna.journal")
    common = ["--storage", journal, "--study-name", "t", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
              "--quiet"]
    assert main(["sweep", "--space", str(space), "--trials", "1", *common]) == 0
    study = optuna.load_study(study_name="t", storage=open_storage(journal))
    recorded, trials = study.user_attrs[HASH_ATTR], len(study.get_trials())  # the second enqueued one waits
    capsys.readouterr()

    body = yaml.safe_load(space.read_text())
    body["params"]["optim.lr"]["high"] = 0.01
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(body, sort_keys=False))
    # data.root leaves the space's hash alone; a sweep that indexed its data first would fail on it instead.
    nowhere = ["--set", f"data.root={tmp_path / 'nowhere'}"]
    for extra in ([], ["--gpus", "0,1"]):
        assert main(["sweep", "--space", str(changed), "--trials", "2", *nowhere, *common, *extra]) == 2
        out, err = capsys.readouterr()
        assert "harness sweep: error: params.optim.lr.high: 0.003 -> 0.01" in err.splitlines(), err
        assert "data.root" not in err and "starting" not in out
    study = optuna.load_study(study_name="t", storage=open_storage(journal))
    assert len(study.get_trials()) == trials and study.user_attrs[HASH_ATTR] == recorded

    assert main(["sweep", "--space", str(changed), "--trials", "2", "--allow-space-change", *common]) == 0
    out = capsys.readouterr().out
    assert "warning: study 't' goes on with a changed search space" in out
    assert "  params.optim.lr.high: 0.003 -> 0.01" in out.splitlines()
    study = optuna.load_study(study_name="t", storage=open_storage(journal))
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) == 2
    [entry] = study.user_attrs[HISTORY_ATTR]
    assert entry["from"] == recorded and entry["to"] == study.user_attrs[HASH_ATTR] != recorded
    assert entry["changes"] == ["params.optim.lr.high: 0.003 -> 0.01"]
    # The change is recorded: the same command without the flag now resumes quietly.
    assert main(["sweep", "--space", str(changed), "--trials", "2", *common]) == 0
    assert "warning" not in capsys.readouterr().out
