"""A study's search space, recorded on the study, so that resuming it with a different space is caught.

What is recorded decides which configs a trial can get and how trials are judged against each other,
so the trials of one study stay comparable:
- `study`: direction, metric and pruner (which trials are cut short, and when);
- `params`: each param's distribution (kind, bounds, log, step, choices and a bundle's settings), its
  `when` and its `otherwise`;
- `config`: the value every other config key has before any param applies (base + overlays +
  `--config/--set` + `fixed`, the schema's default where none sets it), so the validation schedule
  (`train.val_every`, `train.epochs`) and every fixed key are in it.
Left out, so that changing them is no change:
- the sampler and its seed: they choose the next trial among the same configs;
- `study.enqueue`: its configs are enqueued once, when the study is created;
- the base value of a key that a param sets in every trial: it never reaches one;
- `_NO_BEARING`: where files live, which differs between the machines of one study, and how fast a
  trial runs;
- which layer sets a value (base, overlay, `fixed`), comments, key order, `1e-3` against `0.001`.

The description is JSON; the sha256 of its canonical form (sorted keys) is the space's hash. Both are
study user attrs, and every change let through with --allow-space-change is one entry of `space_history`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from harness.config.keys import normalise
from harness.errors import StudyError

if TYPE_CHECKING:
    import optuna

    from harness.sweep.space import Param, SearchSpace

__all__ = ["SPACE_ATTR", "HASH_ATTR", "HISTORY_ATTR", "describe_space", "space_hash", "differences", "record_space",
           "check_space"]

SPACE_ATTR, HASH_ATTR, HISTORY_ATTR = "space", "space_hash", "space_history"  # the study's user attrs
# Raised when the description changes shape; a study recorded in another shape is then recorded anew.
_FORMAT = 1
_MAX_SHOWN = 20  # difference lines printed; the history keeps them all
_RANGES = (FloatDistribution, IntDistribution)

_NO_BEARING = frozenset({
    # Where things live: these differ between the machines and working folders of one study.
    "data.root", "data.manifest", "data.cache_dir", "model.pretrained_file", "train.output_dir",
    # How fast a trial runs and on what; the trial is the same up to floating-point noise.
    "data.num_workers", "data.decode_on", "data.augment.run_on", "train.device", "train.cudnn_benchmark",
    "train.channels_last", "train.empty_cache_each_epoch",
    # Names in MLflow.
    "tracking.experiment", "tracking.run_name",
})


def describe_space(space: SearchSpace) -> dict[str, Any]:
    """The parts of a space that decide what its trials can be and how they compare, as plain JSON values."""
    always_set = {key for p in space.params for key in p.keys if not p.when or key in p.otherwise}
    config = {key: value for key, value in space.base_values().items()
              if key not in _NO_BEARING and key not in always_set}
    study = {"direction": space.study.direction, "metric": space.study.metric,
             "pruner": {k: _whole(v) for k, v in space.study.pruner.items()}}
    description = {"format": _FORMAT, "study": study, "params": {p.name: _describe_param(p) for p in space.params},
                   "config": config}
    return json.loads(json.dumps(description, default=str))  # tuples -> lists, paths -> text, as the storage keeps them


def _describe_param(p: Param) -> dict[str, Any]:
    d = p.distribution
    if isinstance(d, CategoricalDistribution):
        # Kept in order: Optuna stores a categorical value as its index among the choices.
        out: dict[str, Any] = {"type": "categorical", "choices": list(d.choices)}
        if p.bundles:
            out["bundles"] = {choice: {k: normalise(k, v) for k, v in bundle.items()}
                              for choice, bundle in p.bundles.items()}
    else:
        kind = "float" if isinstance(d, FloatDistribution) else "int"
        out = {"type": kind, "low": d.low, "high": d.high, "log": d.log, "step": d.step}
    if p.when:
        out["when"] = {ref: sorted(allowed, key=json.dumps) for ref, allowed in p.when.items()}
    if p.otherwise:
        out["otherwise"] = {k: normalise(k, v) for k, v in p.otherwise.items()}
    return out


def _whole(value: Any) -> Any:
    # A pruner's arguments pass to Optuna as the file has them; `10` and `10.0` mean the same there.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def space_hash(description: Mapping[str, Any]) -> str:
    """sha256 of the description's canonical JSON: sorted keys, no spaces."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


_ABSENT = object()


def differences(old: Mapping[str, Any], new: Mapping[str, Any], fixed: Collection[str] = ()) -> list[str]:
    """One line per difference, such as `params.optim.lr.high: 0.003 -> 0.01` or `params.model.dropout: added`.

    A config key named in `fixed` (the current space's) shows as `fixed.<key>`, any other as `config.<key>`.
    """
    lines = [*_diff(old.get("study", {}), new.get("study", {}), "study"),
             *_diff(old.get("params", {}), new.get("params", {}), "params")]
    before, after = old.get("config", {}), new.get("config", {})
    # A key leaves `config` only when a param starts setting it in every trial, which a `params.` line names.
    for key in dict.fromkeys([*before, *after]):
        if key in after:
            where = f"fixed.{key}" if key in fixed else f"config.{key}"
            lines.extend(_diff(before.get(key, _ABSENT), after[key], where))
    return lines


