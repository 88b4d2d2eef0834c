"""Search-space files: every shipped one loads, sampling yields only valid configs, bad files are refused."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from harness.config.loading import load_config
from harness.errors import SpaceError
from harness.sweep.space import SearchSpace, build_pruner, build_sampler, load_space

ROOT = Path(__file__).resolve().parents[1]
SPACE_FILES = sorted((ROOT / "search_spaces").glob("*.yaml"))

# The knobs of the shipped spaces, written out so a test can vary one piece at a time.
KNOBS = {
    "optim.lr": {"type": "float", "low": 1.0e-5, "high": 3.0e-3, "log": True},
    "model.fold_div": {"type": "categorical", "choices": [4, 8]},
    "model.aggregate": {"type": "categorical", "choices": ["mean", "attention"]},
    "loss.type": {"type": "categorical", "choices": ["bce", "focal_bce"]},
    "loss.gamma": {
        "type": "float",
        "low": 1.0,
        "high": 4.0,
        "when": {"loss.type": "focal_bce"},
        "otherwise": {"loss.gamma": None},
    },
    "balance": {
        "type": "categorical",
        "when": {"loss.type": "bce"},
        "choices": {
            "pos_weight": {"loss.auto_pos_weight": True, "data.sampler": "none"},
            "sampler": {"loss.auto_pos_weight": False, "data.sampler": "balanced"},
        },
        "otherwise": {"loss.auto_pos_weight": False, "data.sampler": "none"},
    },
}


def write_space(tmp_path: Path, params: dict | None = None, **top) -> Path:
    """A space file over the repo's baseline; `top` replaces top-level fields."""
    body = {
        "base": [str(ROOT / "baseline.yaml")],
        "fixed": {"train.val_every": 1},
        "study": {"direction": "maximize", "metric": "video_auc", "sampler": {"type": "tpe", "seed": 0}},
        "params": KNOBS if params is None else params,
        **top,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def refusal(path: Path) -> SpaceError:
    with pytest.raises(SpaceError) as info:
        load_space(path)
    return info.value


def study_for(space, sampler=None) -> optuna.Study:
    return optuna.create_study(
        direction=space.study.direction, sampler=sampler or optuna.samplers.RandomSampler(seed=0)
    )


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_every_shipped_space_loads_and_its_enqueued_configs_are_representable(path: Path) -> None:
    space = load_space(path)
    assert set(space.distributions()) == set(KNOBS)
    assert len(space.enqueue_params()) == len(space.study.enqueue) == 2
    for params in space.enqueue_params():
        space.config_for(params)


def test_shipped_spaces_are_found() -> None:
    assert {p.name for p in SPACE_FILES} >= {"space.yaml", "demo.yaml"}


def test_conditional_gamma_only_sampled_with_focal(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path))
    study = study_for(space)
    seen = set()
    for _ in range(100):
        trial = study.ask()
        params = space.suggest(trial)
        cfg = space.config_for(params)  # raises unless the schema accepts it
        focal = params["loss.type"] == "focal_bce"
        assert ("loss.gamma" in params) == focal
        assert ("balance" in params) == (not focal)
        assert trial.params == params
        if focal:
            assert cfg.loss.gamma == params["loss.gamma"] and not cfg.loss.auto_pos_weight
            assert cfg.data.sampler == "none"
        else:
            assert cfg.loss.gamma is None
            assert cfg.loss.auto_pos_weight == (params["balance"] == "pos_weight")
            assert cfg.data.sampler == ("balanced" if params["balance"] == "sampler" else "none")
            seen.add(params["balance"])
        assert 1.0e-5 <= cfg.optim.lr <= 3.0e-3
        study.tell(trial, 0.5)
    assert seen == {"pos_weight", "sampler"}


