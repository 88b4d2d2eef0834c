"""The command table: fast help, and the data commands end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.cli import COMMANDS, main


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\nfrom harness.cli import build_parser\n"
        "for name in [None, *build_parser()._subparsers._group_actions[0].choices]:\n"
        "    try:\n        build_parser().parse_args(['--help'] if name is None else [name, '--help'])\n"
        "    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'timm', 'mlflow', 'optuna', 'pandas', 'decord') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_every_command_is_listed_in_help(capsys) -> None:
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_index_writes_a_manifest_of_the_ffpp_tree(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "manifest.csv"
    assert main(["index", "--root", str(synthetic_root), "--out", str(out)]) == 0
    manifest = pd.read_csv(out)
    assert len(manifest) == 36 and manifest["label"].sum() == 30
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert "wrote 36 videos" in capsys.readouterr().out


def test_index_on_a_missing_root_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["index", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert not (tmp_path / "m.csv").exists()


def test_synth_writes_a_tree_and_refuses_bad_options(tmp_path: Path, capsys) -> None:
    out = tmp_path / "syn"
    assert main(["synth", "--out", str(out), "--set", "n_sources=6", "--set", "frames=24", "--set", "size=32"]) == 0
    assert (out / ".complete").exists() and (out / "splits" / "train.json").exists()
    assert len(list((out / "manipulated_sequences").rglob("*.mp4"))) == 30
    assert main(["synth", "--out", str(tmp_path / "bad"), "--set", "artefact_strength=3"]) == 2
    assert "artefact_strength" in capsys.readouterr().err