def _diff(old: Any, new: Any, path: str) -> list[str]:
    if old is _ABSENT:
        return [f"{path}: added" if isinstance(new, dict) else f"{path}: added ({_show(new)})"]
    if new is _ABSENT:
        return [f"{path}: removed" if isinstance(old, dict) else f"{path}: removed (was {_show(old)})"]
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in dict.fromkeys([*old, *new])
                for line in _diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{path}.{key}")]
    # Compared as the hash sees them, so `1` and `true` (equal in Python) differ here as they do there.
    return [] if _show(old) == _show(new) else [f"{path}: {_show(old)} -> {_show(new)}"]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def record_space(study: optuna.Study, space: SearchSpace) -> None:
    """Store the space's description and hash on a study the sweep has just created."""
    description = describe_space(space)
    study.set_user_attr(SPACE_ATTR, description)
    study.set_user_attr(HASH_ATTR, space_hash(description))


def check_space(study: optuna.Study, space: SearchSpace, allow_change: bool = False) -> list[str]:
    """Compare a resumed study's recorded space with `space`; call it under the storage lock.

    Returns [] when they are the same, or the lines to print when the study goes on with `space`
    recorded: a study with no record yet (it predates this check), or a change `allow_change` lets
    through (added to `space_history`). Raises StudyError, naming each difference, for a change
    without `allow_change`, and for one Optuna cannot make within a study whatever the flag.
    """
    description = describe_space(space)
    new_hash = space_hash(description)
    old_hash = study.user_attrs.get(HASH_ATTR)
    if old_hash == new_hash:
        return []
    name = study.study_name
    conflicts = _optuna_conflicts(study, space)
    if conflicts:
        head = (f"study '{name}' cannot go on with this search space, even with --allow-space-change, because "
                f"Optuna refuses each of these changes within one study (rerun with the space it was created with, "
                f"or pass --study-name NAME to start a new study):")
        raise StudyError(head, [head, *conflicts])
    stored = study.user_attrs.get(SPACE_ATTR) or {}
    if old_hash is None or stored.get("format") != _FORMAT:
        _record(study, space, description, None, [])
        return [f"note: study '{name}' holds no record of its search space that this harness can compare (it is "
                f"older than the check), so the current space is recorded (hash {new_hash[:12]}) and changes to it "
                f"from now on are refused"]
    lines = differences(stored, description, space.fixed) or [f"space hash {old_hash[:12]} -> {new_hash[:12]}"]
    shown = lines[:_MAX_SHOWN] + ([f"... and {len(lines) - _MAX_SHOWN} more"] if len(lines) > _MAX_SHOWN else [])
    if not allow_change:
        head = (f"study '{name}' must be resumed with the search space it was created with, so that its trials "
                f"stay comparable, but got {len(lines)} difference(s) (rerun with that space, pass --study-name NAME "
                f"to start a new study, or --allow-space-change to continue this one anyway):")
        raise StudyError(head, [head, *shown])
    _record(study, space, description, old_hash, lines)
    return [f"warning: study '{name}' goes on with a changed search space (--allow-space-change), so its trials "
            f"before and after are not comparable; recorded in the study's user attr {HISTORY_ATTR}:",
            *(f"  {line}" for line in shown)]


def _record(
    study: optuna.Study, space: SearchSpace, description: dict[str, Any], old_hash: str | None, lines: list[str]
) -> None:
    new_hash = space_hash(description)
    entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from": old_hash, "to": new_hash,
             "space_path": str(Path(space.path).resolve()), "changes": lines}
    study.set_user_attr(HISTORY_ATTR, [*study.user_attrs.get(HISTORY_ATTR, []), entry])
    study.set_user_attr(SPACE_ATTR, description)
    study.set_user_attr(HASH_ATTR, new_hash)


def _optuna_conflicts(study: optuna.Study, space: SearchSpace) -> list[str]:
    """What Optuna refuses within one study: another direction, or a param whose distribution its trials cannot share.

    Optuna's storages check each new trial's distribution of a param against the one earlier trials used,
    and raise in `suggest_*`, so every later trial of the sweep would fail.
    """
    conflicts = []
    direction = study.direction.name.lower()
    if direction != space.study.direction:
        conflicts.append(f"study.direction: a study keeps the direction it was created with, but got "
                         f"{direction} -> {space.study.direction}")
    wanted = space.distributions()
    seen: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        for param, used in trial.distributions.items():
            if param in wanted and param not in seen:
                seen.add(param)
                why = _incompatible(used, wanted[param])
                if why:
                    conflicts.append(f"params.{param}: {why}")
    return conflicts


def _incompatible(used: BaseDistribution, wanted: BaseDistribution) -> str | None:
    """Why Optuna would refuse `wanted` for a param its trials sampled from `used` (as its
    `check_distribution_compatibility` decides), or None."""
    if type(used) is not type(wanted):
        return f"a param keeps its kind within a study, but got {_kind(used)} -> {_kind(wanted)}"
    if isinstance(used, CategoricalDistribution) and isinstance(wanted, CategoricalDistribution) and used != wanted:
        return (f"a categorical param keeps its choices, in order, within a study, but got "
                f"{_show(list(used.choices))} -> {_show(list(wanted.choices))}")
    if isinstance(used, _RANGES) and isinstance(wanted, _RANGES) and used.log != wanted.log:
        return f"a range keeps its log scale within a study, but got log {_show(used.log)} -> {_show(wanted.log)}"
    return None


def _kind(d: BaseDistribution) -> str:
    return {CategoricalDistribution: "categorical", FloatDistribution: "float"}.get(type(d), "int")