def test_params_are_ordered_so_conditions_come_first(tmp_path: Path) -> None:
    reordered = {"balance": KNOBS["balance"], "loss.gamma": KNOBS["loss.gamma"], "loss.type": KNOBS["loss.type"]}
    names = [p.name for p in load_space(write_space(tmp_path, reordered)).params]
    assert names == ["loss.type", "balance", "loss.gamma"]


def test_params_for_baseline_are_its_knob_values() -> None:
    space = load_space(ROOT / "search_spaces" / "space.yaml")
    assert space.params_for_config(ROOT / "baseline.yaml") == {
        "optim.lr": 0.001,
        "model.fold_div": 8,
        "model.aggregate": "mean",
        "loss.type": "bce",
        "balance": "pos_weight",
    }
    assert space.params_for_config(ROOT / "recommended.yaml") == {
        "optim.lr": 0.0003,
        "model.fold_div": 4,
        "model.aggregate": "attention",
        "loss.type": "focal_bce",
        "loss.gamma": 2.0,
    }


def test_config_for_round_trips_through_params_for_config() -> None:
    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    params = {"optim.lr": 2.0e-4, "model.fold_div": 4, "model.aggregate": "attention", "loss.type": "bce", "balance": "sampler"}
    cfg = space.config_for(params)
    assert (cfg.optim.lr, cfg.model.fold_div, cfg.model.aggregate) == (2.0e-4, 4, "attention")
    assert (cfg.loss.auto_pos_weight, cfg.data.sampler) == (False, "balanced")
    # The demo overlay and the fixed keys stay under the params.
    assert (cfg.data.source, cfg.train.epochs, cfg.train.val_every) == ("synthetic", 6, 1)
    assert space.params_for_config(cfg) == params


def test_enqueued_recommended_keeps_the_overlay_and_the_fixed_schedule() -> None:
    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    cfg = space.config_for(space.params_for_config(ROOT / "recommended.yaml"))
    assert load_config([ROOT / "recommended.yaml"]).train.val_every == 2
    assert (cfg.train.val_every, cfg.data.source, cfg.model.fold_div, cfg.loss.gamma) == (1, "synthetic", 4, 2.0)


def test_enqueued_trials_come_first_with_their_values() -> None:
    space = load_space(ROOT / "search_spaces" / "space.yaml")
    study = study_for(space, space.sampler())
    for params in space.enqueue_params():
        study.enqueue_trial(params)
    asked = []
    for _ in range(3):
        trial = study.ask()
        asked.append(space.suggest(trial))
        study.tell(trial, 0.5)
    assert asked[:2] == space.enqueue_params()
    assert asked[0]["balance"] == "pos_weight" and asked[1]["loss.gamma"] == 2.0


def test_config_not_in_the_space_is_refused_naming_the_param(tmp_path: Path) -> None:
    space = load_space(ROOT / "search_spaces" / "space.yaml")
    with pytest.raises(SpaceError) as info:
        space.params_for_config({"model": {"fold_div": 16}, "optim": {"lr": 0.01}})
    text = str(info.value)
    assert "param 'model.fold_div'" in text and "16" in text
    assert "param 'optim.lr'" in text and "0.01" in text
    # focal with the balanced sampler is a valid config, but this space never builds it.
    focal_sampler = {"loss": {"type": "focal_bce", "gamma": 2.0, "auto_pos_weight": False}, "data": {"sampler": "balanced"}}
    with pytest.raises(SpaceError, match=r"param 'balance' is inactive .*data.sampler='balanced'"):
        space.params_for_config(focal_sampler)


def test_inactive_or_missing_params_are_refused_by_config_for() -> None:
    space = load_space(ROOT / "search_spaces" / "space.yaml")
    base = {"optim.lr": 1e-3, "model.fold_div": 8, "model.aggregate": "mean", "loss.type": "bce"}
    with pytest.raises(SpaceError, match="param 'balance' is active, so it needs a value"):
        space.config_for(base)
    with pytest.raises(SpaceError, match="param 'loss.gamma' applies only when loss.type in"):
        space.config_for({**base, "balance": "sampler", "loss.gamma": 2.0})


