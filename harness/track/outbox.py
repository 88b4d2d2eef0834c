"""Tracking that outlives its server: writes MLflow cannot take now wait in the run's folder and go out, in order, later.

A tracking server that is restarted, upgraded or killed must cost a sweep neither its trials nor their curves.
So a run's writes (its creation, params, metrics, tags, dataset inputs, artifacts, its end) go through
`BufferedClient`: a write that fails because the server cannot be reached is appended to `mlflow_outbox.jsonl`
in the run's folder, a warning says so once, and training goes on. While that queue holds anything, later
writes line up behind it, so the server receives them in the order they were made (the run's end after its
last metric). While the server is down, a write tries to deliver the queue first only every so often (from
`RETRY_SECONDS` on, doubling), and the run's end always does. What is still queued when the run ends stays on
disk: a sweep delivers it before its next trial and when the study's next `harness sweep` starts, `harness sync`
on demand. A sweep's parent run queues its closing writes in the sweep's folder the same way.

A run created while the server is down has no MLflow id yet. It gets a placeholder (`pending-<hex>`) that its
later writes are queued under; delivering its creation maps the placeholder to the real id (kept in the
outbox's state file, for the writes still queued) and rewrites the folder's `mlflow_run.json`.

Delivery is at least once: a process killed mid-delivery sends its last write again, which MLflow takes
as the same metric, param or tag. A write the server refuses (anything but "unreachable") would block the
queue for good, so it is moved to `mlflow_outbox.rejected.jsonl` with the reason, and the rest go on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.io import file_lock, write_text_atomic

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Metric, Param, Run, RunTag

__all__ = [
    "QUEUE_NAME", "RETRY_SECONDS", "RETRY_SECONDS_MAX", "HTTP_DEFAULTS", "BufferedClient", "Outbox", "Delivery", "deliver",
    "deliver_pending", "is_pending", "is_unreachable", "limit_http_retries", "unreachable_reason",
]

QUEUE_NAME = "mlflow_outbox.jsonl"
_STATE_NAME = "mlflow_outbox.state.json"  # how many queued writes went out, and which placeholder became which run
_LOCK_NAME = "mlflow_outbox.lock"  # stays in place: a lock file removed while another process waits on it splits the lock
_FILES_NAME = "mlflow_outbox.files"  # copies of artifacts logged from temporary folders
_REJECTED_NAME = "mlflow_outbox.rejected.jsonl"

# Between two tries to deliver a queue while the server is down: doubling from RETRY_SECONDS to RETRY_SECONDS_MAX,
# counted from the end of the failed try. A stopped server refuses at once, but each try at a host that drops
# packets waits out the timeout twice (20 s): spaced out, a long outage costs training little, and the run's end
# tries once more whatever the wait.
RETRY_SECONDS = 15.0
RETRY_SECONDS_MAX = 120.0

# MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) make one call to a stopped server take about
# four minutes, and one to a host that drops packets over fifteen. The outbox is the retry here, so a call gives
# up after one quick retry (urllib3 waits 0 s before the first) or 10 s without an answer. Set with setdefault:
# an environment that chose its own values keeps them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

_PENDING_RUN = "pending-"
_PENDING_EXPERIMENT = "pending-experiment:"

log = logging.getLogger(__name__)


def limit_http_retries() -> None:
    """Let an unreachable server fail a call in seconds rather than minutes (see `HTTP_DEFAULTS`).

    Environment variables, because MLflow reads these per request from the environment and has no per-client
    setting; they apply to every MLflow client of this process that does not set them itself.
    """
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def is_pending(run_id: str | None) -> bool:
    """Whether `run_id` is a placeholder for a run whose creation is still queued."""
    return isinstance(run_id, str) and run_id.startswith(_PENDING_RUN)


def _causes(error: BaseException) -> Iterator[BaseException]:
    # MLflow raises its "API request ... failed" inside the except block of the requests error, so the
    # requests error is the MlflowException's __context__, not its __cause__.
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_unreachable(error: BaseException) -> bool:
    """Whether `error` says the tracking server could not be reached or could not answer now (as opposed to a
    request it refused): a refused or dropped connection, a timeout, or 5xx answers until the retries ran out.
    """
    import requests

    for cause in _causes(error):
        if isinstance(cause, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                              requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError)):
            return True
        # An artifact upload checks its own status: a proxy or a restarting server answering 502/503.
        if isinstance(cause, requests.HTTPError) and cause.response is not None and cause.response.status_code >= 500:
            return True
    return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def unreachable_reason(error: BaseException) -> str:
    """The short why of an unreachable server, out of the layers MLflow, requests and urllib3 wrap it in."""
    text = " ".join(str(cause) for cause in _causes(error))
    for pattern in (r"\[Errno -?\d+\] ([^'\")]+)", r"(Read timed out)", r"(too many \d+ error responses)",
                    r"(\d{3} Server Error[^'\")]*)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip().rstrip(".")
    return _first_line(error)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the files -----------------------------------------------------------------------------------
class Outbox:
    """The queue files of one run folder. `pending` may be asked any time; the rest expects `locked()` held,
    since the run's own process appends while a sweep or `harness sync` in another may be delivering.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.queue = self.folder / QUEUE_NAME
        self.rejected = self.folder / _REJECTED_NAME
        self._state = self.folder / _STATE_NAME
        self._files = self.folder / _FILES_NAME

    def pending(self) -> bool:
        return self.queue.exists()

    @contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self.folder / _LOCK_NAME):
            yield

    def read_state(self) -> dict[str, Any]:
        """{"sent": writes of the queue already delivered (or rejected), "ids": placeholder -> run id, "target": URI}."""
        try:
            state = json.loads(self._state.read_text())
        except (OSError, ValueError):
            state = {}
        return {"sent": 0, "ids": {}, "target": None, **state}

    def write_state(self, state: Mapping[str, Any]) -> None:
        write_text_atomic(self._state, json.dumps(state))

    def append(self, record: dict[str, Any], target: str) -> None:
        """Add one write at the end; an artifact outside the folder is copied in first (it may be a temporary file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if record["kind"] == "log_artifact":
            record = {**record, "payload": {**record["payload"], "path": self._keep(Path(record["payload"]["path"]))}}
        if not self._state.exists():
            self.write_state({**self.read_state(), "target": target})
        line = json.dumps(record) + "\n"
        with open(self.queue, "ab") as queue:
            # A writer killed mid-line leaves a cut record: end it, so this one starts on a line of its own.
            if queue.tell() > 0 and not self._ends_with_newline():
                line = "\n" + line
            queue.write(line.encode())  # one write of one line: readers under the lock see it whole

    def _ends_with_newline(self) -> bool:
        with open(self.queue, "rb") as queue:
            queue.seek(-1, os.SEEK_END)
            return queue.read(1) == b"\n"

    def _keep(self, path: Path) -> str:
        """Where the queued artifact will be read from: its path relative to the folder, copied in if outside."""
        path = path.resolve()
        folder = self.folder.resolve()
        if path.is_relative_to(folder):
            return str(path.relative_to(folder))
        # One folder per copy keeps the file's name, which MLflow uses as the artifact's name.
        copy = self._files / uuid.uuid4().hex[:12] / path.name
        copy.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, copy)
        else:
            shutil.copy2(path, copy)
        return str(copy.relative_to(self.folder))

    def lines(self) -> list[str]:
        try:
            text = self.queue.read_text()
        except FileNotFoundError:
            return []
        return text.splitlines()

    def reject(self, line: str, error: BaseException) -> None:
        with open(self.rejected, "a") as rejected:
            rejected.write(json.dumps({"record": line, "error": _first_line(error), "time": _now_ms()}) + "\n")

    def clear(self, state: Mapping[str, Any]) -> None:
        """Everything went out: remove the queue and its copies; keep the placeholder map while a run has one."""
        self.queue.unlink(missing_ok=True)
        shutil.rmtree(self._files, ignore_errors=True)
        if state["ids"]:
            self.write_state({**state, "sent": 0})
        else:
            self._state.unlink(missing_ok=True)


# --- delivery ------------------------------------------------------------------------------------
@dataclass
class Delivery:
    """What one try at an outbox did: `error` is the unreachable server's error that stopped it, if one did."""

    folder: Path
    delivered: int = 0
    rejected: int = 0
    left: int = 0
    error: BaseException | None = None
    ids: dict[str, str] = field(default_factory=dict)


