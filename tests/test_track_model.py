"""The best checkpoint as an MLflow model (`harness export-best --log-model`, `--register NAME`), in a real SQLite
MLflow store with a local artifact root and a real model registry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.validation import _validate_model_name  # private, but it is the rule the registry applies

from harness.cli import main
from harness.config import load_config
from harness.config.loading import config_from_dict
from harness.errors import HarnessError
from harness.model.detector import build_detector
from harness.sweep.storage import open_storage
from harness.track.model_log import check_model_name, log_detector
from harness.train.checkpoint import load_checkpoint, save_checkpoint
from helpers import ROOT, write_space


@dataclass(frozen=True)
class Swept:
    """A finished one-trial sweep: its folder, Optuna journal, MLflow URI, and the trial's run and best.pt."""

    tmp: Path
    journal: str
    uri: str
    trial: int
    run_id: str
    best_pt: Path

    def export(self, out: str, *flags: str) -> int:
        return main(["export-best", "--study-name", "m", "--storage", self.journal, "--tracking-uri", self.uri,
                     "--out", str(self.tmp / out), *flags])


@pytest.fixture(scope="module")
def swept(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swept]:
    tmp = tmp_path_factory.mktemp("swept")
    space = write_space(tmp, synthetic_root, {"type": "none"})
    body = yaml.safe_load(space.read_text())
    body["fixed"]["train.epochs"] = 1  # one validation is enough for a best.pt
    space.write_text(yaml.safe_dump(body, sort_keys=False))
    journal, uri = str(tmp / "optuna.journal"), f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the SQLite store's default artifact root is ./mlruns
        assert main(["sweep", "--space", str(space), "--trials", "1", "--storage", journal, "--study-name", "m",
                     "--tracking-uri", uri, "--quiet"]) == 0
        best = optuna.load_study(study_name="m", storage=open_storage(journal)).best_trial
        run_id = best.user_attrs["mlflow_run_id"]
        best_pt = Path(MlflowClient(uri).get_run(run_id).data.tags["run_dir"]) / "best.pt"
        yield Swept(tmp, journal, uri, best.number, run_id, best_pt)


def _checkpoint_logits(best_pt: Path, clips: np.ndarray) -> torch.Tensor:
    """What the detector in `best_pt`, rebuilt as training built it, says about `clips`."""
    state = load_checkpoint(best_pt)
    cfg = config_from_dict(state["config"])
    detector = build_detector(cfg.model, cfg.data.n_segment)
    detector.load_state_dict(state["model"])
    with torch.no_grad():
        return detector.eval()(torch.from_numpy(clips))[0]


def _logged_example(model_uri: str) -> np.ndarray:
    # The example comes back from JSON as plain integers; the signature says which dtype the graph takes.
    model = Model.load(model_uri)
    return np.asarray(model.load_input_example(model_uri), dtype=model.get_input_schema().inputs[0].type)


