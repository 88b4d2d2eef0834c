"""A database storage whose calls wait out a lost connection (`retry.StorageRetry`) instead of failing the sweep.

Every Optuna storage call of a worker (ask, tell, report, should_prune, user attributes, the reaper's
reads) goes through `RetryingStorage`, so a PostgreSQL restart pauses the worker rather than ending it.

Retrying a write is safe only if doing it twice leaves what doing it once would. The reply to a
COMMIT can be lost after the server applied it, so a retry may be the second run of a write that
landed. Call by call:

- attributes, intermediate values and parameters: RDBStorage upserts them (or ignores the
  duplicate key), so a second run changes nothing;
- `create_new_trial` (ask, enqueue_trial) would make a second trial. Each new trial carries a
  one-off token (system attr `harness:create_token`) written in the same transaction, and a retry
  first looks for a trial holding it: found, the first run landed and its trial is returned;
- `set_trial_state_values` to a finished state (tell) would find the trial finished and raise. A
  retry that finds it finished exactly as asked (same state, same values) reports success;
- `set_trial_state_values` to RUNNING (ask taking an enqueued trial) cannot tell its own landed
  run from another worker's, so a retry that finds the trial taken moves on to the next one, as
  Optuna does. The trial it may have taken stays RUNNING with no worker's mark on it, and the
  reaper, under the storage lock, fails it and enqueues it again (`liveness.reap_dead_trials`).

RDBStorage itself retries a failed trial creation up to five times (meant for deadlocks), which after
a lost COMMIT reply would make the second trial before the token is looked for. So on this
storage's engine a lost connection raises `retry.StorageConnectionLost` instead of SQLAlchemy's
error: RDBStorage catches only SQLAlchemy's, and lets this one through to the retry here.

Heartbeats are not retried: a missed beat costs nothing while the grace period allows several, and
the heartbeat thread must stop as soon as its trial ends. Since every worker's beats stop while the
server is down, no trial is judged stale until a restarted server has been up a whole grace period.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Container, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat  # private, like those in optuna_access (see there)

from harness.sweep import optuna_access
from harness.sweep.retry import StorageConnectionLost, is_connection_lost

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.storages import RDBStorage
    from optuna.study import StudyDirection
    from optuna.study._frozen import FrozenStudy
    from optuna.trial import FrozenTrial, TrialState
    from sqlalchemy.engine import Engine, ExceptionContext

    from harness.sweep.retry import StorageRetry

__all__ = ["RetryingStorage", "CREATE_TOKEN"]

# The system attribute that lets a retried `create_new_trial` find the trial its lost first run made.
CREATE_TOKEN = "harness:create_token"


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """`rdb`, behind Optuna's read cache, with every call retried through `retry` while the connection is lost."""

    def __init__(self, rdb: RDBStorage, retry: StorageRetry) -> None:
        self.rdb = rdb
        self.retry = retry
        self._storage = optuna_access.cached_storage(rdb)
        _raise_lost_connections_past_optuna(rdb.engine)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._storage, name)
        return self.retry.call(name, lambda: method(*args, **kwargs))

    # --- studies ---------------------------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        # A landed first run makes the retry raise DuplicatedStudyError, which `create_study(load_if_exists=True)`,
        # as the sweep calls it, takes for "load it".
        return self._call("create_new_study", directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._call("delete_study", study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_user_attr", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_system_attr", study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call("get_study_id_from_name", study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call("get_study_name_from_id", study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call("get_study_directions", study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_user_attrs", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_system_attrs", study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._call("get_all_studies")

    # --- trials ----------------------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        token = uuid.uuid4().hex
        template = _with_create_token(template_trial, token)
        attempts = 0

        def attempt() -> int:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                for trial in self._storage.get_all_trials(study_id, deepcopy=False):
                    if trial.system_attrs.get(CREATE_TOKEN) == token:
                        return self._storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            return self._storage.create_new_trial(study_id, template)

        return self.retry.call("create_new_trial", attempt)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self._call("set_trial_param", trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call("get_trial_id_from_study_id_trial_number", study_id, trial_number)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return self._storage.set_trial_state_values(trial_id, state=state, values=values)
            except UpdateFinishedTrialError:
                if attempts > 1 and state.is_finished() and self._finished_as(trial_id, state, values):
                    return True  # the lost reply was this call's own success
                raise

        return self.retry.call("set_trial_state_values", attempt)

    def _finished_as(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        trial = self._storage.get_trial(trial_id)
        return trial.state == state and (values is None or list(trial.values or []) == list(values))

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._call("set_trial_intermediate_value", trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("set_trial_user_attr", trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("set_trial_system_attr", trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call("get_trial", trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._call("get_all_trials", study_id, deepcopy=deepcopy, states=states)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call("get_best_trial", study_id)

    def remove_session(self) -> None:
        self._storage.remove_session()

    # --- heartbeat -------------------------------------------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        self._storage.record_heartbeat(trial_id)  # not retried: see the module docstring

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        def attempt() -> list[int]:
            # Every worker's beats stopped while the server was down; until it has been up a whole grace
            # period, a silent trial may belong to a worker that has not had the chance to beat again.
            if self._server_uptime() < self._grace_period():
                return []
            return self._storage._get_stale_trial_ids(study_id)  # type: ignore[attr-defined]

        return self.retry.call("_get_stale_trial_ids", attempt)

    def _grace_period(self) -> float:
        # RDBStorage's own default when no grace period is given.
        return self.rdb.grace_period or 2 * (self.rdb.heartbeat_interval or 0)

    def _server_uptime(self) -> float:
        """Seconds since the PostgreSQL server started; infinite for databases that keep no such time (SQLite)."""
        import sqlalchemy

        if self.rdb.engine.dialect.name != "postgresql":
            return float("inf")
        with self.rdb.engine.connect() as connection:
            return float(connection.execute(
                sqlalchemy.text("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")).scalar_one())

    def get_heartbeat_interval(self) -> int | None:
        return self._storage.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._storage.get_heartbeat_stale_trial_callback()


def _with_create_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """`template` with the create token among its system attrs; for no template, what RDBStorage makes of none."""
    from optuna.trial import FrozenTrial, TrialState

    if template is None:
        return FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
            params={}, distributions={}, user_attrs={}, system_attrs={CREATE_TOKEN: token}, intermediate_values={},
            trial_id=-1,
        )
    tagged = copy.copy(template)  # the caller's template is left as it was
    tagged.system_attrs = {**template.system_attrs, CREATE_TOKEN: token}
    return tagged


def _raise_lost_connections_past_optuna(engine: Engine) -> None:
    """Make a lost connection on `engine` raise StorageConnectionLost, which no Optuna code catches (see above)."""
    import sqlalchemy

    def handle_error(context: ExceptionContext) -> None:
        if context.is_disconnect or is_connection_lost(context.original_exception):
            first_line = (str(context.original_exception).strip() or type(context.original_exception).__name__)
            # SQLAlchemy still invalidates the dead connection (and the pool) before raising this.
            raise StorageConnectionLost(f"database connection lost: {first_line.splitlines()[0]}")

    sqlalchemy.event.listen(engine, "handle_error", handle_error)