def test_unknown_key_is_refused_naming_file_and_param(tmp_path: Path) -> None:
    path = write_space(tmp_path, {**KNOBS, "model.fold_dv": {"type": "categorical", "choices": [4]}})
    text = str(refusal(path))
    assert f"{path}: key 'params.model.fold_dv': 'model.fold_dv' must be a config key" in text and "fold_div" in text


def test_unknown_key_in_a_bundle_is_refused(tmp_path: Path) -> None:
    bundle = {"type": "categorical", "choices": {"a": {"loss.auto_pos_weigh": True}}}
    text = str(refusal(write_space(tmp_path, {"bal": bundle})))
    assert "key 'params.bal.choices.a'" in text and "loss.auto_pos_weigh" in text


def test_float_range_on_a_literal_key_is_refused(tmp_path: Path) -> None:
    path = write_space(tmp_path, {**KNOBS, "model.aggregate": {"type": "float", "low": 0.0, "high": 1.0}})
    text = str(refusal(path))
    assert f"{path}: key 'params.model.aggregate.type': a float range needs a float key" in text


def test_choice_the_schema_refuses_is_refused(tmp_path: Path) -> None:
    params = {**KNOBS, "model.aggregate": {"type": "categorical", "choices": ["mean", "max"]}}
    text = str(refusal(write_space(tmp_path, params)))
    assert "key 'params.model.aggregate.choices.1'" in text and "'max'" in text


def test_choice_that_breaks_a_cross_field_rule_is_blamed_on_its_param(tmp_path: Path) -> None:
    params = {**KNOBS, "model.fold_div": {"type": "categorical", "choices": [1, 8]}}
    text = str(refusal(write_space(tmp_path, params)))
    assert "param 'model.fold_div'" in text and "model.fold_div=1 gives" in text


def test_params_that_only_fail_together_are_named_together(tmp_path: Path) -> None:
    unconditional = {k: v for k, v in KNOBS.items() if k != "balance"}
    unconditional["loss.gamma"] = {"type": "float", "low": 1.0, "high": 4.0}  # without `when`
    text = str(refusal(write_space(tmp_path, unconditional)))
    assert "loss.type='bce'" in text and "loss.gamma" in text


def test_problems_are_refused_all_at_once_the_files_shape_first_then_its_keys(tmp_path: Path) -> None:
    params = {
        **KNOBS,
        "optim.lr": {"type": "float", "low": 3.0e-3, "high": 1.0e-5},
        "optim.weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": True},
        "train.epochs": {"type": "int", "low": 10, "high": 30},
        "model.fold_dv": {"type": "categorical", "choices": [4]},
    }
    path = write_space(tmp_path, params, study={"sampler": {"type": "cmaess"}})
    lines = refusal(path).problems
    assert all(line.startswith(f"{path}: key '") for line in lines)
    assert any("'params.optim.lr'" in l and "`low <= high` must hold, but got (low=0.003, high=1e-05)" in l for l in lines)
    assert any("'params.optim.weight_decay'" in l and "`low > 0` must hold for `log=True`" in l for l in lines)
    assert any("'study.sampler'" in l and "tpe" in l and "'cmaess'" in l for l in lines)
    assert len(lines) == 3
    # With the file's shape right, what the config schema refuses comes next, all of it together.
    params["optim.lr"] = KNOBS["optim.lr"]
    params["optim.weight_decay"] = {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True}
    lines = refusal(write_space(tmp_path, params)).problems
    assert any("'params.train.epochs'" in l and "pruners compare trials" in l for l in lines)
    assert any("'params.model.fold_dv'" in l and "must be a config key" in l for l in lines)
    assert len(lines) == 2


