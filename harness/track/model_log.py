"""A `best.pt` as an MLflow model in its run's artifacts, and that model in the MLflow Model Registry.

The model is saved in MLflow's pt2 format (a `torch.export` graph), so `mlflow.pytorch.load_model` needs
neither this package nor timm, and loading it unpickles nothing. Like `harness.track.mlflow_run`, everything
goes through an explicit MlflowClient and run id, never the fluent API's active run and global tracking URI.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from harness.config.loading import config_from_dict
from harness.errors import HarnessError
from harness.track.mlflow_run import open_client

__all__ = ["ARTIFACT_PATH", "LoggedDetector", "RegisteredVersion", "check_model_name", "example_clips",
           "log_detector", "register_detector"]

ARTIFACT_PATH = "model"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # mlflow.utils.mlflow_tags.MLFLOW_MODEL_VERSIONS
# Two clips, not one: torch.export fixes a size-1 dimension to a constant, so a one-clip example would give
# a graph that refuses any other batch size although the signature says (-1, T, 3, H, W).
EXAMPLE_CLIPS = 2


@dataclass(frozen=True)
class LoggedDetector:
    """Where `log_detector` put the model, and what it took."""

    run_id: str
    uri: str  # models:/<model_id>
    seconds: float  # loading the checkpoint, exporting the graph and uploading it
    model_id: str  # the MLflow logged model's id (m-...)


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model, as `models:/` URIs name it."""

    name: str
    version: int

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class _ClipLogits(nn.Module):
    """The detector with one tensor out: MLflow's pytorch flavour serves a single output tensor."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, clips: Tensor) -> Tensor:
        logits, _ = self.detector(clips)  # (B,); the attention weights are for analysis, not serving
        return logits


def check_model_name(name: str) -> str:
    """The registry's own rule, checked before anything is written: not blank, no '/' or ':', no path tricks."""
    normalised = posixpath.normpath(name)
    if (not name.strip() or "/" in name or ":" in name or normalised != name or normalised == "."
            or normalised.startswith("..")):
        raise HarnessError(
            f"--register must be an MLflow registered-model name (not blank, without '/' or ':', neither '.' "
            f"nor starting with '..'), but got {name!r}"
        )
    return name


def example_clips(n_segment: int, input_size: int, seed: int = 0) -> np.ndarray:
    """Clips as the data pipeline hands them over, uint8 (EXAMPLE_CLIPS, T, 3, H, W); seeded, so reproducible."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (EXAMPLE_CLIPS, n_segment, 3, input_size, input_size), dtype=np.uint8)


def _load_detector(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's detector in eval mode on the CPU, and the metadata the MLmodel file carries."""
    from harness.model.detector import build_detector
    from harness.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"], source=str(checkpoint))
    # load_state_dict replaces every weight, so the pretrained file (maybe on another machine) is not needed.
    detector = build_detector(cfg.model.model_copy(update={"pretrained": False}), cfg.data.n_segment)
    detector.load_state_dict(state["model"])
    metadata = {
        "input": "uint8 RGB clips (B, n_segment, 3, input_size, input_size), frames in time order",
        "output": "one logit per clip (1 = fake)",
        "n_segment": cfg.data.n_segment,
        "input_size": cfg.data.input_size,
        "backbone": cfg.model.backbone,
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": int(state["epoch"]),
        # How `fit` turns clip logits into a video decision: aggregate the clips' sigmoids, then threshold.
        "video_aggregation": cfg.eval.video_aggregation,
        "video_threshold": float(state.get("threshold", 0.5)),
    }
    return _ClipLogits(detector).eval(), metadata


def log_detector(checkpoint: Path, run_id: str, tracking_uri: str | None = None) -> LoggedDetector:
    """Log `checkpoint` as MLflow model `model` of run `run_id`: graph, signature, input example.

    It becomes an MLflow 3 logged model whose source is the run, as `mlflow.pytorch.log_model` makes
    one (so the run's Models column and the experiment's Models page show it), but through the
    client and run id rather than the fluent API's active run. Exported on the CPU: a pt2 graph
    keeps its weights on the device it was traced on, and a CPU model loads everywhere.
    """
    import mlflow.pytorch
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model, infer_signature

    start = time.perf_counter()
    model, metadata = _load_detector(Path(checkpoint))
    example = example_clips(metadata["n_segment"], metadata["input_size"])
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    client = open_client(tracking_uri)
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id, name=ARTIFACT_PATH, source_run_id=run_id, model_type="deepfake-detector",
        params={key: str(value) for key, value in run.data.params.items()},
        tags={"checkpoint": str(checkpoint), "checkpoint_epoch": str(metadata["checkpoint_epoch"])},
    )
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=metadata["checkpoint_epoch"])])
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / ARTIFACT_PATH
            mlflow.pytorch.save_model(
                model, str(local), serialization_format="pt2", input_example=example,
                signature=infer_signature(example, logits), metadata=metadata,
                mlflow_model=Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                                   run_id=run_id, model_id=logged.model_id),
                # The flavour's pinned defaults (torch, cloudpickle; MLflow adds itself): inferring them instead
                # loads the model again in a subprocess. The graph needs nothing from harness or timm.
                pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            )
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return LoggedDetector(run_id, f"models:/{logged.model_id}", time.perf_counter() - start, logged.model_id)


def register_detector(
    model: LoggedDetector, name: str, tracking_uri: str | None = None, tags: dict[str, Any] | None = None
) -> RegisteredVersion:
    """A new version of registered model `name` (created on first use) from the logged model's files."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    client = open_client(tracking_uri)
    try:
        client.create_registered_model(check_model_name(name))
    except MlflowException as exc:  # a second registration under the same name only adds a version
        if exc.error_code not in (ErrorCode.Name(RESOURCE_ALREADY_EXISTS), ErrorCode.Name(ALREADY_EXISTS)):
            raise
    # The logged model's artifact location as the source: MLflow's SQL registry would resolve a models:/<id>
    # source through the global tracking URI, not this client's.
    logged = client.get_logged_model(model.model_id)
    version = client.create_model_version(name, logged.artifact_location, run_id=model.run_id,
                                          model_id=model.model_id, tags={k: str(v) for k, v in (tags or {}).items()})
    # The link back from the logged model that mlflow.register_model writes, which the Models page shows.
    linked = json.loads(logged.tags.get(MODEL_VERSIONS_TAG, "[]")) + [{"name": name, "version": version.version}]
    client.set_logged_model_tags(model.model_id, {MODEL_VERSIONS_TAG: json.dumps(linked)})
    return RegisteredVersion(name, int(version.version))
