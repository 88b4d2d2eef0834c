"""Search spaces as data: one YAML file becomes Optuna distributions, trial configs and enqueued trials.

A space file (paths relative to itself):

    base: [../baseline.yaml]        # configs layered left to right, each with its own `base:` chain
    overlays: [../configs/demo.yaml]
    fixed: {train.val_every: 1}     # dotted keys every trial shares
    study:
      direction: maximize
      metric: video_auc
      sampler: {type: tpe, seed: 0}                 # kwargs go to the Optuna class as they are
      pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 2}   # warm-up in validations, not epochs
      enqueue: [../baseline.yaml, ../recommended.yaml]
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

A scalar param is named by the config key it sets; a bundle has a free name and Optuna records the
choice name. `when:` makes a param conditional on other categorical params (all listed must hold);
`otherwise:` says what its keys become when it is inactive, so that every trial config is complete
and valid. Each config key belongs to one param (or to `fixed:`), so a config maps back to params.

`load_space` checks everything before a trial runs: keys against the schema, each distribution
against its key's type, ranges, conditions, sampler and pruner arguments, every combination of
the params' end points and choices through the full schema, and that each enqueued config is
representable. Every problem is reported at once, one line each, naming the file and the param.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, NoneType, UnionType
from typing import Annotated, Any, Iterator, Literal, Mapping, Union, get_args, get_origin

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from harness.config.loading import (
    config_from_dict,
    deep_merge,
    flatten,
    known_keys,
    read_layers,
    set_dotted,
)
from harness.config.schema import Config
from harness.errors import ConfigError, SpaceError

__all__ = ["SearchSpace", "Param", "StudySpec", "load_space", "build_sampler", "build_pruner", "SAMPLERS", "PRUNERS"]

SAMPLERS: Mapping[str, type[optuna.samplers.BaseSampler]] = MappingProxyType(
    {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
)

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

_TOP_FIELDS = ("base", "overlays", "fixed", "study", "params")
_STUDY_FIELDS = ("direction", "metric", "sampler", "pruner", "enqueue")
_PARAM_FIELDS = {
    "float": ("type", "low", "high", "log", "step", "when", "otherwise"),
    "int": ("type", "low", "high", "log", "step", "when", "otherwise"),
    "categorical": ("type", "choices", "when", "otherwise"),
}
# Optuna stores categorical choices as JSON scalars; anything else must be a named bundle.
_OPTUNA_SCALARS = (NoneType, bool, int, float, str)
# Above this many end-point combinations the check samples combinations instead of listing them.
_MAX_COMBINATIONS = 4096


def build_sampler(spec: Mapping[str, Any], seed: int | None = None) -> optuna.samplers.BaseSampler:
    """`{type: tpe, seed: 0, ...}` -> the Optuna sampler; `seed` (e.g. from the CLI) wins over the spec's."""
    kwargs = dict(spec)
    kind = kwargs.pop("type", "tpe")
    if kind not in SAMPLERS:
        raise SpaceError(f"sampler `type` must be one of {', '.join(SAMPLERS)}, but got {kind!r}")
    if seed is not None:
        kwargs["seed"] = seed
    return SAMPLERS[kind](**kwargs)


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


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python, but a bool choice and an int choice are different values here.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


