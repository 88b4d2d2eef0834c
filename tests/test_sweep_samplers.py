"""Optuna's samplers as `study.sampler`: each builds from a space file and drives real ask/tell trials through the
space's own suggest path, and a space a sampler cannot search is refused in one line naming study.sampler.type."""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from harness.errors import SpaceError
from harness.sweep.space import SAMPLERS, SearchSpace, build_sampler, load_space

ROOT = Path(__file__).resolve().parents[1]

RANGES = {
    "optim.lr": {"type": "float", "low": 1.0e-5, "high": 3.0e-3, "log": True},
    "optim.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "optim.scheduler.warmup_epochs": {"type": "int", "low": 0, "high": 3},
}
CATEGORICAL = {
    "model.aggregate": {"type": "categorical", "choices": ["mean", "attention"]},
    "model.fold_div": {"type": "categorical", "choices": [4, 8]},
}
# 3 x 2 x 2 x 2 = 24 points: stepped floats, an int range, a categorical param and a bundle.
GRID = {
    "optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-4, "step": 1.0e-4},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.25, "step": 0.25},
    "optim.scheduler.warmup_epochs": {"type": "int", "low": 0, "high": 1},
    "balance": {
        "type": "categorical",
        "choices": {
            "pos_weight": {"loss.auto_pos_weight": True, "data.sampler": "none"},
            "sampler": {"loss.auto_pos_weight": False, "data.sampler": "balanced"},
        },
    },
}
CONDITIONAL = {
    "loss.type": {"type": "categorical", "choices": ["bce", "focal_bce"]},
    "loss.gamma": {"type": "float", "low": 1.0, "high": 4.0, "when": {"loss.type": "focal_bce"},
                   "otherwise": {"loss.gamma": None}},
}


