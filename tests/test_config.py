"""Config loading, layering, overrides, and every refusal the schema promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import Config, load_config, to_yaml
from harness.config.loading import config_from_dict, flatten, parse_override
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([ROOT / "baseline.yaml", ROOT / "recommended.yaml"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config([path])
    assert isinstance(cfg, Config)
    # And with the demo overlay, which only swaps data and sizes.
    demo = load_config([path, ROOT / "configs/demo.yaml"])
    assert demo.data.source == "synthetic"
    assert demo.model == cfg.model and demo.loss == cfg.loss and demo.optim == cfg.optim


def test_baseline_names_every_key_the_schema_has() -> None:
    from harness.config.loading import read_layers

    written = set(flatten(read_layers([ROOT / "baseline.yaml"])))
    every = set(flatten(Config()))
    # The synthetic generator's knobs only matter with source: synthetic, so the demo overlay names them.
    assert written == {k for k in every if not k.startswith("data.synthetic.")}, "add the new key to baseline.yaml"
    demo = set(flatten(read_layers([ROOT / "configs/demo.yaml"])))
    assert {k for k in every if k.startswith("data.synthetic.")} <= demo


def test_baseline_holds_the_users_current_setup() -> None:
    cfg = load_config([ROOT / "baseline.yaml"])
    assert cfg.model.backbone == "mobilenetv4_conv_small"
    assert (cfg.data.n_segment, cfg.model.fold_div, cfg.model.aggregate) == (8, 8, "mean")
    assert (cfg.data.input_size, cfg.train.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (224, 32, 1e-3, 0.01)
    assert cfg.data.sampler == "none" and cfg.loss.type == "bce" and cfg.loss.auto_pos_weight
    assert (cfg.early_stop.metric, cfg.early_stop.mode, cfg.early_stop.patience) == ("video_auc", "max", 8)


def test_recommended_is_baseline_plus_the_advice() -> None:
    base = flatten(load_config([ROOT / "baseline.yaml"]))
    rec = flatten(load_config([ROOT / "recommended.yaml"]))
    changed = {k: rec[k] for k in rec if rec[k] != base[k]}
    assert changed["optim.lr"] == 3e-4
    assert changed["optim.scheduler.type"] == "cosine"
    assert changed["optim.scheduler.warmup_epochs"] == 3
    assert changed["optim.scheduler.min_lr"] == 3e-5
    assert changed["model.fold_div"] == 4
    assert changed["model.aggregate"] == "attention"
    assert changed["loss.type"] == "focal_bce" and changed["loss.gamma"] == 2.0
    assert changed["train.grad_accum_steps"] == 2 and changed["train.amp"] is True
    assert changed["early_stop.patience"] == 10 and changed["early_stop.min_delta"] == 0.002
    assert changed["early_stop.monitor_secondary"] == "clip_auc"
    assert changed["train.val_every"] == 2
    assert changed["model.dropout"] == 0.3 and changed["data.augment.hflip"] is True
    # Nothing outside the advice differs.
    assert not {k for k in changed if k.startswith(("data.root", "data.source", "tracking", "seed"))}


def test_layering_later_files_override_and_base_resolves_relative(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("train: {epochs: 3, batch_size: 4}\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\ntrain: {epochs: 5}\n")
    (tmp_path / "c.yaml").write_text("optim: {lr: 0.01}\n")
    cfg = load_config([tmp_path / "sub" / "b.yaml", tmp_path / "c.yaml"], ["train.batch_size=7"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (5, 7, 0.01)


def test_overrides_are_typed_by_the_schema() -> None:
    cfg = load_config([ROOT / "baseline.yaml"], ["optim.lr=3e-4", "model.aggregate=attention", "data.augment.color_jitter=[0.1,0.1,0.1,0.05]"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.model.aggregate == "attention"
    assert cfg.data.augment.color_jitter == [0.1, 0.1, 0.1, 0.05]
    assert parse_override("train.epochs=12") == ("train.epochs", 12)


def test_export_yaml_round_trips_every_key() -> None:
    cfg = load_config([ROOT / "recommended.yaml", ROOT / "configs/demo.yaml"])
    text = to_yaml(cfg, "header line")
    assert text.startswith("# header line")
    assert config_from_dict(yaml.safe_load(text)) == cfg


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.lr=0.1"], "unknown key 'train.lr'"),
        (["model.fold_dvi=4"], "unknown key 'model.fold_dvi'"),
        (["optim.lr=fast"], "key 'optim.lr'"),
        (["optim.lr=-1"], "key 'optim.lr': Input should be greater than 0"),
        (["model.aggregate=max"], "key 'model.aggregate'"),
        (["model.dropout=1.5"], "key 'model.dropout'"),
        (["data.sampler=balanced"], "data.sampler=balanced corrects the imbalance already"),
        (["loss.gamma=2.0"], "loss.gamma=2.0 only applies to loss.type=focal_bce"),
        (["loss.type=focal_bce", "loss.auto_pos_weight=false"], "loss.type=focal_bce needs loss.gamma"),
        (["loss.type=focal_bce", "loss.gamma=2"], "loss.type=focal_bce takes no pos_weight"),
        (["loss.pos_weight=0.2"], "loss.auto_pos_weight and loss.pos_weight both set"),
        (["loss.type=focal_bce", "loss.auto_pos_weight=false", "loss.gamma=0.5"], "loss.gamma must be 0 or >= 1"),
        (["model.pretrained=true"], "model.pretrained=true needs model.pretrained_file"),
        (["optim.scheduler.type=cosine", "optim.scheduler.warmup_epochs=40"], "warmup_epochs must be < train.epochs"),
        (["data.augment.color_jitter=[0.2,0.2]"], "color_jitter must hold 4 values"),
    ],
)
def test_refusals_name_the_key_and_value(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([ROOT / "baseline.yaml"], overrides)
    assert needle in str(info.value)
    assert all("baseline.yaml" in line for line in info.value.problems)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config([ROOT / "baseline.yaml"], ["train.lr=1", "model.foo=2", "optim.weight_decay=-1"])
    assert len(info.value.problems) == 3


def test_unknown_key_lists_the_allowed_keys() -> None:
    with pytest.raises(ConfigError, match="allowed here: .*grad_accum_steps"):
        load_config([ROOT / "baseline.yaml"], ["train.grad_acum_steps=2"])


def test_bad_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    for name, needle in [("broken.yaml", "not valid YAML"), ("list.yaml", "must be a YAML mapping"), ("loop.yaml", "loops"), ("missing.yaml", "not found")]:
        with pytest.raises(ConfigError, match=needle):
            load_config([tmp_path / name])


def test_cli_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--config", str(ROOT / "baseline.yaml"), "--set", "data.sampler=balanced", "--no-track"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "data.sampler=balanced" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_data_paths_expand_the_home_folder() -> None:
    from harness.config.schema import DataConfig

    cfg = DataConfig(root="~/ffpp", cache_dir="~/cache", manifest="~/m.csv")
    assert (cfg.root, cfg.cache_dir, cfg.manifest) == (Path.home() / "ffpp", Path.home() / "cache", Path.home() / "m.csv")


def test_dotted_keys_are_looked_up_in_the_schema() -> None:
    from harness.config.keys import default_of, key_problem, known_keys, normalise, number_type, value_problem

    assert known_keys("optim.scheduler") == ["type", "warmup_epochs", "min_lr"] and known_keys("optim.lr") == []
    assert key_problem("optim.scheduler.min_lr") is None
    assert "'lrr' is unknown; allowed under 'optim': name, lr" in key_problem("optim.lrr")
    assert "names a section; choose one of its keys: type, warmup_epochs, min_lr" in key_problem("optim.scheduler")
    assert (number_type("optim.lr"), number_type("loss.gamma"), number_type("train.epochs")) == (float, float, int)
    assert number_type("model.aggregate") is None
    assert normalise("optim.lr", "3e-4") == 3e-4 and normalise("optim.lr", "fast") == "fast"
    assert "optim.lr must be valid for the schema, but got -1" in value_problem("optim.lr", -1)
    assert default_of("train.val_every") == 1


def test_overrides_of_config_keys_are_read_as_the_key_holds_them() -> None:
    # YAML alone would make 1e3 a string for a float key and 2024 a number for a text key.
    assert parse_override("optim.lr=1e3") == ("optim.lr", 1000.0)
    assert parse_override("tracking.run_name=1e3") == ("tracking.run_name", "1e3")
    cfg = load_config([ROOT / "baseline.yaml"], ["tracking.experiment=2024", "optim.lr=3e-4"])
    assert (cfg.tracking.experiment, cfg.optim.lr) == ("2024", 3e-4)
    # Keys outside the run config (`harness synth --set n_sources=60`) keep the YAML reading.
    assert parse_override("artefact_strength=3e-1") == ("artefact_strength", 0.3)
