"""Recommendations from a config diff, and the configs that apply or remove each one alone.

A recommendation is a group of the keys that differ between the baseline and the recommended
config. The grouping is data: `GROUP_PREFIXES` maps key prefixes to group names, and a differing
key that no prefix names is a group of its own. So any pair of configs ablates the same way,
not only the shipped two.

The schema then decides what else must move. Where applying a group alone to the baseline, or
removing it alone from the recommended config, breaks a cross-field rule (focal loss with an
automatic pos_weight), the group *carries* the fewest other differing keys that make that config
valid. One carried set serving both directions is preferred, so a group moves the same keys both
ways (shipped pair: focal loss carries `loss.auto_pos_weight`, and `recommended - focal loss` is
BCE with the baseline's pos_weight again). Where no common set works, each direction keeps its own
(focal loss and the balanced sampler in one config: adding focal to the baseline switches pos_weight
off, removing it from a config whose sampler stays on must leave pos_weight off). A later group
whose keys an earlier group already carries is folded into it rather than ablated alone; this is
why table order matters (pos_weight comes after focal loss and the sampler).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from pydantic import ValidationError

from harness.compare.identity import identity_keys
from harness.config.loading import config_from_dict, set_dotted
from harness.config.schema import Config

__all__ = [
    "GROUP_PREFIXES",
    "Recommendation",
    "Arm",
    "config_diff",
    "group_name",
    "derive_recommendations",
    "with_keys_from",
    "ablation_arms",
]

# key prefix -> recommendation; a prefix ending in "." takes a whole section, otherwise the key
# itself (and anything below it). First match wins, and the order is the report's row order.
GROUP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("optim.", "lr+schedule"),
    ("model.fold_div", "fold_div"),
    ("model.aggregate", "attention"),
    ("loss.type", "focal loss"),
    ("loss.gamma", "focal loss"),
    ("loss.alpha", "focal loss"),
    ("data.sampler", "balanced sampler"),
    # After focal loss and the sampler: each of those carries auto_pos_weight, and then this folds.
    ("loss.auto_pos_weight", "pos_weight"),
    ("loss.pos_weight", "pos_weight"),
    ("train.amp", "accumulation/AMP"),
    ("train.grad_accum_steps", "accumulation/AMP"),
    ("train.cudnn_benchmark", "accumulation/AMP"),
    ("train.empty_cache_each_epoch", "accumulation/AMP"),
    ("early_stop.", "early-stop"),
    ("data.augment.", "stability extras"),
    ("model.dropout", "stability extras"),
    ("model.freeze_bn_fraction", "stability extras"),
    ("train.val_every", "stability extras"),
)

# Beyond this many carried keys the search stops trying subsets and carries every other key.
_MAX_CARRIED_SEARCH = 3


@dataclass(frozen=True)
class Recommendation:
    name: str
    keys: tuple[str, ...]  # the differing keys the table puts in this group
    carried_add: tuple[str, ...] = ()  # other differing keys that must move too when added to the baseline
    carried_remove: tuple[str, ...] = ()  # ... and when removed from the recommended config

    @property
    def carried(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.carried_add + self.carried_remove))

    def keys_to_add(self) -> tuple[str, ...]:
        return self.keys + self.carried_add

    def keys_to_remove(self) -> tuple[str, ...]:
        return self.keys + self.carried_remove


@dataclass(frozen=True)
class Arm:
    """One config of a comparison, with where it came from."""

    name: str
    config: Config
    kind: str = "given"  # given | added (baseline + one) | removed (recommended - one)
    recommendation: str | None = None


def config_diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (value in a, value in b) for every identity key that differs."""
    fa, fb = identity_keys(a), identity_keys(b)
    return {k: (fa.get(k), fb.get(k)) for k in list(fa) + [k for k in fb if k not in fa] if fa.get(k) != fb.get(k)}


def _matches(key: str, prefix: str) -> bool:
    return key.startswith(prefix) if prefix.endswith(".") else key == prefix or key.startswith(prefix + ".")


def group_name(key: str, table: Sequence[tuple[str, str]] = GROUP_PREFIXES) -> str:
    """The recommendation a differing key belongs to; an unlisted key is its own group."""
    return next((name for prefix, name in table if _matches(key, prefix)), key)


def with_keys_from(target: Config, source: Config, keys: Iterable[str]) -> dict[str, Any]:
    """`target` as a raw mapping with `keys` set to their values in `source` (not yet validated)."""
    data = copy.deepcopy(target.model_dump(mode="json"))
    values = identity_keys(source)
    for key in keys:
        set_dotted(data, key, copy.deepcopy(values[key]))
    return data


def _valid(data: Mapping[str, Any]) -> bool:
    try:
        Config.model_validate(dict(data))
    except ValidationError:
        return False
    return True


def _fewest_carried(target: Config, source: Config, keys: Sequence[str], others: Sequence[str]) -> tuple[str, ...]:
    """The fewest `others` to take from `source` along with `keys` so that `target` stays valid."""
    for size in range(0, min(_MAX_CARRIED_SEARCH, len(others)) + 1):
        for extra in combinations(others, size):
            if _valid(with_keys_from(target, source, [*keys, *extra])):
                return tuple(extra)
    # Moving every differing key turns one config into the other, which is valid by construction.
    return tuple(others)


def _carried(baseline: Config, recommended: Config, keys: Sequence[str], others: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    add = _fewest_carried(baseline, recommended, keys, others)
    remove = _fewest_carried(recommended, baseline, keys, others)
    common = tuple(k for k in others if k in add or k in remove)
    if _valid(with_keys_from(baseline, recommended, [*keys, *common])) and _valid(
        with_keys_from(recommended, baseline, [*keys, *common])
    ):
        return common, common
    return add, remove


def derive_recommendations(
    baseline: Config, recommended: Config, table: Sequence[tuple[str, str]] = GROUP_PREFIXES
) -> list[Recommendation]:
    """The recommendations separating two configs, in table order, each valid to apply or remove alone."""
    diff = list(config_diff(baseline, recommended))
    order = list(dict.fromkeys([name for _, name in table] + [group_name(k, table) for k in diff]))
    groups: dict[str, list[str]] = {}
    for key in diff:
        groups.setdefault(group_name(key, table), []).append(key)
    recommendations: list[Recommendation] = []
    carried_so_far: set[str] = set()
    for name in (n for n in order if n in groups):
        keys = groups[name]
        if set(keys) <= carried_so_far:
            continue  # folded: an earlier recommendation already moves these keys
        others = [k for k in diff if k not in keys]
        add, remove = _carried(baseline, recommended, keys, others)
        recommendations.append(Recommendation(name, tuple(keys), add, remove))
        carried_so_far.update(add + remove)
    return recommendations


def _arm(name: str, target: Config, source: Config, keys: Sequence[str], kind: str, recommendation: str) -> Arm:
    return Arm(name, config_from_dict(with_keys_from(target, source, keys), name), kind, recommendation)


def ablation_arms(
    baseline: Arm, recommended: Arm, recommendations: Sequence[Recommendation] | None = None
) -> list[Arm]:
    """The baseline plus each recommendation alone, then the recommended config minus each alone."""
    recs = derive_recommendations(baseline.config, recommended.config) if recommendations is None else recommendations
    b, r = baseline, recommended
    added = [_arm(f"{b.name} + {x.name}", b.config, r.config, x.keys_to_add(), "added", x.name) for x in recs]
    removed = [_arm(f"{r.name} - {x.name}", r.config, b.config, x.keys_to_remove(), "removed", x.name) for x in recs]
    return added + removed
