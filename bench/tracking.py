"""MLflow, and only here: tracking URI, experiments, runs, cell claims, finished-cell lookup.

Conventions: an experiment per suite (``medauc-bench/<suite>``); a parent run per driver
invocation and a nested child run per cell (``mlflow.parentRunId``); tag keys without
dots (``bench_cell_id``) so filters need no quoting; per-epoch metrics with ``step=epoch``.

Claims. Before a cell trains, its process takes an exclusive ``flock`` on
``<lock dir>/<cell id>.lock`` (next to the SQLite store, or in ``~/.cache`` for a server
store). A second invocation of the same suite skips a claimed cell, and re-checks that a
claimed-then-released cell has not finished meanwhile. The kernel releases a lock when
its process dies, even by ``kill -9``: a RUNNING run whose lock can be taken therefore
belongs to a dead process, and is marked KILLED with ``bench_status=stale``. Locks work
for processes on one machine; several machines sharing a tracking server need a shared
filesystem for ``BENCH_LOCK_DIR``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

import mlflow  # noqa: E402
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from bench import __version__  # noqa: E402
from bench.config import PROJECT_ROOT  # noqa: E402
from bench.errors import TrackingError  # noqa: E402
from bench.provenance import code_digest, run_tags  # noqa: E402

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else an *absolute* SQLite file in the project folder
    (MLflow's own default, ``sqlite:///mlflow.db``, depends on the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def artifact_root(uri: str) -> str:
    env = os.environ.get("BENCH_ARTIFACT_ROOT")
    if env:
        return env
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts")
    return ""  # a tracking server decides (its --default-artifact-root)


def lock_dir(uri: str) -> Path:
    env = os.environ.get("BENCH_LOCK_DIR")
    if env:
        return Path(env)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).resolve()
        return db.parent / f".{db.name}.locks"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return Path("~/.cache/medauc-bench/locks").expanduser() / digest


class Lock:
    """A non-blocking exclusive flock; ``acquire()`` is False when another process holds it."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Tracker:
    """A connection to one tracking store and experiment."""

    def __init__(self, experiment: str, uri: str | None = None, reuse: tuple[str, ...] = ()):
        """``reuse``: names of other experiments whose FINISHED cells count as done here.

        A cell id is a digest of everything that determines the run (config, data md5, code
        version), so an identical cell finished by another suite -- a search suite whose
        winners a study suite confirms -- is the same experiment and need not run twice.
        """
        self.uri = uri or tracking_uri()
        check_reachable(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment_name = experiment
        self.experiment_id = self._experiment(experiment)
        self.reuse_names = tuple(reuse)
        self.reuse_ids = [e.experiment_id for e in map(self.client.get_experiment_by_name, reuse) if e is not None]
        self.locks = lock_dir(self.uri)

    def _experiment(self, name: str) -> str:
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            root = artifact_root(self.uri)
            location = f"{root}/{name.replace('/', '_')}" if root else None
            return self.client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(f"tracking store {self.uri}: cannot open experiment '{name}' ({exc.message.splitlines()[0]})") from None

    # ---------------------------------------------------------------- queries
    def _search(self, filter_string: str, reuse: bool = False) -> list:
        runs, token = [], None
        ids = [self.experiment_id, *(self.reuse_ids if reuse else [])]
        while True:
            page = self.client.search_runs(ids, filter_string=filter_string, max_results=5000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # A cell is done only when a FINISHED run has its id *and* was produced by this code
    # (bench.provenance explains why the digest is not part of the id).
    def _done_filter(self) -> str:
        return f"attributes.status = 'FINISHED' and tags.bench_code_digest = '{code_digest()}'"

    def finished_cells(self) -> dict[str, str]:
        """cell id -> run id of FINISHED cell runs of this code in this experiment and the reused ones (one query)."""
        runs = self._search(f"{self._done_filter()} and tags.bench_role = 'cell'", reuse=True)
        return {r.data.tags["bench_cell_id"]: r.info.run_id for r in sorted(runs, key=lambda r: r.info.start_time)}

    def other_code_cells(self) -> int:
        """How many FINISHED cell runs here were produced by other code (they will run again)."""
        runs = self._search(f"attributes.status = 'FINISHED' and tags.bench_role = 'cell' "
                            f"and tags.bench_code_digest != '{code_digest()}'")
        return len({r.data.tags.get("bench_cell_id") for r in runs})

    def finished_run(self, cell_id: str):
        runs = self._search(f"{self._done_filter()} and tags.bench_cell_id = '{cell_id}'", reuse=True)
        runs = [r for r in runs if r.data.tags.get("bench_status") != "not_applicable"]
        return max(runs, key=lambda r: r.info.start_time) if runs else None

    def latest_runs(self, cell_ids) -> list:
        """The newest FINISHED run of each of ``cell_ids`` (any code; not-applicable cells left
        out), in this experiment and the reused ones: the runs a leaderboard shows."""
        wanted, newest = set(cell_ids), {}
        for r in self._search("attributes.status = 'FINISHED' and tags.bench_role = 'cell'", reuse=True):
            cid = r.data.tags.get("bench_cell_id")
            if cid in wanted and r.data.tags.get("bench_status") != "not_applicable":
                if cid not in newest or r.info.start_time > newest[cid].info.start_time:
                    newest[cid] = r
        return sorted(newest.values(), key=lambda r: r.info.start_time)

    def cell_lock(self, cell_id: str) -> Lock:
        return Lock(self.locks / f"{cell_id}.lock")

    def mark_stale(self) -> int:
        """Mark RUNNING runs of dead processes (their lock is free) as KILLED; return how many."""
        n = 0
        for run in self._search("attributes.status = 'RUNNING'"):
            key = run.data.tags.get("bench_lock")
            if not key:
                continue
            lock = Lock(self.locks / key)
            if lock.acquire():
                try:
                    self.client.set_tag(run.info.run_id, "bench_status", "stale")
                    self.client.set_tag(run.info.run_id, "bench_error", "process died while running (marked on a later invocation)")
                    self.client.set_terminated(run.info.run_id, status="KILLED")
                    n += 1
                finally:
                    lock.release()
        if n:
            log.warning("marked %d stale RUNNING run(s) of dead processes as KILLED", n)
        return n

    # ---------------------------------------------------------------- runs
    def start_parent(self, suite: str, tags: dict) -> "RunHandle":
        lock = Lock(self.locks / f"parent-{os.getpid()}-{time.time_ns()}.lock")
        lock.acquire()
        base = {"bench_role": "suite", "bench_suite": suite, "bench_version": __version__, **run_tags(),
                "bench_lock": lock.path.name}
        run = self.client.create_run(self.experiment_id, run_name=f"suite-{suite}", tags={**base, **tags})
        return RunHandle(self, run.info.run_id, lock)

    def start_cell(self, cell, suite: str, parent_id: str | None, lock: Lock, extra_tags: dict | None = None) -> "RunHandle":
        tags = {
            "bench_role": "cell", "bench_suite": suite, "bench_cell_id": cell.cell_id,
            "bench_group_id": cell.group_id, "bench_version": __version__, **run_tags(),
            "bench_lock": lock.path.name, "bench_status": "running", **(extra_tags or {}),
        }
        if parent_id:
            tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=cell.run_name, tags=tags)
        handle = RunHandle(self, run.info.run_id, None)
        params = [Param(k, str(v)) for k, v in cell.flat_params().items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return handle

    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def artifact_names(self, run_id: str) -> list[str]:
        return [f.path for f in self.client.list_artifacts(run_id)]

    def finished_ensemble(self, ensemble_id: str):
        runs = self._search(f"attributes.status = 'FINISHED' and tags.bench_ensemble_id = '{ensemble_id}'")
        return runs[0] if runs else None

    def start_ensemble(self, run_name: str, suite: str, parent_id: str | None, tags: dict, params: dict) -> "RunHandle":
        base = {"bench_role": "ensemble", "bench_suite": suite, "bench_version": __version__, **run_tags(),
                "bench_status": "running"}
        if parent_id:
            base[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**base, **tags})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return RunHandle(self, run.info.run_id, None)


class RunHandle:
    def __init__(self, tracker: Tracker, run_id: str, lock: Lock | None):
        self.tracker, self.run_id, self.lock = tracker, run_id, lock
        self.client = tracker.client

    def tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """Log the cell's data as an MLflow dataset input: the runs table's Dataset column then
        shows which file (by MD5) a run trained on, and runs on different files look different."""
        ds = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}))
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds, [InputTag("mlflow.data.context", context)])])

    def metrics(self, metrics: dict, step: int = 0) -> None:
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def artifacts(self, folder: Path) -> None:
        try:
            self.client.log_artifacts(self.run_id, str(folder))
        except OSError as exc:
            raise TrackingError(
                f"cannot write artifacts of run {self.run_id} ({exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}); "
                f"free disk space or fix the artifact location (BENCH_ARTIFACT_ROOT)"
            ) from None

    def end(self, status: str = "FINISHED", bench_status: str | None = None, error: str | None = None) -> None:
        tags = {}
        if bench_status:
            tags["bench_status"] = bench_status
        if error:
            tags["bench_error"] = error[:4000]
        try:
            if tags:
                self.tags(tags)
            self.client.set_terminated(self.run_id, status=status)
        finally:
            if self.lock is not None:
                self.lock.release()


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast -- before any training -- when the tracking store cannot be used."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            raise TrackingError(
                f"tracking server {uri} is unreachable ({exc.strerror or exc}); start it "
                f"(mlflow server --host {host} --port {port}) or unset MLFLOW_TRACKING_URI to use the local SQLite store"
            ) from None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    elif parsed.scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if db is not None:
            folder = db.resolve().parent
            if not folder.is_dir():
                raise TrackingError(f"tracking store {uri}: folder {folder} does not exist; create it or set MLFLOW_TRACKING_URI")
            if not os.access(folder, os.W_OK):
                raise TrackingError(f"tracking store {uri}: folder {folder} is not writable; set MLFLOW_TRACKING_URI elsewhere")
    elif parsed.scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            raise TrackingError(
                f"tracking URI {uri} is a file store, which MLflow 3.17 refuses; use sqlite:///<abs path>/mlflow.db "
                f"(or set MLFLOW_ALLOW_FILE_STORE=true)"
            )
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # any store error: say it once, clearly
        first = str(getattr(exc, "message", exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrackingError(f"tracking store {uri} cannot be used ({first[:300]})") from None


def search_runs_frame(experiment_names: list[str], filter_string: str = ""):
    """``mlflow.search_runs`` as a pandas frame (for the leaderboard)."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    ids = [e.experiment_id for e in map(client.get_experiment_by_name, experiment_names) if e is not None]
    if not ids:  # mlflow.search_runs would search the default experiment instead
        raise TrackingError(f"no experiment named {', '.join(experiment_names)} in {tracking_uri()}")
    return mlflow.search_runs(experiment_ids=ids, filter_string=filter_string, max_results=100_000)


def log_files(run_id: str, files: list, artifact_path: str) -> None:
    """Attach files (e.g. the generated leaderboard) to an existing run."""
    client = MlflowClient(tracking_uri())
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)