@dataclass(frozen=True)
class Param:
    """One searched dimension: a config key (scalar) or a named choice of key bundles."""

    name: str
    distribution: BaseDistribution
    key: str | None = None  # the config key of a scalar param; None for a bundle
    bundles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # choice -> {key: value}
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # param -> allowed values
    otherwise: Mapping[str, Any] = field(default_factory=dict)  # key -> value while inactive

    @property
    def keys(self) -> tuple[str, ...]:
        if self.key is not None:
            return (self.key,)
        return tuple(dict.fromkeys(k for bundle in self.bundles.values() for k in bundle))

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether every condition holds for the values chosen so far (an inactive param is absent)."""
        return all(
            ref in values and any(_same(values[ref], ok) for ok in allowed) for ref, allowed in self.when.items()
        )

    def settings(self, value: Any) -> dict[str, Any]:
        return {self.key: value} if self.key is not None else dict(self.bundles[value])

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        d = self.distribution
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_categorical(self.name, d.choices)

    def representable(self, value: Any) -> tuple[Any, str | None]:
        """The value as Optuna records it, or why the distribution cannot hold it."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            for choice in d.choices:
                if _same(choice, value):
                    return choice, None
            return None, f"a value among the choices {list(d.choices)} must be given, but got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"a number must be given, but got {value!r}"
        if not d.low <= value <= d.high:
            return None, f"`low <= value <= high` must hold, but got (low={d.low}, value={value}, high={d.high})"
        if d.step is not None:
            k = round((value - d.low) / d.step)
            if not math.isclose(d.low + k * d.step, value, rel_tol=1e-9, abs_tol=1e-12):
                return None, f"a value on the grid low + k * step must be given, but got {value} (low={d.low}, step={d.step})"
        if isinstance(d, IntDistribution):
            if not float(value).is_integer():
                return None, f"an integer must be given, but got {value}"
            return int(value), None
        return float(value), None

    def describe_when(self) -> str:
        return ", ".join(f"{ref} in {list(allowed)}" for ref, allowed in self.when.items())


