"""Recommendations derived from a config diff, the ablated configs, and the config identity hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.compare.ablation import Arm, ablation_arms, config_diff, derive_recommendations, group_name
from harness.compare.identity import config_hash, identity_keys
from harness.compare.runner import load_arms
from harness.config import load_config
from harness.config.loading import config_from_dict, set_dotted
from harness.config.schema import Config
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def shipped_pair() -> tuple[Config, Config]:
    return load_config([ROOT / "baseline.yaml"]), load_config([ROOT / "recommended.yaml"])


def variant(cfg: Config, **changes) -> Config:
    data = cfg.model_dump(mode="json")
    for key, value in changes.items():
        set_dotted(data, key.replace("__", "."), value)
    return config_from_dict(data)


def test_shipped_pair_splits_into_the_advice_recommendations_in_table_order() -> None:
    recs = derive_recommendations(*shipped_pair())
    assert [r.name for r in recs] == [
        "lr+schedule", "fold_div", "attention", "focal loss", "accumulation/AMP", "early-stop", "stability extras",
    ]
    by_name = {r.name: r for r in recs}
    assert set(by_name["lr+schedule"].keys) == {"optim.lr", "optim.scheduler.type", "optim.scheduler.warmup_epochs",
                                                "optim.scheduler.min_lr"}
    # Focal loss alone on the baseline would keep the automatic pos_weight, which the schema refuses.
    assert by_name["focal loss"].keys == ("loss.type", "loss.gamma")
    assert by_name["focal loss"].carried_add == by_name["focal loss"].carried_remove == ("loss.auto_pos_weight",)
    assert set(by_name["stability extras"].keys) == {"data.augment.hflip", "data.augment.color_jitter", "model.dropout",
                                                     "model.freeze_bn_fraction", "train.val_every"}
    assert all(r.carried == () for r in recs if r.name != "focal loss")
    # recommended.yaml keeps the sampler off, so the diff has no sampler group (and pos_weight folds into focal).
    assert "balanced sampler" not in by_name and "pos_weight" not in by_name


def test_every_ablated_config_validates_and_moves_only_its_keys() -> None:
    baseline, recommended = shipped_pair()
    recs = derive_recommendations(baseline, recommended)
    arms = ablation_arms(Arm("baseline", baseline), Arm("recommended", recommended), recs)
    assert len(arms) == 2 * len(recs)
    assert arms[3].name == "baseline + focal loss" and arms[3 + len(recs)].name == "recommended - focal loss"
    for arm in arms:
        rec = next(r for r in recs if r.name == arm.recommendation)
        source = baseline if arm.kind == "added" else recommended
        moved = rec.keys_to_add() if arm.kind == "added" else rec.keys_to_remove()
        assert set(config_diff(source, arm.config)) == set(moved), arm.name
    focal = arms[3].config
    assert (focal.loss.type, focal.loss.gamma, focal.loss.auto_pos_weight) == ("focal_bce", 2.0, False)
    assert focal.optim.lr == 1e-3 and focal.model.fold_div == 8
    # Every differing key moves with some recommendation (auto_pos_weight as focal loss's carried key): nothing is lost.
    assert {k for r in recs for k in r.keys + r.carried} == set(config_diff(baseline, recommended))


def test_a_sampler_pair_gets_a_balanced_sampler_group_that_carries_the_pos_weight_switch() -> None:
    baseline, _ = shipped_pair()
    sampler = variant(baseline, data__sampler="balanced", loss__auto_pos_weight=False)
    recs = derive_recommendations(baseline, sampler)
    assert [(r.name, r.keys, r.carried_add, r.carried_remove) for r in recs] == [
        ("balanced sampler", ("data.sampler",), ("loss.auto_pos_weight",), ("loss.auto_pos_weight",)),
    ]


def test_focal_loss_and_sampler_both_carry_the_pos_weight_switch_and_stay_apart() -> None:
    baseline, _ = shipped_pair()
    both = variant(baseline, data__sampler="balanced", loss__auto_pos_weight=False, loss__type="focal_bce",
                   loss__gamma=2.0)
    recs = {r.name: r for r in derive_recommendations(baseline, both)}
    assert set(recs) == {"focal loss", "balanced sampler"}
    # Added to the baseline, each must switch pos_weight off; removed from `both`, whose other correction
    # stays, pos_weight must stay off too, so no common carried set exists and each direction keeps its own.
    for rec in recs.values():
        assert rec.carried_add == ("loss.auto_pos_weight",) and rec.carried_remove == ()
    arms = {a.name: a.config for a in ablation_arms(Arm("b", baseline), Arm("r", both), list(recs.values()))}
    assert (arms["r - focal loss"].loss.type, arms["r - focal loss"].data.sampler) == ("bce", "balanced")
    assert arms["r - focal loss"].loss.auto_pos_weight is False
    assert (arms["r - balanced sampler"].loss.type, arms["r - balanced sampler"].data.sampler) == ("focal_bce", "none")
    assert (arms["b + focal loss"].loss.auto_pos_weight, arms["b + focal loss"].data.sampler) == (False, "none")


def test_a_pair_differing_only_in_pos_weight_keeps_it_as_its_own_group() -> None:
    baseline, _ = shipped_pair()
    recs = derive_recommendations(baseline, variant(baseline, loss__auto_pos_weight=False))
    assert [(r.name, r.keys, r.carried) for r in recs] == [("pos_weight", ("loss.auto_pos_weight",), ())]


def test_a_key_no_prefix_names_is_a_group_of_its_own() -> None:
    assert group_name("data.clip_seconds") == "data.clip_seconds"
    assert group_name("optim.scheduler.min_lr") == "lr+schedule"
    assert group_name("early_stop.patience") == "early-stop"
    baseline, _ = shipped_pair()
    recs = derive_recommendations(baseline, variant(baseline, data__clip_seconds=3.0, model__fold_div=4))
    assert [r.name for r in recs] == ["fold_div", "data.clip_seconds"]


def test_seed_and_where_things_are_written_leave_the_config_hash_alone() -> None:
    baseline, _ = shipped_pair()
    moved = variant(baseline, seed=7, tracking__experiment="other", tracking__run_name="x", train__output_dir="/tmp/else")
    assert config_hash(moved) == config_hash(baseline)
    assert "seed" not in identity_keys(baseline) and "train.output_dir" not in identity_keys(baseline)
    assert config_hash(variant(baseline, optim__lr=3e-4)) != config_hash(baseline)
    assert len(config_hash(baseline)) == 16
    assert config_diff(baseline, moved) == {}


def test_load_arms_names_configs_by_file_and_reports_every_bad_file(tmp_path: Path) -> None:
    arms = load_arms([ROOT / "baseline.yaml", ROOT / "baseline.yaml", ROOT / "recommended.yaml"],
                     overrides=["train.epochs=5"])
    assert [a.name for a in arms] == ["baseline", "baseline-2", "recommended"]
    assert all(a.config.train.epochs == 5 for a in arms)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: -1}\n")
    with pytest.raises(ConfigError) as err:
        load_arms([bad, tmp_path / "missing.yaml"])
    assert len(err.value.problems) == 2
    assert "optim.lr" in err.value.problems[0] and "missing.yaml" in err.value.problems[1]
