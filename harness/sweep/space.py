"""Search spaces at run time: a checked space file becomes Optuna distributions, trial configs and enqueued trials.

The file format and its checks are `harness.sweep.space_file`'s. Here `load_space` adds what needs
the base configs read: every combination of the params' end points and choices must give a valid
config, and each enqueued config must be one the space can build. Every problem is reported at once,
one line each, naming the file and the param.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel

from harness.config.keys import default_of, key_problem, leaf_keys, normalise, value_problem
from harness.config.loading import config_from_dict, deep_merge, flatten, parse_override, read_layers, set_dotted
from harness.config.schema import Config, metric_problem
from harness.errors import ConfigError, SpaceError
from harness.sweep.space_file import (
    PRUNERS,
    SAMPLERS,
    ParamSpec,
    SpaceFile,
    StudyFile,
    build_pruner,
    build_sampler,
    read_space_file,
    same_choice,
)

__all__ = ["SearchSpace", "Param", "load_space", "command_line_layer", "build_sampler", "build_pruner", "SAMPLERS",
           "PRUNERS"]

# Above this many end-point combinations the check samples combinations instead of listing them.
_MAX_COMBINATIONS = 4096


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
            ref in values and any(same_choice(values[ref], ok) for ok in allowed) for ref, allowed in self.when.items()
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
                if same_choice(choice, value):
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
class SearchSpace:
    """A loaded, checked space; the base files are read once, at load."""

    path: Path
    base: tuple[Path, ...]
    overlays: tuple[Path, ...]
    fixed: Mapping[str, Any]
    study: StudyFile  # direction, metric, sampler, pruner and the (optional) configs to enqueue
    params: tuple[Param, ...]  # in an order where every condition's params come first
    layers: Mapping[str, Any] = field(repr=False, default_factory=dict)  # merged base + overlays (+ command line)
    command_line: Mapping[str, Any] = field(default_factory=dict)  # `harness sweep --config/--set` keys, flat

    @property
    def layer_names(self) -> str:
        return "base + overlays + --config/--set + fixed" if self.command_line else "base + overlays + fixed"

    def shadowed(self) -> list[str]:
        """The command-line keys that `fixed` or a param sets anyway, so they change no trial."""
        searched = {key for p in self.params for key in (*p.keys, *p.otherwise)}
        return [key for key in self.command_line if key in self.fixed or key in searched]

    def base_dict(self) -> dict[str, Any]:
        """The raw merged mapping of base + overlays (+ command line) + fixed, before any param is applied."""
        data = copy.deepcopy(dict(self.layers))
        for key, value in self.fixed.items():
            set_dotted(data, key, copy.deepcopy(value))
        return data

    def base_values(self) -> dict[str, Any]:
        """Every config key's value before any param is applied: `base_dict()`, the schema's default where it is silent."""
        read = _reader(self.base_dict())
        return {key: read(key) for key in leaf_keys()}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution for p in self.params}

    def sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The study's sampler over this space's params (a grid enumerates their distributions)."""
        return build_sampler(self.study.sampler, seed, distributions=self.distributions())

    def val_every(self) -> int:
        """The study's validation interval in epochs: never searched (`space_file.SCHEDULE_KEYS`), so the base's, or fixed's."""
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

    def base_config(self) -> Config:
        """Base + overlays + fixed with no param applied, validated.

        A sweep with no `study.enqueue` prepares its data from this one (`first_config`).
        """
        try:
            return config_from_dict(self.base_dict(), f"{self.path}: {self.layer_names}")
        except ConfigError as exc:
            raise SpaceError(exc.problems[0], exc.problems) from None

    def first_config(self) -> Config:
        """The config a sweep prepares its data, cache and tracking from (and `--estimate` times): the first
        enqueued trial's, or `base_config()` when `study.enqueue` is left out."""
        enqueue = self.enqueue_params()
        return self.config_for(enqueue[0]) if enqueue else self.base_config()

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
            found = [
                name
                for name, bundle in p.bundles.items()
                if all(same_choice(normalise(k, v), read(k)) for k, v in bundle.items())
            ]
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
                if not same_choice(want, got):
                    state = "active" if p.name in values else f"inactive (it needs {p.describe_when()})"
                    problems.append(
                        f"{where}: param '{p.name}' is {state}, so a trial sets {key}={got!r}, "
                        f"but the config has {key}={want!r}"
                    )
        return problems

    def _trial_dict(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The raw config of a trial: base + fixed, each active param's value, each inactive one's `otherwise`."""
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


def _reader(raw: Mapping[str, Any]) -> Any:
    """key -> the normalised value in a raw config mapping, or the schema default where it is absent."""
    flat = flatten(raw)

    def read(key: str) -> Any:
        return normalise(key, flat[key] if key in flat else default_of(key))

    return read


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
            problems.append(f"{space.path}: {space.layer_names} must give a valid config, but: {line}")
            continue
        common = {n: v for n, v in bad[0].items() if all(n in a and same_choice(a[n], v) for a in bad)}
        culprit = next(
            (
                (n, v)
                for n, v in common.items()
                if sum(1 for a in assignments if n in a and same_choice(a[n], v)) == len(bad)
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


def _param(name: str, spec: ParamSpec) -> Param:
    return Param(name, spec.distribution(name), spec.config_key(name), spec.bundles(), spec.conditions(), flatten(spec.otherwise))


def _search_space(
    path: Path, file: SpaceFile, layers: Mapping[str, Any], command_line: Mapping[str, Any]
) -> SearchSpace:
    """The runtime space of a checked file, its params in an order where each condition's params come first."""
    params = tuple(_param(name, file.params[name]) for name in file.ordered_params())
    return SearchSpace(path, file.base, file.overlays, flatten(file.fixed), file.study, params,
                       deep_merge(layers, command_line), flatten(command_line))


def _layer_problems(flat: Mapping[str, Any], source: str) -> list[str]:
    problems = []
    for key, value in flat.items():
        why = key_problem(key) or value_problem(key, value)
        if why is not None:
            problems.append(f"{source}: {why}")
    return problems


def command_line_layer(configs: Sequence[Path | str] = (), overrides: Sequence[str] = ()) -> dict[str, Any]:
    """`harness sweep --config FILE --set KEY=VALUE` as one raw mapping (files left to right, then the overrides).

    Every key must be a config key and every value one its key's type accepts; each problem names
    the file or the `--set` item, and all of them are raised together.
    """
    layer: dict[str, Any] = {}
    problems: list[str] = []
    for path in configs:
        try:
            data = read_layers([path])
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        problems.extend(_layer_problems(flatten(data), str(path)))
        layer = deep_merge(layer, data)
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        problems.extend(_layer_problems({key: value}, f"--set {text}"))
        set_dotted(layer, key, value)
    if problems:
        raise ConfigError(problems[0], problems)
    return layer


def load_space(path: Path | str, configs: Sequence[Path | str] = (), overrides: Sequence[str] = ()) -> SearchSpace:
    """Read and check a space file; raise SpaceError with every problem, one line each.

    `configs` and `overrides` (`harness sweep --config/--set`) are laid over the space's base and
    overlays, under its `fixed` keys and each trial's params, which still win.
    """
    path = Path(path)
    command_line = command_line_layer(configs, overrides)
    file = read_space_file(path)
    try:
        layers = read_layers([*file.base, *file.overlays])
    except ConfigError as exc:
        problems = [f"{path}: {line}" for line in exc.problems]
        raise SpaceError(problems[0], problems) from None

    space = _search_space(path, file, layers, command_line)
    problems = _combination_problems(space)
    for config in space.study.enqueue:
        try:
            space.params_for_config(config)
        except SpaceError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpaceError(problems[0], problems)
    # A misspelt metric would otherwise train every trial to the end and fail it there; the methods of the
    # data the sweep indexes (every trial reads that one manifest) bound the per-method names.
    problem = metric_problem("study.metric", space.study.metric, space.first_config().data)
    if problem:
        raise SpaceError(f"{path}: {problem}")
    return space