@pytest.mark.slow
def test_export_best_log_model_logs_the_best_checkpoint_in_the_trials_run(
    swept: Swept, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(swept.tmp)
    assert swept.export("logged.yaml", "--log-model") == 0
    client = MlflowClient(swept.uri)
    # An MLflow 3 logged model whose source is the trial's run, listed among the run's outputs (the UI's Models
    # column) at the checkpoint's epoch.
    [logged] = client.search_logged_models([client.get_run(swept.run_id).info.experiment_id])
    assert logged.source_run_id == swept.run_id and logged.name == "model" and logged.status.name == "READY"
    [output] = client.get_run(swept.run_id).outputs.model_outputs
    assert output.model_id == logged.model_id
    assert output.step == torch.load(swept.best_pt, weights_only=True)["epoch"]
    uri = f"models:/{logged.model_id}"
    assert f"MLflow model {uri}" in capsys.readouterr().out
    assert {"MLmodel", "data"} <= {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
    header = (swept.tmp / "logged.yaml").read_text().split("\n# exported")[0]
    assert header.startswith("# best trial of study 'm'") and f"# trial {swept.trial}:" in header
    assert f"MLflow run: {swept.run_id}; model: {uri}" in header

    monkeypatch.setenv("MLFLOW_TRACKING_URI", swept.uri)  # runs:/ and models:/ URIs resolve through it
    info = Model.load(uri)
    cfg = load_config([swept.tmp / "logged.yaml"])
    assert info.get_input_schema().inputs[0].shape == (-1, cfg.data.n_segment, 3, cfg.data.input_size,
                                                      cfg.data.input_size)
    assert info.metadata["checkpoint_epoch"] == torch.load(swept.best_pt, weights_only=True)["epoch"]
    example = _logged_example(uri)
    assert example.dtype == np.uint8 and example.shape[1:] == (cfg.data.n_segment, 3, cfg.data.input_size,
                                                               cfg.data.input_size)

    loaded = mlflow.pytorch.load_model(uri)
    expected = _checkpoint_logits(swept.best_pt, example)
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(example)), expected, rtol=1e-5, atol=1e-5)
        # The batch stays free: three clips, not only the example's two.
        three = np.concatenate([example, example[:1]])
        torch.testing.assert_close(loaded(torch.from_numpy(three)), torch.cat([expected, expected[:1]]),
                                   rtol=1e-5, atol=1e-5)
    # Served through the generic pyfunc interface too, as `mlflow models serve` would.
    np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(example), expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_export_best_register_adds_a_registry_version_per_call(
    swept: Swept, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(swept.tmp)
    assert swept.export("first.yaml", "--register", "deepfake-detector") == 0
    assert "registered deepfake-detector version 1: models:/deepfake-detector/1" in capsys.readouterr().out
    assert swept.export("second.yaml", "--register", "deepfake-detector") == 0
    assert "registered deepfake-detector version 2: models:/deepfake-detector/2" in capsys.readouterr().out

    client = MlflowClient(swept.uri)
    assert client.get_registered_model("deepfake-detector").name == "deepfake-detector"
    versions = client.search_model_versions("name = 'deepfake-detector'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    # Each call logs the checkpoint anew, as a logged model of the trial's run that names its registry version.
    logged = [m for m in client.search_logged_models([client.get_run(swept.run_id).info.experiment_id])
              if "mlflow.modelVersions" in m.tags]
    assert sorted(yaml.safe_load(m.tags["mlflow.modelVersions"])[0]["version"] for m in logged) == [1, 2]
    assert all(m.source_run_id == swept.run_id for m in logged)
    assert sorted(v.source for v in versions) == sorted(m.artifact_location for m in logged)
    assert all(v.run_id == swept.run_id for v in versions)
    assert all(v.tags == {"harness.study": "m", "harness.trial": str(swept.trial)} for v in versions)
    header = (swept.tmp / "second.yaml").read_text().split("\n# exported")[0]
    assert f"MLflow run: {swept.run_id}; model: models:/deepfake-detector/2" in header

    monkeypatch.setenv("MLFLOW_TRACKING_URI", swept.uri)
    example = _logged_example("models:/deepfake-detector/2")
    with torch.no_grad():
        logits = mlflow.pytorch.load_model("models:/deepfake-detector/2")(torch.from_numpy(example))
    torch.testing.assert_close(logits, _checkpoint_logits(swept.best_pt, example), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_export_best_refuses_a_bad_name_or_a_missing_checkpoint_and_writes_nothing(
    swept: Swept, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(swept.tmp)
    client = MlflowClient(swept.uri)

    def store_state() -> tuple:
        artifacts = [(a.path, a.file_size) for a in client.list_artifacts(swept.run_id)]
        model = [(a.path, a.file_size) for a in client.list_artifacts(swept.run_id, "model")]
        registered = sorted((m.name, m.last_updated_timestamp) for m in client.search_registered_models())
        logged = [m.model_id for m in client.search_logged_models([client.get_run(swept.run_id).info.experiment_id])]
        return artifacts, model, registered, logged

    before = store_state()
    for name in ["a/b", "team:model", " ", ".."]:
        capsys.readouterr()
        assert swept.export("bad.yaml", "--register", name) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--register must be an MLflow registered-model name" in err[0] and repr(name) in err[0]

    moved = swept.best_pt.rename(swept.best_pt.with_name("moved.pt"))
    try:
        for flags in (["--log-model"], ["--register", "never-made"]):
            assert swept.export("bad.yaml", *flags) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "best checkpoint must exist to log it as an MLflow model" in err[0]
            assert str(swept.best_pt) in err[0]
    finally:
        moved.rename(swept.best_pt)
    assert not (swept.tmp / "bad.yaml").exists()
    assert store_state() == before


def test_model_names_are_checked_by_the_registrys_own_rule() -> None:
    for name in ["detector", "deepfake detector", "a..b", ".hidden", "détecteur", "v1.0", "", " ", ".", "..", "..a",
                 "./a", "a/b", "a:b", "a/../b"]:
        try:
            _validate_model_name(name)
            registry_accepts = True
        except MlflowException:
            registry_accepts = False
        if registry_accepts:
            assert check_model_name(name) == name
        else:
            with pytest.raises(HarnessError, match="--register must be"):
                check_model_name(name)


@pytest.mark.slow
def test_log_detector_exports_attention_pooling_with_a_free_batch(tmp_path: Path) -> None:
    cfg = load_config([ROOT / "recommended.yaml", ROOT / "configs" / "demo.yaml"],
                      ["data.input_size=32", "data.n_segment=4"])
    assert cfg.model.aggregate == "attention"
    torch.manual_seed(0)
    detector = build_detector(cfg.model, cfg.data.n_segment).eval()
    best_pt = save_checkpoint({"model": detector.state_dict(), "epoch": 3, "metric": 0.7, "threshold": 0.42,
                               "config": cfg.model_dump(mode="json")}, tmp_path / "best.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id

    logged = log_detector(best_pt, run_id, uri)
    assert logged.uri == f"models:/{logged.model_id}" and logged.seconds > 0
    model = client.get_logged_model(logged.model_id)
    assert model.source_run_id == run_id and model.status.name == "READY"
    local = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                dst_path=str(tmp_path / "download"))
    info = Model.load(local)
    assert info.metadata["video_threshold"] == 0.42 and info.metadata["checkpoint_epoch"] == 3
    loaded = mlflow.pytorch.load_model(local)
    clips = np.random.default_rng(1).integers(0, 256, (5, 4, 3, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(clips)), detector(torch.from_numpy(clips))[0],
                                   rtol=1e-5, atol=1e-5)