def test_shape_problems_are_one_line_each_naming_file_and_key_like_config_errors(tmp_path: Path) -> None:
    params = {
        "optim.lr": {"type": "flot", "low": 1.0e-4, "high": 1.0e-2},
        "model.fold_div": {"type": "categorical", "choices": [4, 8], "step": 1},
        "model.aggregate": {"type": "categorical", "choices": [["mean"], "attention"]},
        "train.batch_size": {"type": "int", "low": 1.5, "high": 8},
    }
    path = write_space(tmp_path, params, junk=1)
    lines = refusal(path).problems
    assert f"{path}: unknown key 'junk'; allowed here: base, fixed, overlays, params, study" in lines
    assert f"{path}: unknown key 'params.model.fold_div.step'; allowed here: choices, otherwise, type, when" in lines
    assert f"{path}: key 'params.train.batch_size.low': Input should be a valid integer, but got 1.5" in lines
    assert any(l.startswith(f"{path}: key 'params.optim.lr': a param must be a mapping whose `type` is one of float, int, categorical") for l in lines)
    assert any(l.startswith(f"{path}: key 'params.model.aggregate.choices.0': a choice must be null, bool") for l in lines)
    assert len(lines) == 5


def test_yaml_quirks_read_as_meant(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    # PyYAML reads 1e-5 (no dot) as a string, and an empty entry as null.
    path.write_text(
        f"base: {ROOT / 'baseline.yaml'}\noverlays:\nfixed:\nstudy:\n  enqueue:\nparams:\n"
        "  optim.lr: {type: float, low: 1e-5, high: 3e-3, log: true, when: }\n"
        "  train.batch_size: {type: int, low: 8.0, high: 32, step: 8}\n"
    )
    space = load_space(path)
    assert space.distributions() == {
        "optim.lr": optuna.distributions.FloatDistribution(1.0e-5, 3.0e-3, log=True),
        "train.batch_size": optuna.distributions.IntDistribution(8, 32, step=8),
    }
    assert space.base == (ROOT / "baseline.yaml",) and space.overlays == () and space.fixed == {}


def test_val_every_as_a_param_is_refused(tmp_path: Path) -> None:
    path = write_space(tmp_path, {**KNOBS, "train.val_every": {"type": "categorical", "choices": [1, 2]}}, fixed={})
    text = str(refusal(path))
    assert f"{path}: key 'params.train.val_every'" in text
    assert "median/percentile pruners compare trials' reports at the same step" in text


def test_bad_sampler_and_pruner_names_list_the_choices(tmp_path: Path) -> None:
    study = {"sampler": {"type": "tpee"}, "pruner": {"type": "medain"}}
    lines = refusal(write_space(tmp_path, study=study)).problems
    assert any(str(tmp_path) in l and "key 'study.sampler': `type` must be one of tpe, random, gp, cmaes, qmc, grid, but got 'tpee'" in l for l in lines)
    assert any("key 'study.pruner': `type` must be one of median, percentile, successive_halving, hyperband, none" in l for l in lines)


def test_wrong_sampler_arguments_are_refused_before_any_trial(tmp_path: Path) -> None:
    text = str(refusal(write_space(tmp_path, study={"pruner": {"type": "percentile"}})))
    assert "PercentilePruner" in text and "percentile" in text


def test_unknown_condition_and_cycles_are_refused(tmp_path: Path) -> None:
    params = {
        "model.fold_div": {"type": "categorical", "choices": [4, 8], "when": {"model.aggregate": "mean"}},
        "model.aggregate": {"type": "categorical", "choices": ["mean", "attention"], "when": {"model.fold_div": 4}},
        "loss.type": {"type": "categorical", "choices": ["bce"], "when": {"optim.nope": 1}},
    }
    lines = refusal(write_space(tmp_path, params)).problems
    assert any("cycle" in l and "model.fold_div" in l and "model.aggregate" in l for l in lines)
    assert any("key 'params.loss.type.when'" in l and "'optim.nope'" in l for l in lines)


def test_missing_base_and_enqueue_files_are_refused(tmp_path: Path) -> None:
    path = write_space(tmp_path, base=["../nope.yaml"], study={"enqueue": ["gone.yaml"]})
    lines = refusal(path).problems
    assert any("key 'base': each file must exist" in l and "nope.yaml" in l for l in lines)
    assert any("key 'study.enqueue': each file must exist" in l and "gone.yaml" in l for l in lines)


def test_enqueued_config_outside_the_space_is_refused_at_load(tmp_path: Path) -> None:
    params = {**KNOBS, "optim.lr": {"type": "float", "low": 1.0e-5, "high": 5.0e-4, "log": True}}
    path = write_space(tmp_path, params, study={"enqueue": [str(ROOT / "baseline.yaml")]})
    text = str(refusal(path))
    assert "baseline.yaml" in text and "param 'optim.lr'" in text and "value=0.001" in text


def test_factories_build_the_named_optuna_objects() -> None:
    assert isinstance(build_sampler({"type": "random"}, seed=1), optuna.samplers.RandomSampler)
    assert isinstance(build_sampler({"type": "tpe", "n_startup_trials": 3}), optuna.samplers.TPESampler)
    assert isinstance(build_pruner({"type": "median", "n_warmup_steps": 2}), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner({"type": "hyperband"}), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner({"type": "none"}), optuna.pruners.NopPruner)
    with pytest.raises(SpaceError, match="must be one of tpe, random, gp, cmaes, qmc, grid, but got 'nope'"):
        build_sampler({"type": "nope"})


def _pruning_space(tmp_path: Path, val_every: int, **pruner) -> SearchSpace:
    study = {"direction": "maximize", "metric": "video_auc", "pruner": {"type": "median", "n_startup_trials": 1, **pruner}}
    return load_space(write_space(tmp_path, fixed={"train.val_every": val_every}, study=study))


def _finish_trials(study: optuna.Study, curve: list[float], epochs: list[int], n: int = 2) -> None:
    """n complete trials reporting `curve` at `epochs` (steps are epochs, as PruningReporter reports them)."""
    for _ in range(n):
        trial = study.ask()
        for value, epoch in zip(curve, epochs):
            trial.report(value, step=epoch)
        study.tell(trial, max(curve))


@pytest.mark.parametrize("val_every", [1, 2])
def test_pruner_warmup_counts_validations_whatever_val_every(tmp_path: Path, val_every: int) -> None:
    space = _pruning_space(tmp_path, val_every, n_warmup_steps=1)
    study = optuna.create_study(direction="maximize", pruner=space.pruner())
    epochs = [j * val_every for j in (1, 2, 3)]  # validation j sits at epoch j * val_every
    _finish_trials(study, [0.9, 0.9, 0.9], epochs)
    bad = study.ask()
    bad.report(0.1, step=epochs[0])
    assert not bad.should_prune(), f"n_warmup_steps: 1 must keep the first validation (epoch {epochs[0]}) safe"
    bad.report(0.1, step=epochs[1])
    assert bad.should_prune(), f"pruning must start at the second validation (epoch {epochs[1]})"


def test_pruner_interval_counts_validations(tmp_path: Path) -> None:
    space = _pruning_space(tmp_path, 2, n_warmup_steps=0, interval_steps=2)
    study = optuna.create_study(direction="maximize", pruner=space.pruner())
    epochs = [2, 4, 6, 8]
    _finish_trials(study, [0.5, 0.6, 0.7, 0.8], epochs)
    lagging = study.ask()  # above the median at validation 1, below it from validation 2 on
    checked = []
    for epoch in epochs[:3]:
        lagging.report(0.55, step=epoch)
        checked.append(lagging.should_prune())
    # Every 2nd validation is checked from the first: 1 (kept, above the median), not 2, then 3 (pruned).
    assert checked == [False, False, True]


def test_pruner_warmup_and_interval_must_be_whole_validation_counts(tmp_path: Path) -> None:
    lines = refusal(write_space(tmp_path, study={"pruner": {"type": "median", "n_warmup_steps": -1, "interval_steps": 0}})).problems
    assert any("`n_warmup_steps` counts validations, so it must be a whole number >= 0, but got -1" in l for l in lines)
    assert any("`interval_steps` counts validations, so it must be a whole number >= 1, but got 0" in l for l in lines)


def test_base_dict_layers_base_overlays_and_fixed() -> None:
    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    data = space.base_dict()
    assert data["data"]["source"] == "synthetic" and data["train"]["val_every"] == 1
    assert data["optim"]["lr"] == 0.001


@pytest.mark.parametrize(
    "params",
    [
        {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
        {"model.aggregate": {"type": "categorical", "choices": ["mean", "attention"]}},
    ],
    ids=["float", "categorical"],
)
def test_a_space_without_enqueue_gives_the_base_config_before_any_trial(tmp_path: Path, params: dict) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"base": [str(ROOT / "baseline.yaml")], "params": params}))
    space = load_space(path)
    assert space.study.enqueue == () and space.enqueue_params() == []
    # What a sweep prepares its data and tracking from when nothing is enqueued: the base as written.
    assert space.first_config() == space.base_config() == load_config([ROOT / "baseline.yaml"])


