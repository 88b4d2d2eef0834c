"""The search-space file format: pydantic models of what a space YAML may say, and its checks.

A space file (paths relative to itself):

    base: [../baseline.yaml]        # configs layered left to right, each with its own `base:` chain
    overlays: [../configs/demo.yaml]
    fixed: {train.val_every: 1}     # dotted keys every trial shares
    study:
      direction: maximize
      metric: video_auc
      sampler: {type: tpe, seed: 0}                 # tpe, random, gp, cmaes, qmc or grid; kwargs go to Optuna's class
      pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 2}   # warm-up in validations, not epochs
      enqueue: [../baseline.yaml, ../recommended.yaml]                  # optional: the first trials
    params:
      optim.lr: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}
      loss.type: {type: categorical, choices: [bce, focal_bce]}
      loss.gamma: {type: float, low: 0.5, high: 4.0, when: {loss.type: focal_bce}, otherwise: {loss.gamma: null}}
      balance:                      # a bundle: a named choice of several keys at once
        type: categorical
        when: {loss.type: bce}
        choices:
          pos_weight: {loss.auto_pos_weight: true, data.sampler: none}
          sampler: {loss.auto_pos_weight: false, data.sampler: balanced}
        otherwise: {loss.auto_pos_weight: false, data.sampler: none}

A scalar param is named by the config key it sets; a bundle (choices given as a mapping) has a free
name and Optuna records the choice name. `when:` makes a param conditional on other categorical
params (all listed must hold); `otherwise:` says what its keys become while it is inactive, so that
every trial config is complete and valid. Each config key belongs to one param (or to `fixed:`), so
a config maps back to params.

`read_space_file` checks in two steps. The models check the file's shape (fields, types, ranges, the
sampler and pruner arguments, that the named files exist); then the meaning against the run config's
schema (keys, each value and range against its key's type, conditions). Each step reports every
problem it finds at once, one line each in the run config's form: `<file>: key '<key>': <problem>`.
A new kind of param is one more model in `_PARAM_MODELS`, with its `distribution` and `schema_problems`.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType, NoneType
from typing import Annotated, Any, Callable, Literal, Mapping, Union

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from harness.config.keys import key_problem, normalise, number_type, type_name, value_problem
from harness.config.loading import flatten, problem_line, validation_problems
from harness.errors import SpaceError

__all__ = [
    "SpaceFile",
    "StudyFile",
    "ParamSpec",
    "FloatParam",
    "IntParam",
    "CategoricalParam",
    "BundleParam",
    "read_space_file",
    "build_sampler",
    "build_pruner",
    "same_choice",
    "SAMPLERS",
    "PRUNERS",
    "SCHEDULE_KEYS",
]

SAMPLERS: Mapping[str, type[optuna.samplers.BaseSampler]] = MappingProxyType(
    {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
        "grid": optuna.samplers.GridSampler,
    }
)
# What a sampler cannot search, Optuna hands to its random fallback with no more than a log line, so
# `SpaceFile._sampler_problems` refuses such a space (key study.sampler.type):
# - tpe, random: any space, conditions included.
# - gp: ranges and categorical params (Optuna 5's GP has a kernel for categories), none conditional.
# - qmc: ranges and categorical params (each categorical param is one coordinate of the sequence), none conditional.
# - cmaes: int and float ranges only (CMA-ES has no categories), none conditional; needs the `cmaes` package.
# - grid: every combination of the params' values, so every param categorical, int, or float with `step`,
#   none conditional.
_NO_CONDITIONS: Mapping[str, str] = MappingProxyType(
    {
        "gp": "a param missing from some trials drops out of the GP's search space and is sampled at random",
        "qmc": "QMC takes its search space from the first trial and samples any other param at random",
        "cmaes": "CMA-ES keeps one search space and samples a param missing from some trials at random",
        "grid": "the grid holds each param's values, so an inactive param would rerun one trial once per value",
    }
)
# A sweep runs one trial per grid point, tens of them for a video model, and Optuna lists every point in
# memory: a larger grid is a `step` set too fine.
_MAX_GRID_POINTS = 10_000

# Hyperband runs several successive-halving brackets side by side and splits the trials among
# them, so it needs many trials (dozens per bracket) before it prunes sensibly; with the 20-50
# trials a video model affords, median or percentile is the better default.
PRUNERS: Mapping[str, type[optuna.pruners.BasePruner]] = MappingProxyType(
    {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
)

# Trials report validation metrics at step = epoch. Pruners compare trials' reports at the same
# step, so every trial of a study must validate on the same schedule.
SCHEDULE_KEYS = ("train.val_every", "train.epochs")
# Pruners whose `n_warmup_steps` and `interval_steps` a space file gives in validations, not epochs.
_COUNTS_VALIDATIONS = ("median", "percentile")
# Optuna stores categorical choices as JSON scalars; anything else must be a named bundle.
_OPTUNA_SCALARS = (NoneType, bool, int, float, str)


def build_sampler(
    spec: Mapping[str, Any], seed: int | None = None, distributions: Mapping[str, BaseDistribution] | None = None
) -> optuna.samplers.BaseSampler:
    """`{type: tpe, seed: 0, ...}` -> the Optuna sampler; `seed` (e.g. from the CLI) wins over the spec's.

    `distributions` (the space's, `SearchSpace.distributions()`) are what `grid` enumerates; the
    other samplers learn the space from the trials and need none.
    """
    kwargs = dict(spec)
    kind = kwargs.pop("type", "tpe")
    if kind not in SAMPLERS:
        raise SpaceError(f"sampler `type` must be one of {', '.join(SAMPLERS)}, but got {kind!r}")
    if seed is not None:
        kwargs["seed"] = seed
    with warnings.catch_warnings():
        # QMC and some CMA-ES arguments are "experimental" in Optuna 5; a space file names them on purpose.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind != "grid":
            return SAMPLERS[kind](**kwargs)
        if "search_space" in kwargs:
            raise TypeError("grid takes no `search_space` argument: its grid is every combination of the params' values")
        if distributions is None:
            raise ValueError("a grid is built from the space's params, so `distributions` must be given, but got None")
        return _SweepGridSampler({name: _grid_values(d) for name, d in distributions.items()}, **kwargs)


def _grid_values(distribution: BaseDistribution) -> list[Any]:
    """Every value a categorical, int, or stepped float distribution holds, low to high."""
    d = distribution
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution):
        return list(range(d.low, d.high + 1, d.step))
    if isinstance(d, FloatDistribution) and d.step is not None:
        # Optuna has already moved `high` onto the low + k * step grid; min() keeps rounding from passing it.
        return [min(d.low + k * d.step, d.high) for k in range(round((d.high - d.low) / d.step) + 1)]
    raise ValueError(f"a grid needs a finite set of values, so a float range needs `step`, but got {d}")


class _SweepGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its `study.stop()` once every grid point has run.

    That call ends `study.optimize`, but from `study.tell` in the sweep's ask/tell loop it raises
    RuntimeError; the sweep stops at --trials instead (past the grid, Optuna reruns grid points).
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def build_pruner(spec: Mapping[str, Any] | None, val_every: int = 1) -> optuna.pruners.BasePruner:
    """`{type: median, n_startup_trials: 5, n_warmup_steps: 2}` -> the Optuna pruner.

    `n_warmup_steps` and `interval_steps` count validations in a space file and become Optuna's
    steps (epochs) here, for a study that validates every `val_every` epochs (see
    `_validations_as_steps`); the other arguments pass through as they are.
    """
    kwargs = dict(spec or {})
    kind = kwargs.pop("type", "median")
    if kind not in PRUNERS:
        raise SpaceError(f"pruner `type` must be one of {', '.join(PRUNERS)}, but got {kind!r}")
    if kind in _COUNTS_VALIDATIONS:
        kwargs.update(_validations_as_steps(kwargs.get("n_warmup_steps", 0), kwargs.get("interval_steps", 1), val_every))
    return PRUNERS[kind](**kwargs)


def _validations_as_steps(warmup: Any, interval: Any, val_every: int) -> dict[str, int]:
    """Warm-up and interval in validations -> Optuna's `n_warmup_steps` and `interval_steps` in epochs.

    Trials report validation j at step j * val_every (steps are epochs, from 1), and Optuna prunes
    once `step >= n_warmup_steps`, so k taken as k steps would, with val_every 1, already prune at
    validation k. Warm-up k * val_every + 1 keeps the first k validations safe and lets pruning start
    at validation k + 1. From there Optuna checks the first report in each interval of m * val_every
    epochs, which holds m validations, so every m-th validation is checked. The last epoch validates
    even off the val_every grid; it is the first report of its interval, so m = 1 checks it too.
    """
    problems = [
        f"`{name}` counts validations, so it must be a whole number >= {least}, but got {value!r}"
        for name, value, least in (("n_warmup_steps", warmup, 0), ("interval_steps", interval, 1))
        if isinstance(value, bool) or not isinstance(value, int) or value < least
    ]
    if problems:
        raise ValueError("; ".join(problems))
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 1:
        raise ValueError(f"train.val_every must be a whole number >= 1, but got {val_every!r}")
    return {"n_warmup_steps": warmup * val_every + 1, "interval_steps": interval * val_every}


def same_choice(a: Any, b: Any) -> bool:
    """Equal as choices: True == 1 in Python, but a bool choice and an int choice are different values here."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


# --- field types -----------------------------------------------------------------------------------


def _yaml_number(value: Any) -> Any:
    # PyYAML reads `1e-5` (no dot) as a string; accept it rather than punish the YAML 1.1 quirk.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _whole_number(value: Any) -> Any:
    value = _yaml_number(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_scalar(value: Any) -> Any:
    if not isinstance(value, _OPTUNA_SCALARS):
        raise ValueError(
            f"a choice must be null, bool, int, float or str (Optuna stores it), but got {value!r}; use a named bundle"
        )
    return value


def _existing_files(value: Any, info: ValidationInfo) -> tuple[Path, ...]:
    """File names, relative to the space file's folder (the validation context's `folder`) -> paths."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"must be a file name or a list of them, but got {value!r}")
    folder = Path((info.context or {}).get("folder", "."))
    paths = tuple(folder / n for n in names)
    missing = [f"each file must exist, but got '{n}' (looked for {p})" for n, p in zip(names, paths) if not p.is_file()]
    if missing:
        raise ValueError("\n".join(missing))
    return paths


Number = Annotated[float, BeforeValidator(_yaml_number)]
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
Choice = Annotated[Any, AfterValidator(_json_scalar)]
Files = Annotated[tuple[Path, ...], BeforeValidator(_existing_files)]
# Dotted config keys -> values; nested mappings are allowed and read as dotted keys. The keys and values are
# checked against the config schema once the file's shape is right (`schema_problems`).
Settings = dict[str, Any]


def _factory_spec(registry: Mapping[str, type], build: Callable[[dict[str, Any]], object]) -> Any:
    """A sampler or pruner field: `{type: <registry name>, kwargs...}` (or just the name), built once to check it."""
    def check(value: Any) -> dict[str, Any]:
        value = {"type": value} if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise ValueError(f"must be {{type: ..., kwargs...}}, but got {value!r}")
        kind = value.get("type")
        if kind not in registry:
            raise ValueError(f"`type` must be one of {', '.join(registry)}, but got {kind!r}")
        try:  # build it once now, so a wrong argument fails before any trial runs
            build(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"arguments must suit optuna's {registry[kind].__name__}, but got {exc}") from None
        return value

    return Annotated[dict[str, Any], BeforeValidator(check)]


# Built once with no params, to check the arguments; `SpaceFile._sampler_problems` checks the sampler against them.
SamplerSpec = _factory_spec(SAMPLERS, lambda spec: build_sampler(spec, distributions={}))
PrunerSpec = _factory_spec(PRUNERS, build_pruner)


class _FileModel(BaseModel):
    # Unknown fields are refused, and values are taken as YAML typed them (strict), never coerced; only a
    # `Number` also reads the text PyYAML makes of `1e-5`.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # An empty YAML entry (`fixed:`) reads as null; it means the same as leaving the field out.
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


# --- params --------------------------------------------------------------------------------------


# A problem found against the schema: (the key in the file, relative to where it was found; what is wrong).
Problem = tuple[str, str]


def _settings_problems(settings: Mapping[str, Any], where: str) -> list[Problem]:
    return [
        (where, problem)
        for key, value in flatten(settings).items()
        if (problem := key_problem(key) or value_problem(key, value))
    ]


class _Param(_FileModel):
    when: dict[str, Choice | list[Choice]] = {}
    otherwise: Settings = {}

    def config_key(self, name: str) -> str | None:
        """The config key a scalar param sets (its name); None for a bundle."""
        return name

    def keys(self, name: str) -> tuple[str, ...]:
        """Every config key the param sets."""
        return (name,)

    def bundles(self) -> dict[str, dict[str, Any]]:
        """choice -> {dotted key: value}, for a bundle; empty for a scalar param."""
        return {}

    def conditions(self) -> dict[str, tuple[Any, ...]]:
        """param -> the values any of which makes this param active."""
        return {ref: tuple(v) if isinstance(v, list) else (v,) for ref, v in self.when.items()}

    def distribution(self, name: str) -> BaseDistribution:
        raise NotImplementedError(f"{type(self).__name__} must say which Optuna distribution it searches")

    def schema_problems(self, name: str) -> list[Problem]:
        """What the config schema refuses in this param ("" as the key: the param itself); empty when it is fine."""
        problems = [
            ("", f"the validation schedule must be the same for every trial, because median/percentile pruners "
            f"compare trials' reports at the same step (epoch), but '{key}' is searched; set it under `fixed:`")
            for key in self.keys(name)
            if key in SCHEDULE_KEYS
        ]
        problems.extend(_settings_problems(self.otherwise, "otherwise"))
        if self.otherwise and not self.when:
            problems.append(
                ("otherwise", "`otherwise` sets keys while the param is inactive, so it needs `when:`, but got no `when:`")
            )
        stray = [k for k in flatten(self.otherwise) if k not in self.keys(name)]
        if stray:
            own = sorted(self.keys(name))
            problems.append(("otherwise", f"`otherwise` may set only the param's own keys {own}, but got {', '.join(stray)}"))
        return problems


class _Range(_Param):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _is_a_range(self) -> _Range:
        self.distribution("")  # Optuna's own checks: "`low <= high` must hold, but got (low=..., high=...)"
        if self.low == self.high:
            raise ValueError(
                f"`low < high` must hold for a searched param (put one value under `fixed:`), "
                f"but got (low={self.low}, high={self.high})"
            )
        return self

    def _end_problems(self, name: str) -> list[Problem]:
        dist = self.distribution(name)
        ends = {"low": dist.low, "high": dist.high}
        return [(bound, problem) for bound, end in ends.items() if (problem := value_problem(name, end))]


class FloatParam(_Range):
    type: Literal["float"]
    low: Number
    high: Number
    step: Number | None = None

    def distribution(self, name: str) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def schema_problems(self, name: str) -> list[Problem]:
        if problem := key_problem(name):
            return [("", problem)]
        numeric = number_type(name)
        if numeric is not float:
            fix = "use type: int" if numeric is int else "use type: categorical"
            return [("type", f"a float range needs a float key, but '{name}' holds {type_name(name)}; {fix}")]
        return [*super().schema_problems(name), *self._end_problems(name)]


class IntParam(_Range):
    type: Literal["int"]
    low: WholeNumber
    high: WholeNumber
    step: WholeNumber = 1

    def distribution(self, name: str) -> IntDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def schema_problems(self, name: str) -> list[Problem]:
        if problem := key_problem(name):
            return [("", problem)]
        if number_type(name) is None:
            holds = type_name(name)
            return [("type", f"an int range needs a numeric key, but '{name}' holds {holds}; use type: categorical")]
        return [*super().schema_problems(name), *self._end_problems(name)]


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)

    def _normalised(self, name: str) -> list[Any]:
        # The schema's form (1 -> 1.0 for a float key), unless Optuna could not store it (a Path).
        if key_problem(name):
            return list(self.choices)
        return [v if isinstance(v := normalise(name, c), _OPTUNA_SCALARS) else c for c in self.choices]

    def distribution(self, name: str) -> CategoricalDistribution:
        return CategoricalDistribution(self._normalised(name))

    def schema_problems(self, name: str) -> list[Problem]:
        if problem := key_problem(name):
            return [("", problem)]
        problems = [(f"choices.{i}", problem) for i, c in enumerate(self.choices) if (problem := value_problem(name, c))]
        choices = self._normalised(name)
        if not problems and any(same_choice(a, b) for i, a in enumerate(choices) for b in choices[i + 1 :]):
            problems.append(("choices", f"choices must differ, but got {self.choices}"))
        return [*super().schema_problems(name), *problems]


class BundleParam(_Param):
    type: Literal["categorical"]
    choices: dict[str, Annotated[Settings, Field(min_length=1)]] = Field(min_length=1)

    def config_key(self, name: str) -> None:
        return None

    def keys(self, name: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for bundle in self.bundles().values() for k in bundle))

    def bundles(self) -> dict[str, dict[str, Any]]:
        return {choice: flatten(settings) for choice, settings in self.choices.items()}

    def distribution(self, name: str) -> CategoricalDistribution:
        return CategoricalDistribution(list(self.choices))

    def schema_problems(self, name: str) -> list[Problem]:
        problems = []
        if not key_problem(name):
            problems.append(("", f"a bundle's name must not be a config key, but got '{name}'; give the bundle its own name"))
        for choice, settings in self.choices.items():
            problems.extend(_settings_problems(settings, f"choices.{choice}"))
        key_sets = {choice: sorted(bundle) for choice, bundle in self.bundles().items()}
        if len({tuple(keys) for keys in key_sets.values()}) > 1:
            problems.append((
                "choices",
                f"every choice of a bundle must set the same keys, so none inherits another's from the base, but got {key_sets}",
            ))
        return [*super().schema_problems(name), *problems]


def _param_kind(raw: Any) -> str | None:
    """The model a param's mapping is read with: its `type`, or `bundle` for categorical choices given as a mapping."""
    if isinstance(raw, _Param):
        return "bundle" if isinstance(raw, BundleParam) else raw.type  # type: ignore[attr-defined]
    if not isinstance(raw, dict) or raw.get("type") not in ("float", "int", "categorical"):
        return None
    return "bundle" if raw["type"] == "categorical" and isinstance(raw.get("choices"), dict) else raw["type"]


_PARAM_MODELS: Mapping[str, type[_Param]] = MappingProxyType(
    {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam, "bundle": BundleParam}
)
ParamSpec = Annotated[
    Union[tuple(Annotated[model, Tag(tag)] for tag, model in _PARAM_MODELS.items())],  # type: ignore[misc]
    Discriminator(
        _param_kind,
        custom_error_type="param_type",
        custom_error_message="a param must be a mapping whose `type` is one of float, int, categorical",
    ),
]


# --- the file --------------------------------------------------------------------------------------


class StudyFile(_FileModel):
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: str = Field("video_auc", min_length=1, description="what trials report and the study optimises")
    sampler: SamplerSpec = {"type": "tpe", "seed": 0}
    pruner: PrunerSpec = {"type": "median"}
    enqueue: Files = Field((), description="configs whose params become the first trials; optional")


def _some_file(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    if not paths:
        raise ValueError("must name at least one config file (e.g. [../baseline.yaml]), but got none")
    return paths


class SpaceFile(_FileModel):
    base: Annotated[Files, AfterValidator(_some_file)] = Field((), validate_default=True)
    overlays: Files = ()
    fixed: Settings = {}
    study: StudyFile = StudyFile()
    params: dict[str, ParamSpec] = {}

    def ordered_params(self) -> list[str]:
        """Param names in file order, each moved only as far as needed to come after the params its `when` names.

        Params in a `when` cycle cannot be ordered and are left out.
        """
        ordered: list[str] = []
        pending = list(self.params)

        def ready(name: str) -> bool:
            return all(ref in ordered or ref not in self.params for ref in self.params[name].when)

        while (name := next(filter(ready, pending), None)) is not None:
            ordered.append(name)
            pending.remove(name)
        return ordered

    def schema_problems(self) -> list[Problem]:
        """(key in this file, message) for everything the config schema or the other params refuse."""
        problems = _settings_problems(self.fixed, "fixed")
        for name, spec in self.params.items():
            problems.extend((f"params.{name}.{key}" if key else f"params.{name}", p) for key, p in spec.schema_problems(name))
        fixed = flatten(self.fixed)
        owners: dict[str, list[str]] = {}
        for name, spec in self.params.items():
            for key in spec.keys(name):
                owners.setdefault(key, []).append(name)
        for key, names in owners.items():
            if len(names) > 1:
                shared = f"a config key must belong to one param, but '{key}' is set by params {', '.join(names)}"
                problems.append(("params", shared))
            if key in fixed:
                problems.append((f"params.{names[0]}", f"a key is either searched or fixed, but '{key}' is both"))
        problems.extend(self._condition_problems())
        problems.extend(self._sampler_problems())
        return problems

    def _sampler_problems(self) -> list[Problem]:
        """What the study's sampler cannot search in these params (see `SAMPLERS`), one line per reason."""
        kind = self.study.sampler["type"]
        problems: list[str] = []
        if kind == "cmaes" and importlib.util.find_spec("cmaes") is None:
            problems.append("cmaes needs the `cmaes` package (pip install 'harness[samplers]'), but it is not installed")
        conditional = [name for name, spec in self.params.items() if spec.when]
        if kind in _NO_CONDITIONS and conditional:
            problems.append(
                f"{kind} needs every param in every trial ({_NO_CONDITIONS[kind]}), but got conditional params "
                f"(`when`): {', '.join(conditional)}; use tpe, which searches conditions"
            )
        categorical = [name for name, spec in self.params.items() if isinstance(spec, (CategoricalParam, BundleParam))]
        if kind == "cmaes" and categorical:
            problems.append(
                f"cmaes searches int and float ranges only (Optuna would sample categorical params at random "
                f"beside it), but got categorical params: {', '.join(categorical)}; use gp, or set them under `fixed:`"
            )
        if kind == "grid":
            unstepped = [name for name, spec in self.params.items() if isinstance(spec, FloatParam) and spec.step is None]
            if unstepped:
                problems.append(
                    f"grid needs a finite set of values per param (categorical, int, or float with `step`), but got "
                    f"float params without `step`: {', '.join(unstepped)}"
                )
            else:
                points = math.prod(len(_grid_values(spec.distribution(name))) for name, spec in self.params.items())
                if points > _MAX_GRID_POINTS:
                    problems.append(f"grid must hold at most {_MAX_GRID_POINTS} points (a trial each), but got {points}")
        return [("study.sampler.type", problem) for problem in problems]

    def _condition_problems(self) -> list[Problem]:
        problems = []
        for name, spec in self.params.items():
            for ref, allowed in spec.conditions().items():
                target = self.params.get(ref)
                where = f"params.{name}.when"
                if target is None:
                    names = ", ".join(self.params)
                    problems.append((where, f"`when` must name a param of this space ({names}), but got '{ref}'"))
                elif not isinstance(target, (CategoricalParam, BundleParam)):
                    problems.append((where, f"`when` must name a categorical param, but '{ref}' is a range"))
                else:
                    choices = target.distribution(ref).choices
                    missing = [v for v in allowed if not any(same_choice(v, c) for c in choices)]
                    if missing:
                        must = f"`when` values must be among {ref}'s choices {list(choices)}"
                        problems.append((where, f"{must}, but got {missing}"))
        ordered = self.ordered_params()
        cycle = [n for n in self.params if n not in ordered]
        if cycle:
            names = ", ".join(cycle)
            problems.append(("params", f"`when` conditions must not form a cycle, but got one among params {names}"))
        return problems


def _key_in_file(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as the key a reader finds in the file: the param model's tag is not in it."""
    parts = [str(p) for p in loc if p != "[key]"]
    if len(parts) > 2 and parts[0] == "params" and parts[2] in _PARAM_MODELS:
        del parts[2]
    return ".".join(parts)


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The fields allowed where an unknown one was found."""
    if loc and loc[0] == "params" and len(loc) == 3:
        model: type[BaseModel] = _PARAM_MODELS[str(loc[2])]
    else:
        model = StudyFile if loc == ("study",) else SpaceFile
    return list(model.model_fields)


def read_space_file(path: Path) -> SpaceFile:
    """Read and check a space file; raise SpaceError with every problem, one line each."""
    if not path.is_file():
        raise SpaceError(f"{path}: search space file must exist, but it was not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: search space must be valid YAML, but got: {exc}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: search space must be a YAML mapping, but got {type(raw).__name__}")
    try:
        space = SpaceFile.model_validate(raw, context={"folder": path.parent})
    except ValidationError as exc:
        problems = validation_problems(exc, str(path), _key_in_file, _fields_at)
        raise SpaceError(problems[0], problems) from None
    problems = [problem_line(str(path), key, message) for key, message in space.schema_problems()]
    if problems:
        raise SpaceError(problems[0], problems)
    return space