def deliver(outbox: Outbox, client: MlflowClient) -> Delivery:
    """Send the outbox's queued writes in order, stopping at the first the server cannot be reached for.

    Call with `outbox.locked()` held. A write the server refuses is moved to the rejected file (with a warning),
    and the next goes on. The count sent is saved after each write, so a killed delivery resumes where it was.
    """
    state = outbox.read_state()
    delivery = Delivery(outbox.folder, ids=state["ids"])
    lines = outbox.lines()
    for index in range(min(state["sent"], len(lines)), len(lines)):
        line = lines[index]
        try:
            record = _parse(line)
            result = _send(client, record, delivery.ids, outbox.folder)
        except Exception as error:
            if is_unreachable(error):
                delivery.error = error
                break
            outbox.reject(line, error)
            delivery.rejected += 1
            log.warning("MLflow refused a queued write from %s, kept in %s: %s", outbox.queue, outbox.rejected,
                        _first_line(error))
        else:
            delivery.delivered += 1
            if record["kind"] == "create_run":
                delivery.ids[record["run_id"]] = result.info.run_id
                _rewrite_sidecar(outbox.folder, record["run_id"], result)
        state["sent"] = index + 1
        outbox.write_state(state)
    delivery.left = max(0, len(lines) - state["sent"])
    if delivery.left == 0:
        outbox.clear(state)
    return delivery