def test_an_invalid_base_is_refused_at_load_when_nothing_is_enqueued(tmp_path: Path) -> None:
    # Every trial would set loss.gamma, but the sweep prepares its data from the base, which lacks it.
    path = write_space(tmp_path, {"loss.gamma": {"type": "float", "low": 1.0, "high": 4.0}},
                       fixed={"train.val_every": 1, "loss.type": "focal_bce", "loss.auto_pos_weight": False})
    with pytest.raises(SpaceError, match=r"base \+ overlays \+ fixed: loss.type=focal_bce needs loss.gamma"):
        load_space(path)


def test_a_misspelt_study_metric_is_refused_at_load_with_the_names_allowed(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"base": [str(ROOT / "baseline.yaml")], "study": {"metric": "video_acu"},
                                    "params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}))
    with pytest.raises(SpaceError, match=r"study.metric must be one of .*video_auc.*but got 'video_acu'"):
        load_space(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "params",
    [
        {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
        {"model.aggregate": {"type": "categorical", "choices": ["mean", "attention"]}},
    ],
    ids=["float", "categorical"],
)
def test_a_minimal_space_without_enqueue_sweeps_end_to_end(
    params: dict, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from harness.cli import main
    from harness.sweep.storage import open_storage

    monkeypatch.chdir(tmp_path)
    tiny = {
        "data": {"source": "ffpp", "root": str(synthetic_root), "input_size": 32, "cache_dir": str(tmp_path / "cache")},
        "train": {"epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    space = {"base": [str(ROOT / "baseline.yaml")], "overlays": [str(ROOT / "configs" / "demo.yaml"), "tiny.yaml"],
             "params": params}  # no `study:` at all: its defaults, and nothing enqueued
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    journal = str(tmp_path / "optuna.journal")
    assert main(["sweep", "--space", str(tmp_path / "space.yaml"), "--trials", "2", "--storage", journal,
                 "--study-name", "minimal", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--quiet"]) == 0
    # The runs page in the UI's model-training view, with what serves it.
    experiment = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("harness").experiment_id
    assert (f"compare them: `mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}`, then open "
            f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?workflowType=machine_learning"
            in capsys.readouterr().out)

    trials = optuna.load_study(study_name="minimal", storage=open_storage(journal)).get_trials()
    (name,) = params
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert set(trial.params) == {name} and "enqueued_from" not in trial.user_attrs
        section, key = name.split(".")
        assert trial.user_attrs["config"][section][key] == trial.params[name]