@dataclass(frozen=True)
class StudySpec:
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: str = "video_auc"
    sampler: Mapping[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: Mapping[str, Any] = field(default_factory=lambda: {"type": "median"})
    enqueue: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, checked space; the base files are read once, at load."""

    path: Path
    base: tuple[Path, ...]
    overlays: tuple[Path, ...]
    fixed: Mapping[str, Any]
    study: StudySpec
    params: tuple[Param, ...]  # in an order where every condition's params come first
    layers: Mapping[str, Any] = field(repr=False, default_factory=dict)  # merged base + overlays

    def base_dict(self) -> dict[str, Any]:
        """The raw merged mapping of base + overlays + fixed, before any param is applied."""
        data = copy.deepcopy(dict(self.layers))
        for key, value in self.fixed.items():
            set_dotted(data, key, copy.deepcopy(value))
        return data

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution for p in self.params}

    def sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        return build_sampler(self.study.sampler, seed)

    def val_every(self) -> int:
        """The study's validation interval in epochs: never searched (SCHEDULE_KEYS), so the base's, or fixed's."""
        return int(_reader(self.base_dict())("train.val_every"))

    def pruner(self) -> optuna.pruners.BasePruner:
        """The study's pruner, its warm-up and interval turned from validations into epochs."""
        return build_pruner(self.study.pruner, self.val_every())

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Ask the trial for each active param in order; bundles come back as their choice name."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.is_active(values):
                values[p.name] = p.suggest(trial)
        return values

    def config_for(self, params: Mapping[str, Any]) -> Config:
        """Base + fixed + the params (bundles expanded) -> a validated Config; also for a finished trial."""
        data = self._trial_dict(params)
        try:
            return config_from_dict(data, f"{self.path} with params {dict(params)}")
        except ConfigError as exc:
            raise SpaceError(exc.problems[0], exc.problems) from None

    def params_for_config(self, config: Path | str | Config | Mapping[str, Any]) -> dict[str, Any]:
        """The values of the active params a config implies, for `study.enqueue_trial`.

        The config is layered over base + overlays, then `fixed` is applied: fixed keys (such as the
        validation schedule) win, because one study must use one schedule for all its trials.
        """
        if isinstance(config, (str, Path)):
            source = str(config)
            try:
                raw = read_layers([Path(config)])
            except ConfigError as exc:
                raise SpaceError(exc.problems[0], exc.problems) from None
        else:
            source = "the given config"
            raw = config.model_dump() if isinstance(config, BaseModel) else dict(config)
        merged = deep_merge(self.layers, raw)
        for key, value in self.fixed.items():
            set_dotted(merged, key, value)
        read = _reader(merged)

        where = f"{self.path}: enqueued {source}"
        values: dict[str, Any] = {}
        problems: list[str] = []
        for p in self.params:
            if not p.is_active(values):
                continue
            if p.key is not None:
                value, why = p.representable(read(p.key))
                if why is not None:
                    problems.append(f"{where}: param '{p.name}': {why}")
                    continue
                values[p.name] = value
                continue
            found = [name for name, bundle in p.bundles.items() if all(_same(_normalise(k, v), read(k)) for k, v in bundle.items())]
            if not found:
                has = ", ".join(f"{k}={read(k)!r}" for k in p.keys)
                problems.append(
                    f"{where}: param '{p.name}': the config must match one of its choices {list(p.bundles)}, but got ({has})"
                )
                continue
            values[p.name] = found[0]
        if not problems:
            problems = self._round_trip_problems(values, read, where)
        if problems:
            raise SpaceError(problems[0], problems)
        return values

    def enqueue_params(self) -> list[dict[str, Any]]:
        """Params of each `study.enqueue` config, in order: they become the study's first trials."""
        return [self.params_for_config(p) for p in self.study.enqueue]

    def _round_trip_problems(self, values: Mapping[str, Any], read: Any, where: str) -> list[str]:
        # What the trial would get must be what the config has, key by key: an inactive param's
        # `otherwise` (or the base's value) must agree with the config too.
        trial_read = _reader(self._trial_dict(values))
        problems = []
        for p in self.params:
            for key in p.keys:
                want, got = read(key), trial_read(key)
                if not _same(want, got):
                    state = "active" if p.name in values else f"inactive (it needs {p.describe_when()})"
                    problems.append(
                        f"{where}: param '{p.name}' is {state}, so a trial sets {key}={got!r}, "
                        f"but the config has {key}={want!r}"
                    )
        return problems

    def _trial_dict(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = [name for name in params if name not in {p.name for p in self.params}]
        problems = [
            f"{self.path}: params must be among {[p.name for p in self.params]}, but got '{name}'" for name in unknown
        ]
        data = self.base_dict()
        chosen: dict[str, Any] = {}
        for p in self.params:
            if not p.is_active(chosen):
                if p.name in params:
                    problems.append(
                        f"{self.path}: param '{p.name}' applies only when {p.describe_when()}, but got {p.name}={params[p.name]!r}"
                    )
                for key, value in p.otherwise.items():
                    set_dotted(data, key, copy.deepcopy(value))
                continue
            if p.name not in params:
                problems.append(f"{self.path}: param '{p.name}' is active, so it needs a value, but got none")
                continue
            value, why = p.representable(params[p.name])
            if why is not None:
                problems.append(f"{self.path}: param '{p.name}': {why}")
                continue
            chosen[p.name] = value
            for key, setting in p.settings(value).items():
                set_dotted(data, key, copy.deepcopy(setting))
        if problems:
            raise SpaceError(problems[0], problems)
        return data


# --- the schema, looked up by dotted key ---------------------------------------------------------


def _key_problem(key: str) -> str | None:
    """Why `key` is not a leaf of the config schema, or None."""
    prefix = ""
    for part in key.split("."):
        allowed = known_keys(prefix)
        if part not in allowed:
            here = f"under '{prefix}'" if prefix else "at the top level"
            return f"'{key}' must be a config key, but '{part}' is unknown; allowed {here}: {', '.join(allowed)}"
        prefix = f"{prefix}.{part}" if prefix else part
    if known_keys(key):
        return f"'{key}' must be a config key, but it names a section; choose one of its keys: {', '.join(known_keys(key))}"
    return None


def _field(key: str) -> FieldInfo:
    model: type[BaseModel] = Config
    *sections, leaf = key.split(".")
    for part in sections:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return model.model_fields[leaf]


@functools.cache  # a pure function of the (immutable) schema, so the cache holds no state
def _adapter(key: str) -> TypeAdapter:
    info = _field(key)
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(annotation)


def _normalise(key: str, value: Any) -> Any:
    """The value as the schema would hold it (e.g. '3e-4' -> 0.0003), or as given if it refuses it."""
    try:
        return _adapter(key).validate_python(value)
    except ValidationError:
        return value


def _value_problem(key: str, value: Any) -> str | None:
    try:
        _adapter(key).validate_python(value)
    except ValidationError as exc:
        return f"{key} must be valid for the schema, but got {value!r} ({exc.errors()[0]['msg']})"
    return None


def _reader(raw: Mapping[str, Any]) -> Any:
    """key -> the normalised value in a raw config mapping, or the schema default where it is absent."""
    flat = flatten(raw)

    def read(key: str) -> Any:
        if key in flat:
            return _normalise(key, flat[key])
        return _normalise(key, _field(key).get_default(call_default_factory=True))

    return read


def _numeric_type(annotation: Any) -> type | None:
    """int or float when the key holds that number (optionally None), else None."""
    if get_origin(annotation) is Annotated:
        return _numeric_type(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not NoneType]
        return _numeric_type(members[0]) if len(members) == 1 else None
    return annotation if annotation in (int, float) else None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) if get_origin(annotation) is None else str(annotation).replace("typing.", "")


# --- reading a space file ------------------------------------------------------------------------


def _number(value: Any) -> float | int | None:
    # PyYAML reads `1e-5` (no dot) as a string; accept it rather than punish the YAML 1.1 quirk.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _dotted_mapping(value: Any, where: str, what: str, problems: list[str]) -> dict[str, Any]:
    """A mapping of dotted keys (nested mappings allowed) -> values, each key and value checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where}: `{what}` must be a mapping of dotted config keys to values, but got {value!r}")
        return {}
    out = flatten(value)
    for key, setting in out.items():
        problem = _key_problem(key) or _value_problem(key, setting)
        if problem:
            problems.append(f"{where}: `{what}`: {problem}")
    return out


def _schedule_problem(key: str, where: str) -> str | None:
    if key not in SCHEDULE_KEYS:
        return None
    return (
        f"{where}: the validation schedule must be the same for every trial, because median/percentile "
        f"pruners compare trials' reports at the same step (epoch), but '{key}' is searched; set it under `fixed:`"
    )


def _parse_range(name: str, spec: Mapping[str, Any], where: str, problems: list[str]) -> BaseDistribution | None:
    kind = spec["type"]
    annotation = _field(name).annotation
    numeric = _numeric_type(annotation)
    if kind == "float" and numeric is not float:
        fix = "use type: int" if numeric is int else "use type: categorical"
        problems.append(f"{where}: a float range needs a float key, but '{name}' holds {_type_name(annotation)}; {fix}")
        return None
    if kind == "int" and numeric is None:
        problems.append(
            f"{where}: an int range needs a numeric key, but '{name}' holds {_type_name(annotation)}; use type: categorical"
        )
        return None
    bounds = {b: _number(spec.get(b)) for b in ("low", "high")}
    bad = [f"{b}={spec.get(b)!r}" for b, v in bounds.items() if v is None]
    if bad:
        problems.append(f"{where}: `low` and `high` must be numbers, but got ({', '.join(bad)})")
        return None
    low, high = bounds["low"], bounds["high"]
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        problems.append(f"{where}: `log` must be true or false, but got {log!r}")
        return None
    if step is not None and _number(step) is None:
        problems.append(f"{where}: `step` must be a number, but got {step!r}")
        return None
    try:
        if kind == "int":
            if not (float(low).is_integer() and float(high).is_integer() and (step is None or float(step).is_integer())):
                problems.append(f"{where}: an int range needs whole numbers, but got (low={low}, high={high}, step={step})")
                return None
            dist: BaseDistribution = IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        else:
            dist = FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(_number(step)))
    except ValueError as exc:  # Optuna's own checks: "`low <= high` must hold, but got (low=..., high=...)"
        problems.append(f"{where}: {exc}")
        return None
    if dist.low == dist.high:
        problems.append(
            f"{where}: `low < high` must hold for a searched param (put one value under `fixed:`), "
            f"but got (low={low}, high={high})"
        )
        return None
    for end in (dist.low, dist.high):
        problem = _value_problem(name, end)
        if problem:
            problems.append(f"{where}: {problem}")
    return dist


def _parse_param(name: Any, spec: Any, path: Path, problems: list[str]) -> Param | None:
    where = f"{path}: param '{name}'"
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: a param must be a mapping with `type:`, but got {spec!r}")
        return None
    kind = spec.get("type")
    if kind not in _PARAM_FIELDS:
        problems.append(f"{where}: `type` must be one of {', '.join(_PARAM_FIELDS)}, but got {kind!r}")
        return None
    extra = [f for f in spec if f not in _PARAM_FIELDS[kind]]
    if extra:
        allowed = ", ".join(_PARAM_FIELDS[kind])
        problems.append(f"{where}: fields of a {kind} param must be among {allowed}, but got {', '.join(map(str, extra))}")
    choices = spec.get("choices")
    is_bundle = kind == "categorical" and isinstance(choices, Mapping)

    before = len(problems)
    key: str | None = None
    bundles: dict[str, dict[str, Any]] = {}
    if is_bundle:
        if not _key_problem(str(name)):
            problems.append(f"{where}: a bundle's name must not be a config key, but got '{name}'; give the bundle its own name")
        dist = _parse_bundles(choices, where, bundles, problems)
    else:
        key = str(name)
        problem = _key_problem(key)
        if problem:
            problems.append(f"{where}: {problem}")
            return None
        dist = _parse_choices(key, choices, where, problems) if kind == "categorical" else _parse_range(key, spec, where, problems)
    for k in [key] if key else list(dict.fromkeys(k for b in bundles.values() for k in b)):
        problem = _schedule_problem(k, where)
        if problem:
            problems.append(problem)

    when: dict[str, tuple[Any, ...]] = {}
    raw_when = spec.get("when") or {}
    if not isinstance(raw_when, Mapping):
        problems.append(f"{where}: `when` must map params to a value or a list of values, but got {raw_when!r}")
    else:
        when = {str(ref): tuple(v) if isinstance(v, list) else (v,) for ref, v in raw_when.items()}
    otherwise = _dotted_mapping(spec.get("otherwise"), where, "otherwise", problems)
    if otherwise and not when:
        problems.append(f"{where}: `otherwise` sets keys while the param is inactive, so it needs `when:`, but got no `when:`")
    own = {key} if key else {k for b in bundles.values() for k in b}
    stray = [k for k in otherwise if k not in own]
    if stray:
        problems.append(f"{where}: `otherwise` may set only the param's own keys {sorted(own)}, but got {', '.join(stray)}")
    if len(problems) > before or dist is None:
        return None
    return Param(str(name), dist, key, bundles, when, otherwise)


def _parse_choices(key: str, choices: Any, where: str, problems: list[str]) -> BaseDistribution | None:
    if not isinstance(choices, list) or not choices:
        problems.append(f"{where}: `choices` must be a non-empty list (or a mapping name -> keys for a bundle), but got {choices!r}")
        return None
    normalised = []
    for choice in choices:
        if not isinstance(choice, _OPTUNA_SCALARS):
            problems.append(
                f"{where}: a choice must be null, bool, int, float or str (Optuna stores it), "
                f"but got {choice!r}; use a named bundle"
            )
            continue
        problem = _value_problem(key, choice)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        value = _normalise(key, choice)
        # Keep the schema's form (1 -> 1.0 for a float key) unless Optuna could not store it (a Path).
        normalised.append(value if isinstance(value, _OPTUNA_SCALARS) else choice)
    if len(normalised) != len(choices):
        return None
    if any(_same(a, b) for a, b in itertools.combinations(normalised, 2)):
        problems.append(f"{where}: choices must differ, but got {choices}")
        return None
    return CategoricalDistribution(normalised)


def _parse_bundles(
    choices: Mapping[Any, Any], where: str, out: dict[str, dict[str, Any]], problems: list[str]
) -> BaseDistribution | None:
    if not choices:
        problems.append(f"{where}: a bundle needs at least one choice, but got none")
        return None
    for name, bundle in choices.items():
        if not isinstance(name, str) or not isinstance(bundle, Mapping) or not bundle:
            problems.append(f"{where}: a bundle choice must map a name to {{dotted key: value}}, but got {name!r}: {bundle!r}")
            continue
        out[name] = _dotted_mapping(bundle, where, f"choices.{name}", problems)
    key_sets = {name: sorted(b) for name, b in out.items()}
    if len({tuple(k) for k in key_sets.values()}) > 1:
        problems.append(
            f"{where}: every choice of a bundle must set the same keys, so none inherits another's from the base, but got {key_sets}"
        )
    return CategoricalDistribution(list(out)) if out else None


def _order(params: list[Param], path: Path, problems: list[str]) -> list[Param]:
    """Params in file order, moved only as far as needed to put each condition's params first."""
    by_name = {p.name: p for p in params}
    for p in params:
        for ref, allowed in p.when.items():
            target = by_name.get(ref)
            if target is None:
                problems.append(
                    f"{path}: param '{p.name}': `when` must name a param of this space ({', '.join(by_name)}), but got '{ref}'"
                )
            elif not isinstance(target.distribution, CategoricalDistribution):
                problems.append(f"{path}: param '{p.name}': `when` must name a categorical param, but '{ref}' is a range")
            else:
                missing = [v for v in allowed if not any(_same(v, c) for c in target.distribution.choices)]
                if missing:
                    problems.append(
                        f"{path}: param '{p.name}': `when` values must be among {ref}'s choices "
                        f"{list(target.distribution.choices)}, but got {missing}"
                    )
    ordered: list[Param] = []
    pending = list(params)
    while pending:
        ready = next((p for p in pending if all(r in {q.name for q in ordered} or r not in by_name for r in p.when)), None)
        if ready is None:
            names = ", ".join(p.name for p in pending)
            problems.append(f"{path}: `when` conditions must not form a cycle, but got one among params {names}")
            return ordered
        ordered.append(ready)
        pending.remove(ready)
    return ordered


def _parse_study(raw: Any, path: Path, problems: list[str]) -> StudySpec:
    where = f"{path}: study"
    if raw is None:
        return StudySpec()
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: `study` must be a mapping, but got {raw!r}")
        return StudySpec()
    extra = [f for f in raw if f not in _STUDY_FIELDS]
    if extra:
        problems.append(f"{where}: fields must be among {', '.join(_STUDY_FIELDS)}, but got {', '.join(map(str, extra))}")
    spec = StudySpec()
    direction = raw.get("direction", spec.direction)
    if direction not in ("maximize", "minimize"):
        problems.append(f"{where}: `direction` must be maximize or minimize, but got {direction!r}")
    metric = raw.get("metric", spec.metric)
    if not isinstance(metric, str) or not metric:
        problems.append(f"{where}: `metric` must name the metric trials report (e.g. video_auc), but got {metric!r}")

    def factory_spec(field_name: str, default: Mapping[str, Any], registry: Mapping[str, Any], build: Any) -> Mapping[str, Any]:
        value = raw.get(field_name, default)
        value = {"type": value} if isinstance(value, str) else value
        if not isinstance(value, Mapping):
            problems.append(f"{where}: `{field_name}` must be {{type: ..., kwargs...}}, but got {value!r}")
            return default
        kind = value.get("type")
        if kind not in registry:
            problems.append(f"{where}: `{field_name}.type` must be one of {', '.join(registry)}, but got {kind!r}")
            return default
        try:  # build it once now, so a wrong argument fails before any trial runs
            build(value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: `{field_name}` arguments must suit optuna's {registry[kind].__name__}, but got {exc}")
        return dict(value)

    sampler = factory_spec("sampler", spec.sampler, SAMPLERS, build_sampler)
    pruner = factory_spec("pruner", spec.pruner, PRUNERS, build_pruner)
    enqueue = raw.get("enqueue") or []
    if isinstance(enqueue, str):
        enqueue = [enqueue]
    paths = _paths(enqueue, path, "study.enqueue", problems)
    return StudySpec(direction, metric, sampler, pruner, paths)


def _paths(names: Any, path: Path, what: str, problems: list[str]) -> tuple[Path, ...]:
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(f"{path}: `{what}` must be a file name or a list of them, but got {names!r}")
        return ()
    out = tuple(path.parent / n for n in names)
    for name, p in zip(names, out):
        if not p.is_file():
            problems.append(f"{path}: `{what}` file must exist, but got '{name}' (looked for {p})")
    return out


def _assignments(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    """Every combination of choices and range end points (or a seeded sample if there are too many)."""

    def points(p: Param) -> list[Any]:
        d = p.distribution
        return list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]

    def walk(i: int, chosen: dict[str, Any], pick: Any) -> Iterator[dict[str, Any]]:
        if i == len(params):
            yield dict(chosen)
            return
        p = params[i]
        if not p.is_active(chosen):
            yield from walk(i + 1, chosen, pick)
            return
        for value in pick(points(p)):
            chosen[p.name] = value
            yield from walk(i + 1, chosen, pick)
            del chosen[p.name]

    if math.prod(len(points(p)) for p in params) <= _MAX_COMBINATIONS:
        return list(walk(0, {}, lambda values: values))
    rng = random.Random(0)
    return [next(walk(0, {}, lambda values: [rng.choice(values)])) for _ in range(_MAX_COMBINATIONS)]


def _combination_problems(space: SearchSpace) -> list[str]:
    """Build the config of every combination; blame the param value (or values) behind each failure."""
    assignments = _assignments(space.params)
    failing: dict[str, list[dict[str, Any]]] = {}
    for values in assignments:
        try:
            config_from_dict(space._trial_dict(values), "trial")
        except ConfigError as exc:
            for line in exc.problems:
                failing.setdefault(line.removeprefix("trial: "), []).append(values)
    problems = []
    for line, bad in failing.items():
        if len(bad) == len(assignments):
            problems.append(f"{space.path}: base + overlays + fixed must give a valid config, but: {line}")
            continue
        common = {n: v for n, v in bad[0].items() if all(n in a and _same(a[n], v) for a in bad)}
        culprit = next(
            (
                (n, v)
                for n, v in common.items()
                if sum(1 for a in assignments if n in a and _same(a[n], v)) == len(bad)
            ),
            None,
        )
        if culprit:
            n, v = culprit
            problems.append(f"{space.path}: param '{n}': every trial config must validate, but {n}={v!r} gives: {line}")
        else:
            shown = ", ".join(f"{n}={v!r}" for n, v in (common or bad[0]).items())
            problems.append(
                f"{space.path}: params ({shown}): every trial config must validate, but together they give: {line} "
                "(add a `when:` so they never combine)"
            )
    return problems


def load_space(path: Path | str) -> SearchSpace:
    """Read and check a space file; raise SpaceError with every problem, one line each."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: search space file must exist, but it was not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: search space must be valid YAML, but got: {exc}") from None
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{path}: search space must be a YAML mapping, but got {type(raw).__name__}")

    problems: list[str] = []
    extra = [f for f in raw if f not in _TOP_FIELDS]
    if extra:
        problems.append(f"{path}: top-level fields must be among {', '.join(_TOP_FIELDS)}, but got {', '.join(map(str, extra))}")
    if not raw.get("base"):
        problems.append(f"{path}: `base` must name at least one config file (e.g. [../baseline.yaml]), but got none")
    base = _paths(raw.get("base") or [], path, "base", problems)
    overlays = _paths(raw.get("overlays") or [], path, "overlays", problems)
    fixed = _dotted_mapping(raw.get("fixed"), str(path), "fixed", problems)
    study = _parse_study(raw.get("study"), path, problems)

    raw_params = raw.get("params") or {}
    if not isinstance(raw_params, Mapping):
        problems.append(f"{path}: `params` must map names to distributions, but got {raw_params!r}")
        raw_params = {}
    params = [p for name, spec in raw_params.items() if (p := _parse_param(name, spec, path, problems))]
    owners: dict[str, list[str]] = {}
    for p in params:
        for key in p.keys:
            owners.setdefault(key, []).append(p.name)
    for key, names in owners.items():
        if len(names) > 1:
            problems.append(f"{path}: a config key must belong to one param, but '{key}' is set by params {', '.join(names)}")
        if key in fixed:
            problems.append(f"{path}: param '{names[0]}': a key is either searched or fixed, but '{key}' is both")
    ordered = _order(params, path, problems)

    layers: dict[str, Any] = {}
    if not problems:
        try:
            layers = read_layers([*base, *overlays])
        except ConfigError as exc:
            problems.extend(f"{path}: {line}" for line in exc.problems)
    if problems:
        raise SpaceError(problems[0], problems)

    space = SearchSpace(path, base, overlays, fixed, study, tuple(ordered), layers)
    problems = _combination_problems(space)
    for config in study.enqueue:
        try:
            space.params_for_config(config)
        except SpaceError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpaceError(problems[0], problems)
    return space
