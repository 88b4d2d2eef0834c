"""The multi-worker test services are real: two Optuna clients share a PostgreSQL study, and
two MLflow clients share an `mlflow server` backed by PostgreSQL with proxied artifacts."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest

from services import drop_database, fresh_database, fresh_postgres_db, mlflow_server, postgres_url  # noqa: F401

pytestmark = pytest.mark.faults


def test_a_second_optuna_client_sees_the_trial_the_first_told(fresh_postgres_db: str) -> None:
    first = optuna.create_study(study_name="shared", storage=optuna.storages.RDBStorage(fresh_postgres_db))
    trial = first.ask()
    lr = trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
    first.tell(trial, 0.75)

    second = optuna.load_study(study_name="shared", storage=optuna.storages.RDBStorage(fresh_postgres_db))
    [seen] = second.get_trials()
    assert seen.state == optuna.trial.TrialState.COMPLETE
    assert seen.value == 0.75 and seen.params == {"optim.lr": lr}


def test_an_mlflow_server_on_postgres_stores_what_one_client_logs_for_another(
    postgres_url: str, tmp_path: Path
) -> None:
    backend = fresh_database(postgres_url, "mlflow_server")
    artifacts_dir = tmp_path / "artifacts"
    note = tmp_path / "note.txt"
    note.write_text("proxied through the server\n")
    try:
        with mlflow_server(backend, artifacts_dir) as server_url:
            writer = mlflow.MlflowClient(tracking_uri=server_url)
            experiment_id = writer.create_experiment("services")
            run_id = writer.create_run(experiment_id).info.run_id
            writer.log_param(run_id, "optim.lr", "0.003")
            writer.log_metric(run_id, "val_video_auc", 0.875, step=2)
            writer.log_artifact(run_id, str(note), artifact_path="notes")
            writer.set_terminated(run_id)

            reader = mlflow.MlflowClient(tracking_uri=server_url)
            run = reader.get_run(run_id)
            assert run.info.status == "FINISHED"
            assert run.data.params == {"optim.lr": "0.003"}
            [auc] = reader.get_metric_history(run_id, "val_video_auc")
            assert (auc.value, auc.step) == (0.875, 2)
            assert [a.path for a in reader.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
            downloaded = Path(reader.download_artifacts(run_id, "notes/note.txt", str(tmp_path / "down")))
            assert downloaded.read_text() == "proxied through the server\n"
    finally:
        drop_database(backend)

    # The server, not the client, wrote the file: it sits under --artifacts-destination.
    [stored] = artifacts_dir.rglob("note.txt")
    assert stored.relative_to(artifacts_dir).parts[:2] == (experiment_id, run_id)
    assert stored.read_text() == "proxied through the server\n"