def _parse(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        raise ValueError("unreadable record (cut short when its writer was killed?)") from None
    if not isinstance(record, dict) or not {"kind", "run_id", "payload"} <= record.keys():
        raise ValueError("not an outbox record")
    return record


def _send(client: MlflowClient, record: Mapping[str, Any], ids: Mapping[str, str], folder: Path | None) -> Any:
    """Perform one write on `client`, its placeholder run id replaced by the real one; what the client returns."""
    from mlflow.entities import Metric, Param, RunTag

    kind, payload = record["kind"], record["payload"]
    if kind == "create_run":
        tags = {key: ids.get(value, value) if key == "mlflow.parentRunId" else value
                for key, value in payload["tags"].items()}
        return client.create_run(_experiment_id(client, payload["experiment_id"]), start_time=payload["start_time"],
                                 tags=tags, run_name=payload["run_name"])
    run_id = ids.get(record["run_id"], record["run_id"])
    if is_pending(run_id):
        raise LookupError(f"run {run_id} was never created in MLflow (its creation was refused)")
    if kind == "log_batch":
        client.log_batch(run_id, metrics=[Metric(*m) for m in payload["metrics"]],
                         params=[Param(*p) for p in payload["params"]], tags=[RunTag(*t) for t in payload["tags"]])
    elif kind == "log_inputs":
        client.log_inputs(run_id, datasets=[_dataset_from_json(d) for d in payload["datasets"]])
    elif kind == "log_artifact":
        path = Path(payload["path"]) if folder is None else folder / payload["path"]  # an absolute path stays as is
        client.log_artifact(run_id, str(path), payload["artifact_path"])
    elif kind == "update_run":
        client.update_run(run_id, status=payload["status"], name=payload["name"])
    elif kind == "set_terminated":
        client.set_terminated(run_id, payload["status"], end_time=payload["end_time"])
    else:
        raise ValueError(f"unknown outbox record kind {kind!r}")
    return None


def _experiment_id(client: MlflowClient, experiment_id: str) -> str:
    if not experiment_id.startswith(_PENDING_EXPERIMENT):
        return experiment_id
    from harness.track.mlflow_run import experiment_id as get_or_create_experiment

    return get_or_create_experiment(client, experiment_id.removeprefix(_PENDING_EXPERIMENT))


def _rewrite_sidecar(folder: Path, placeholder: str, run: Run) -> None:
    """Point the run folder's mlflow_run.json at the run it names by placeholder, so --resume finds the real one."""
    sidecar = folder / "mlflow_run.json"
    try:
        named = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return
    if named.get("run_id") == placeholder:
        write_text_atomic(sidecar, json.dumps({**named, "run_id": run.info.run_id,
                                               "experiment_id": run.info.experiment_id}))


def _dataset_to_json(dataset: DatasetInput) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(dataset.to_proto())


def _dataset_from_json(data: Mapping[str, Any]) -> DatasetInput:
    from google.protobuf.json_format import ParseDict
    from mlflow.entities import DatasetInput
    from mlflow.protos.service_pb2 import DatasetInput as DatasetInputProto

    return DatasetInput.from_proto(ParseDict(data, DatasetInputProto()))


def deliver_pending(folder: Path | str, tracking_uri: str | None = None, announce: bool = True) -> list[Delivery]:
    """Deliver every outbox under `folder` (a run, a sweep's folder, or `runs/` with all of them).

    `tracking_uri`: where to; None: each outbox's own server, as recorded when its first write was queued
    (one whose URI held a password was recorded masked, so it goes to MLFLOW_TRACKING_URI instead). After an
    outbox finds its server unreachable, the others bound for that server are left for another time.
    `announce`: log a line per outbox that delivered something.
    """
    from harness.track.mlflow_run import open_client, resolve_tracking_uri

    limit_http_retries()
    deliveries: list[Delivery] = []
    clients: dict[str, MlflowClient] = {}
    down: dict[str, BaseException] = {}
    for queue in sorted(Path(folder).glob(f"**/{QUEUE_NAME}")):
        outbox = Outbox(queue.parent)
        with outbox.locked():
            state = outbox.read_state()
            recorded = state["target"] if state["target"] and "***" not in state["target"] else None
            target = resolve_tracking_uri(tracking_uri or recorded)
            if target in down:
                delivery = Delivery(outbox.folder, left=len(outbox.lines()) - state["sent"], error=down[target])
            else:
                delivery = deliver(outbox, clients.setdefault(target, open_client(target)))
        if delivery.error is not None:
            down[target] = delivery.error
        if announce and delivery.delivered:
            log.warning("delivered %d queued MLflow write(s) from %s%s", delivery.delivered, queue,
                        f" ({delivery.left} left)" if delivery.left else "")
        deliveries.append(delivery)
    return deliveries


# --- the client ----------------------------------------------------------------------------------
class BufferedClient:
    """An MlflowClient whose run writes wait in an outbox (see the module's docstring) while the server is away.

    Buffered: create_run, log_batch, log_metric, set_tag, log_inputs, log_artifact, update_run, set_terminated.
    Everything else (reads, experiments) goes straight to the client. Until `use_folder` names the run's folder,
    nothing is buffered and errors go on as MlflowClient raises them.
    """

    def __init__(
        self, client: MlflowClient, tracking_uri: str, folder: Path | None = None, retry_every: float = RETRY_SECONDS
    ) -> None:
        from harness.track.mlflow_run import mask_uri

        self._client = client
        self._target = mask_uri(tracking_uri)
        self.outbox = Outbox(folder) if folder is not None else None
        self.retry_every = retry_every
        self._ids: dict[str, str] = {}
        self._down_since: float | None = None  # time.monotonic() of the failure that began the outage
        self._last_try = 0.0  # when the last try to deliver the queue ended
        self._wait = retry_every  # before the next try while down; doubles per failed try, up to RETRY_SECONDS_MAX

    def __getattr__(self, name: str) -> Any:
        if name == "_client":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self._client, name)

    def use_folder(self, folder: Path) -> None:
        """Queue in `folder` from now on, unless a folder was given already."""
        if self.outbox is None:
            self.outbox = Outbox(folder)

    def resolved(self, run_id: str) -> str:
        """The real id of a run created under a placeholder once its creation went out; else `run_id`."""
        return self._ids.get(run_id, run_id)

    def experiment_id(self, name: str) -> str:
        """Experiment `name`'s id (created if missing); while the server is unreachable, a placeholder its run's
        queued creation resolves."""
        from harness.track.mlflow_run import experiment_id as get_or_create_experiment

        try:
            return get_or_create_experiment(self._client, name)
        except Exception as error:
            if self.outbox is None or not is_unreachable(error):
                raise
            self._went_down(error)
            return _PENDING_EXPERIMENT + name

    # --- buffered writes -----------------------------------------------------------------------
    def create_run(
        self, experiment_id: str, start_time: int | None = None, tags: Mapping[str, Any] | None = None,
        run_name: str | None = None,
    ) -> Run:
        payload = {"experiment_id": experiment_id, "start_time": start_time or _now_ms(),
                   "tags": {k: str(v) for k, v in (tags or {}).items()}, "run_name": run_name}
        return self._submit(_record("create_run", _PENDING_RUN + uuid.uuid4().hex, payload))

    # `synchronous` is taken and ignored: an asynchronous write fails in MLflow's own thread, where it cannot be
    # queued, so buffered writes are synchronous.
    def log_batch(
        self, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = (),
        synchronous: bool | None = None,  # noqa: ARG002
    ) -> None:
        payload = {"metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                   "params": [[p.key, p.value] for p in params], "tags": [[t.key, t.value] for t in tags]}
        self._submit(_record("log_batch", run_id, payload))

    def log_metric(
        self, run_id: str, key: str, value: float, timestamp: int | None = None, step: int | None = None,
        synchronous: bool | None = None,  # noqa: ARG002
    ) -> None:
        payload = {"metrics": [[key, value, timestamp or _now_ms(), step or 0]], "params": [], "tags": []}
        self._submit(_record("log_batch", run_id, payload))

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> None:  # noqa: ARG002
        self._submit(_record("log_batch", run_id, {"metrics": [], "params": [], "tags": [[key, str(value)]]}))

    def log_inputs(self, run_id: str, datasets: Sequence[DatasetInput] | None = None) -> None:
        self._submit(_record("log_inputs", run_id, {"datasets": [_dataset_to_json(d) for d in datasets or ()]}))

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._submit(_record("log_artifact", run_id, {"path": str(local_path), "artifact_path": artifact_path}))

    def update_run(self, run_id: str, status: str | None = None, name: str | None = None) -> None:
        self._submit(_record("update_run", run_id, {"status": status, "name": name}))

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        self._submit(_record("set_terminated", run_id, {"status": status, "end_time": end_time or _now_ms()}))

    # --- the queue -----------------------------------------------------------------------------
    def _submit(self, record: dict[str, Any]) -> Any:
        """Send the write now, or queue it behind earlier ones; a queued create_run returns a placeholder run."""
        if self.outbox is None:
            return _send(self._client, record, self._ids, None)
        ending = record["kind"] == "set_terminated"
        if self.outbox.pending() and not self._deliver_queue(force=ending):
            return self._queue(record, ending)
        if is_pending(record["run_id"]) and record["run_id"] not in self._ids:
            # Another process (a sweep between trials, `harness sync`) may have delivered this run's creation.
            with self.outbox.locked():
                self._ids.update(self.outbox.read_state()["ids"])
        try:
            result = _send(self._client, record, self._ids, None)  # the caller's path, as given
        except Exception as error:
            if not is_unreachable(error):
                raise
            self._went_down(error)
            self._last_try = time.monotonic()
            return self._queue(record, ending)
        self._came_back(0)
        return result

    def _deliver_queue(self, force: bool = False) -> bool:
        """Try to empty the queue (while down, only once the wait since the last try is over, unless `force`);
        whether it is empty."""
        assert self.outbox is not None
        if self._down_since is not None and not force and time.monotonic() - self._last_try < self._wait:
            return False
        with self.outbox.locked():
            delivery = deliver(self.outbox, self._client)
        self._last_try = time.monotonic()
        self._ids.update(delivery.ids)
        if delivery.error is not None:
            if self._down_since is not None:
                self._wait = min(2 * self._wait, max(self.retry_every, RETRY_SECONDS_MAX))
            self._went_down(delivery.error)
            return False
        self._came_back(delivery.delivered)
        return True

    def _queue(self, record: dict[str, Any], ending: bool) -> Any:
        assert self.outbox is not None
        with self.outbox.locked():
            self.outbox.append(record, self._target)
            left = len(self.outbox.lines()) - self.outbox.read_state()["sent"] if ending else 0
        if ending:
            log.warning("the run ended with %d MLflow write(s) still queued in %s; they go out once %s is back: "
                        "before a sweep's next trial, when the study's next `harness sweep` starts, or with "
                        "`harness sync`", left, self.outbox.queue, self._target)
        if record["kind"] == "create_run":
            return _placeholder_run(record)
        return None

    def _went_down(self, error: BaseException) -> None:
        assert self.outbox is not None
        if self._down_since is not None:
            return
        self._down_since, self._wait = time.monotonic(), self.retry_every
        log.warning("MLflow tracking at %s unreachable (%s); training goes on, its tracking writes queued in %s "
                    "(delivery tried again after %.0f s, then less often)", self._target, unreachable_reason(error),
                    self.outbox.queue, self.retry_every)

    def _came_back(self, delivered: int) -> None:
        assert self.outbox is not None
        if self._down_since is None:
            if delivered:
                log.warning("delivered %d MLflow write(s) queued earlier in %s", delivered, self.outbox.queue)
            return
        lasted = time.monotonic() - self._down_since
        self._down_since = None
        queued = f": delivered {delivered} queued write(s) from {self.outbox.queue}" if delivered else ""
        log.warning("MLflow tracking at %s reachable again after %.0f s%s", self._target, lasted, queued)


def _record(kind: str, run_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "run_id": run_id, "payload": payload, "time": _now_ms()}


def _placeholder_run(record: Mapping[str, Any]) -> Run:
    """What create_run returns for a run whose creation is queued: its placeholder id, RUNNING since now."""
    from mlflow.entities import Run, RunData, RunInfo, RunStatus

    payload = record["payload"]
    info = RunInfo(run_id=record["run_id"], experiment_id=payload["experiment_id"], user_id="",
                   status=RunStatus.to_string(RunStatus.RUNNING), start_time=payload["start_time"], end_time=None,
                   lifecycle_stage="active", run_name=payload["run_name"])
    return Run(info, RunData())