def write_space(tmp_path: Path, sampler: dict, params: dict) -> Path:
    """A space file over the repo's baseline with this sampler and these params."""
    body = {
        "base": [str(ROOT / "baseline.yaml")],
        "fixed": {"train.val_every": 1},
        "study": {"direction": "maximize", "metric": "video_auc", "sampler": sampler},
        "params": params,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture
def optuna_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Optuna's log records (it logs a sampler's fallback to random sampling rather than warning)."""
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="optuna"):
            yield caplog
    finally:
        optuna.logging.disable_propagation()


def run_trials(space: SearchSpace, n: int, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """`n` ask/tell trials in memory, each suggested by the space and built into its config, as a sweep does."""
    study = optuna.create_study(
        storage=storage or optuna.storages.InMemoryStorage(),
        direction=space.study.direction,
        sampler=build_sampler(space.study.sampler, distributions=space.distributions()),
    )
    for _ in range(n):
        trial = study.ask()
        params = space.suggest(trial)
        cfg = space.config_for(params)
        assert cfg.optim.lr == params.get("optim.lr", 0.001)
        # Something with an optimum inside the space, so the model-based samplers have a slope to follow.
        study.tell(trial, -abs(cfg.optim.lr - 3.0e-4) - abs(cfg.model.dropout - 0.2))
    return study


@pytest.mark.parametrize(
    ("sampler", "params"),
    [
        ({"type": "gp", "seed": 0, "n_startup_trials": 3}, {**RANGES, **CATEGORICAL}),
        ({"type": "qmc", "seed": 0, "scramble": True}, {**RANGES, **CATEGORICAL}),
        ({"type": "cmaes", "seed": 0}, RANGES),
    ],
    ids=["gp", "qmc", "cmaes"],
)
def test_a_model_based_sampler_searches_the_whole_space_itself(
    sampler: dict, params: dict, tmp_path: Path, optuna_warnings: pytest.LogCaptureFixture
) -> None:
    space = load_space(write_space(tmp_path, sampler, params))
    storage = optuna.storages.InMemoryStorage()
    study = run_trials(space, 6, storage)

    assert isinstance(study.sampler, SAMPLERS[sampler["type"]])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert all(set(t.params) == set(params) for t in study.trials)
    # No param was handed to Optuna's random fallback: it would have logged a warning naming the param.
    assert not [r.getMessage() for r in optuna_warnings.records if r.levelno >= logging.WARNING]
    if sampler["type"] == "cmaes":
        assert any(k.startswith("cma:") for t in study.trials for k in t.system_attrs)
    if sampler["type"] == "qmc":
        # QMC counts its draws from the sequence in the study; the first trial comes from the fallback.
        attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study.study_name))
        assert [v for k, v in attrs.items() if k.startswith("qmc:")] == [4]


def test_grid_runs_every_combination_of_the_params_once_then_goes_on(
    tmp_path: Path, optuna_warnings: pytest.LogCaptureFixture
) -> None:
    space = load_space(write_space(tmp_path, {"type": "grid", "seed": 0}, GRID))
    # Optuna's GridSampler calls study.stop() at the last grid point, which raises outside study.optimize;
    # the sweep counts its own trials, so the 24th trial ends like any other and a 25th reruns a point.
    study = run_trials(space, 25)

    seen = [(round(t.params["optim.lr"], 12), *(t.params[name] for name in list(GRID)[1:])) for t in study.trials]
    expected = itertools.product([1.0e-4, 2.0e-4, 3.0e-4], [0.0, 0.25], [0, 1], ["pos_weight", "sampler"])
    assert len(set(seen[:24])) == 24 and set(seen[:24]) == set(expected)
    assert seen[24] in seen[:24] and study.trials[24].state.name == "COMPLETE"
    assert [r.getMessage()[:57] for r in optuna_warnings.records] == [
        "`GridSampler` is re-evaluating a configuration because th"
    ]


def test_the_sweep_creates_its_study_with_the_grid_of_its_space(tmp_path: Path) -> None:
    from harness.sweep.study import _create_study

    space = load_space(write_space(tmp_path, {"type": "grid", "seed": 0}, GRID))
    study = _create_study(space, "grid", str(tmp_path / "optuna.journal"), 0, 0)
    assert isinstance(study.sampler, optuna.samplers.GridSampler)
    trial = study.ask()
    params = space.suggest(trial)
    assert set(params) == set(GRID) and round(params["optim.lr"], 12) in (1.0e-4, 2.0e-4, 3.0e-4)


# (sampler, params, what the one line must say besides the key)
REFUSALS = [
    ({"type": "gp", "seed": 0}, {**RANGES, **CONDITIONAL},
     ["gp needs every param in every trial", "conditional params (`when`): loss.gamma"]),
    ({"type": "qmc", "seed": 0}, {**RANGES, **CONDITIONAL},
     ["qmc needs every param in every trial", "loss.gamma"]),
    ({"type": "cmaes", "seed": 0}, {**RANGES, **CATEGORICAL},
     ["cmaes searches int and float ranges only", "categorical params: model.aggregate, model.fold_div"]),
    ({"type": "grid"}, {**GRID, "optim.weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
     ["grid needs a finite set of values per param", "float params without `step`: optim.weight_decay"]),
    ({"type": "grid"}, {"loss.type": CONDITIONAL["loss.type"], "loss.gamma": {**CONDITIONAL["loss.gamma"], "step": 1.0}},
     ["grid needs every param in every trial", "loss.gamma"]),
    ({"type": "grid"}, {"model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 1.0e-5}},
     ["grid must hold at most 10000 points", "but got 50001"]),
]


@pytest.mark.parametrize(("sampler", "params", "says"), REFUSALS,
                         ids=["gp-when", "qmc-when", "cmaes-categorical", "grid-no-step", "grid-when", "grid-too-big"])
def test_a_space_the_sampler_cannot_search_is_refused_in_one_line(
    sampler: dict, params: dict, says: list[str], tmp_path: Path
) -> None:
    with pytest.raises(SpaceError) as info:
        load_space(write_space(tmp_path, sampler, params))
    assert len(info.value.problems) == 1 and "\n" not in str(info.value)
    line = info.value.problems[0]
    assert line.startswith(f"{tmp_path / 'space.yaml'}: key 'study.sampler.type': "), line
    assert all(part in line for part in says), line


def test_cmaes_without_its_package_is_refused_naming_the_extra(tmp_path: Path, monkeypatch) -> None:
    # None in sys.modules is how Python itself marks a module as not importable.
    monkeypatch.setitem(sys.modules, "cmaes", None)
    with pytest.raises(SpaceError, match=r"key 'study.sampler.type': cmaes needs the `cmaes` package "
                                         r"\(pip install 'harness\[samplers\]'\), but it is not installed"):
        load_space(write_space(tmp_path, {"type": "cmaes", "seed": 0}, RANGES))


def test_a_grid_takes_its_values_from_the_params_only(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"key 'study.sampler': .*grid takes no `search_space` argument"):
        load_space(write_space(tmp_path, {"type": "grid", "search_space": {"optim.lr": [1.0e-4]}}, GRID))
