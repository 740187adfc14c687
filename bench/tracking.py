"""MLflow, and only here: tracking URI, experiments, runs, cell claims, finished-cell lookup.

Conventions: an experiment per suite (``medauc-bench/<suite>``); a parent run per driver
invocation and a nested child run per cell (``mlflow.parentRunId``); tag keys without
dots (``bench_cell_id``) so filters need no quoting; per-epoch metrics with ``step=epoch``.

Claims (``bench.claims``). Before a cell trains, its process claims the cell id in the
tracker's claim store: ``flock`` files next to a SQLite store, PostgreSQL advisory locks
when ``BENCH_CLAIMS_URI`` (or a ``postgresql://`` tracking store) says so. The claim key
is stored in the run's ``bench_lock`` tag. A second process skips a claimed cell, and
re-checks that a claimed-then-released cell has not finished meanwhile. A claim ends
when its holder dies, even by ``kill -9``: a RUNNING run whose key is free therefore
belongs to a dead process, and is marked KILLED with ``bench_status=stale``. File claims
coordinate processes on one machine; PostgreSQL claims coordinate machines.

HTTP tracking servers: the reachability check runs without retries (one clear line within
seconds); every request after it retries with backoff (``HTTP_RETRIES``), so a tracking
server restarted mid-suite costs a pause, not a run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import filelock

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from bench import __version__  # noqa: E402
from bench import mlflow_native as native  # noqa: E402
from bench.catalog import CHECKPOINT  # noqa: E402
from bench.claims import Claim, make_claims, redact  # noqa: E402
from bench.environ import temporary_environ, tracking_uri  # noqa: E402
from bench.errors import TrackingError  # noqa: E402
from bench.hardware import cpu_description  # noqa: E402
from bench.provenance import code_digest, run_tags  # noqa: E402

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"


def artifact_root(uri: str) -> str:
    env = os.environ.get("BENCH_ARTIFACT_ROOT")
    if env:
        return env
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts")
    return ""  # a tracking server decides (its --default-artifact-root)


class Tracker:
    """A connection to one tracking store and experiment."""

    def __init__(self, experiment: str, uri: str | None = None, reuse: tuple[str, ...] = (),
                 claims_uri: str | None = None, executor: str = "local", description: str = "",
                 system_metrics: bool = False):
        """``reuse``: names of other experiments whose FINISHED cells count as done here.

        A cell id is a digest of everything that determines the run (config, data md5, code
        version), so an identical cell finished by another suite -- a search suite whose
        winners a study suite confirms -- is the same experiment and need not run twice.
        ``claims_uri``: where claims live (``bench.claims.make_claims``; default from the
        environment and the tracking URI). ``executor``: recorded on every run
        (``bench_executor``), so runs say how they were scheduled. ``description``: the
        experiment's description in the UI (from the suite file). ``system_metrics``: log CPU,
        memory (and GPU) utilisation into every cell run (``bench.mlflow_native``).
        """
        self.uri = uri or tracking_uri()
        check_reachable(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment_name = experiment
        self.system_metrics = system_metrics
        self.experiment_id = self._experiment(experiment, description)
        self.reuse_names = tuple(reuse)
        self.reuse_ids = [e.experiment_id for e in map(self.client.get_experiment_by_name, reuse) if e is not None]
        self.claims = make_claims(self.uri, claims_uri)
        self.context_tags = {"bench_executor": executor, "bench_host": socket.gethostname(), "bench_cpu": cpu_description()}

    def _experiment(self, name: str, description: str = "") -> str:
        """Open (or create) the experiment with the tags that make the UI show it as model
        training with the benchmark's columns; tags a user edited in the UI are left alone."""
        tags = native.experiment_tags(description) if description else {}
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                for k, v in tags.items():
                    if k not in exp.tags:
                        self._set_missing_tag(exp.experiment_id, k, v)
                return exp.experiment_id
            root = artifact_root(self.uri)
            location = f"{root}/{name.replace('/', '_')}" if root else None
            try:
                return self.client.create_experiment(name, artifact_location=location, tags=tags)
            except mlflow.exceptions.MlflowException:
                exp = self.client.get_experiment_by_name(name)  # another driver created it first
                if exp is None:
                    raise
                return exp.experiment_id
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(f"tracking store {self.uri}: cannot open experiment '{name}' ({exc.message.splitlines()[0]})") from None

    def _set_missing_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Two drivers starting at once both see the tag missing and both insert it; the store's
        unique key refuses the second insert (PostgreSQL and SQLite alike). Losing that race is
        fine: the tag is there."""
        try:
            self.client.set_experiment_tag(experiment_id, key, value)
        except mlflow.exceptions.MlflowException:
            if key not in self.client.get_experiment(experiment_id).tags:
                raise

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

    def other_code_cells(self, cell_ids) -> int:
        """How many of ``cell_ids`` (cells with no FINISHED run of this code) have FINISHED runs here, or
        in the reused experiments, of other code: they run again, which a user must hear before it costs hours."""
        runs = self._search(f"attributes.status = 'FINISHED' and tags.bench_role = 'cell' "
                            f"and tags.bench_code_digest != '{code_digest()}'", reuse=True)
        return len({r.data.tags.get("bench_cell_id") for r in runs} & set(cell_ids))

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

    def measured_train_seconds(self) -> dict[str, dict[str, float]]:
        """group id -> device type (cpu, cuda) -> mean ``train_seconds`` of FINISHED cell runs here
        and in the reused experiments, any code: what planning (``--dry-run --workers``) knows."""
        acc: dict[str, dict[str, list]] = {}
        for r in self._search("attributes.status = 'FINISHED' and tags.bench_role = 'cell'", reuse=True):
            seconds, group = r.data.metrics.get("train_seconds"), r.data.tags.get("bench_group_id")
            if seconds is not None and group:
                device = (r.data.tags.get("device") or "cpu").split(":")[0]
                acc.setdefault(group, {}).setdefault(device, []).append(seconds)
        return {g: {d: sum(v) / len(v) for d, v in by.items()} for g, by in acc.items()}

    def claim(self, key: str) -> Claim | None:
        """Claim ``key`` (a cell id) in this tracker's claim store; None when another process holds it."""
        return self.claims.claim(key)

    def artifact_location(self) -> str:
        return self.client.get_experiment(self.experiment_id).artifact_location

    def _mark(self, run_id: str, why: str) -> None:
        self.client.set_tag(run_id, "bench_status", "stale")
        self.client.set_tag(run_id, "bench_error", why)
        self.client.set_terminated(run_id, status="KILLED")

    def mark_stale(self) -> int:
        """Mark RUNNING runs of dead processes (their claim is free) as KILLED; return how many.

        The status is read again after the claim check: a holder ends its run before it
        releases the claim, so a run still RUNNING behind a free claim is dead, never late.
        """
        n = 0
        for run in self._search("attributes.status = 'RUNNING'"):
            key = run.data.tags.get("bench_lock")
            if not key or not self.claims.is_free(key):
                continue
            if self.client.get_run(run.info.run_id).info.status != "RUNNING":
                continue
            self._mark(run.info.run_id, "process died while running (marked on a later invocation)")
            n += 1
        if n:
            log.warning("marked %d stale RUNNING run(s) of dead processes as KILLED", n)
        return n

    def mark_dead_runs_of(self, cell_id: str, claim: Claim) -> int:
        """Mark RUNNING runs of ``cell_id`` that carry ``claim``'s key as KILLED, while we hold it.

        Whoever created such a run held the same key; we hold it now, so that process has
        died (e.g. a worker killed mid-cell, whose task Ray retries here). Marking them at once
        keeps "one FINISHED run per cell, nothing left RUNNING" without a later invocation.
        """
        keys = {claim.key, f"{claim.key}.lock"}  # runs of older versions carry the lock file name
        n = 0
        for run in self._search(f"attributes.status = 'RUNNING' and tags.bench_cell_id = '{cell_id}'"):
            if run.data.tags.get("bench_lock") in keys:
                self._mark(run.info.run_id, "process died while running (marked when the cell was claimed again)")
                n += 1
        if n:
            log.warning("cell %s: marked %d RUNNING run(s) of a dead process as KILLED", cell_id, n)
        return n

    # ---------------------------------------------------------------- runs
    def start_parent(self, suite: str, tags: dict) -> "RunHandle":
        """The invocation's parent run, claimed under a unique key for as long as it lives."""
        claim = self.claims.claim(f"parent-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}")
        if claim is None:  # the key is unique: only a broken claim store gets here
            raise TrackingError(f"claims store {self.claims!r}: cannot claim the parent run's key")
        base = {"bench_role": "suite", "bench_suite": suite, "bench_version": __version__, **run_tags(),
                **self.context_tags, "bench_lock": claim.key, native.NOTE_TAG: native.parent_description(sys.argv)}
        run = self.client.create_run(self.experiment_id, run_name=f"suite-{suite}", tags=_strings({**base, **tags}))
        return RunHandle(self, run.info.run_id, claim)

    def start_cell(self, cell, suite: str, parent_id: str | None, lock: Claim | None,
                   extra_tags: dict | None = None) -> "RunHandle":
        """A cell's run; ``lock`` is the caller's claim of the cell (released by the caller)."""
        tags = {
            "bench_role": "cell", "bench_suite": suite, "bench_cell_id": cell.cell_id,
            "bench_group_id": cell.group_id, "bench_version": __version__, **run_tags(), **self.context_tags,
            "bench_status": "running", **(extra_tags or {}),
            # CPU float reductions depend on the thread count: the same cell id run with other
            # threads (e.g. a 1-CPU Ray task vs the local executor) gives slightly other numbers
            "bench_torch_threads": _torch_threads(),
        }
        if lock is not None:
            tags["bench_lock"] = lock.key
        if parent_id:
            tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=cell.run_name, tags=_strings(tags))
        handle = RunHandle(self, run.info.run_id, None)
        if self.system_metrics:  # opt-in: a sampling thread per run, stopped in RunHandle.end
            handle.monitor = native.system_metrics(run.info.run_id, True, tracking_uri=self.uri)
            handle.monitor.__enter__()
        params = [Param(k, str(v)) for k, v in cell.flat_params().items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return handle

    def ui_url(self, base: str | None = None) -> str:
        """The link that opens this experiment's runs table (not MLflow 3.17's empty Traces page)."""
        served = self.uri.startswith(("http://", "https://"))
        return native.runs_table_url(base or (self.uri if served else "http://127.0.0.1:5000"), self.experiment_id)

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
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=_strings({**base, **tags}))
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return RunHandle(self, run.info.run_id, None)


def _torch_threads() -> int:
    import torch  # already imported by whoever trains the cell

    return torch.get_num_threads()


def _strings(tags: dict) -> dict[str, str]:
    """Tag values as strings: a SQLite store converts them, a tracking server's REST API refuses others."""
    return {k: str(v) for k, v in tags.items()}


class RunHandle:
    def __init__(self, tracker: Tracker, run_id: str, lock: Claim | None):
        self.tracker, self.run_id, self.lock = tracker, run_id, lock
        self.client = tracker.client
        self.monitor = None  # system metrics (opt-in), closed before the run ends

    def tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """Log the cell's data as an MLflow dataset input: the runs table's Dataset column then
        shows which file (by MD5) a run trained on, and runs on different files look different."""
        inputs = [native.dataset_input(name, digest, source, context)]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except mlflow.exceptions.MlflowException:
            # MLflow looks the dataset up, then inserts it: two processes logging the same file
            # into one experiment at once race, and the loser's insert breaks the unique key.
            # The dataset exists now, so a second call only links it to this run.
            self.client.log_inputs(self.run_id, datasets=inputs)

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
            if self.monitor is not None:  # its last sample must land before the run is closed
                self.monitor.__exit__(None, None, None)
                self.monitor = None
            if tags:
                self.tags(tags)
            self.client.set_terminated(self.run_id, status=status)
        finally:
            if self.lock is not None:
                self.lock.release()


# Requests after the reachability check: MLflow's own retry machinery (urllib3 Retry on
# connect and read errors and on 429/5xx, POSTs included), with backoff 0, 4, 8, ... s:
# about 4 minutes in all, enough for a tracking server restart (~10 s) or a short outage.
# Values already in the environment win.
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
}
# The reachability check itself: no retries, short timeout -- a wrong URI is one line in seconds.
HTTP_PROBE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def http_retry_env() -> dict[str, str]:
    """The retry settings this process uses (its environment first, then ``HTTP_RETRIES``):
    what a driver hands to workers, which do not inherit its environment."""
    return {k: os.environ.get(k, v) for k, v in HTTP_RETRIES.items()}


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast -- before any training -- when the tracking store cannot be used."""
    parsed = urlparse(uri)
    probe: dict = {}
    if parsed.scheme in ("http", "https"):
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            raise TrackingError(
                f"tracking server {redact(uri)} is unreachable ({exc.strerror or exc}); start it "
                f"(mlflow server --host {host} --port {port}) or unset MLFLOW_TRACKING_URI to use the local SQLite store"
            ) from None
        probe = HTTP_PROBE
        for k, v in HTTP_RETRIES.items():
            os.environ.setdefault(k, v)
    elif parsed.scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None:
            raise TrackingError(f"tracking store {redact(uri)} needs the PostgreSQL driver, which is not installed; "
                                f"pip install -e '.[postgres]'")
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
        with temporary_environ(probe), _creating(uri):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # any store error: say it once, clearly
        first = str(getattr(exc, "message", exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrackingError(f"tracking store {redact(uri)} cannot be used ({first[:300]})") from None


def _creating(uri: str):
    """A lock held while the first client of a SQLite store creates its tables.

    MLflow creates and migrates a SQLite store on first open; two processes doing that at
    once (two drivers started together, or a driver and a UI) can both run the migrations,
    and one of them fails. A ``flock`` file next to the database makes the second wait for
    the first; other store kinds migrate server-side and need nothing."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri[len("sqlite:///"):]).resolve()
    return filelock.FileLock(db.parent / f".{db.name}.create.lock", timeout=120, is_singleton=False)


def search_runs_frame(experiment_names: list[str], filter_string: str = ""):
    """``mlflow.search_runs`` as a pandas frame (for the leaderboard)."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    ids = [e.experiment_id for e in map(client.get_experiment_by_name, experiment_names) if e is not None]
    if not ids:  # mlflow.search_runs would search the default experiment instead
        raise TrackingError(f"no experiment named {', '.join(experiment_names)} in {tracking_uri()}")
    return mlflow.search_runs(experiment_ids=ids, filter_string=filter_string, max_results=100_000)


def last_parent_tags(experiment: str, suite: str) -> dict:
    """The tags of the newest parent run of ``suite`` in ``experiment`` ({} when there is none)."""
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], f"tags.bench_role = 'suite' and tags.bench_suite = '{suite}'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return dict(runs[0].data.tags) if runs else {}


def log_files(run_id: str, files: list, artifact_path: str) -> None:
    """Attach files (e.g. the generated leaderboard) to an existing run."""
    client = MlflowClient(tracking_uri())
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)


def run_csv(run_id: str, prefixes: tuple[str, ...]) -> dict[str, "object"]:
    """The run's top-level CSV artifacts whose names start with one of ``prefixes``, read as
    pandas frames (header-less, index first: the medmnist prediction-file layout)."""
    import tempfile

    import pandas as pd

    client = MlflowClient(tracking_uri())
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-scores-") as tmp:
        for f in client.list_artifacts(run_id):
            name = Path(f.path).name
            if f.is_dir or not name.endswith(".csv") or not name.startswith(prefixes):
                continue
            path = client.download_artifacts(run_id, f.path, tmp)
            out[name] = pd.read_csv(path, header=None, index_col=0)
    return out


# --------------------------------------------------------------------------- runs as one file
# A suite's runs travel as one zip (an air-gapped GPU host back to a workstation, one session's
# store to the next): manifest.json with every run's info, params, tags and full metric
# histories, and its artifacts under artifacts/<run id>/ (model.pt only on request: it is large,
# and only a fine-tune that has yet to run needs its source's). Importing recreates each run in
# the current store with the same tags (bench_cell_id, bench_code_digest, ...), so resume, the
# leaderboard and `bench shift` treat them as their own; `bench_imported_from` names the original
# run id and makes a second import of the same file a no-op.

EXPORT_FORMAT = "medauc-bench-runs/1"
IMPORTED_TAG = "bench_imported_from"


def _all_runs(client, experiment_ids) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def export_runs(experiment: str, out: Path, with_checkpoints: bool = False, uri: str | None = None) -> int:
    """Write every run of ``experiment`` (parents, cells, ensembles) into the zip ``out``."""
    import tempfile
    import zipfile

    client = MlflowClient(uri or tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"no experiment '{experiment}' in {uri or tracking_uri()}; run the suite first")
    runs = _all_runs(client, [exp.experiment_id])
    manifest = {"format": EXPORT_FORMAT, "experiment": experiment, "source": uri or tracking_uri(),
                "experiment_tags": dict(exp.tags), "runs": []}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for run in runs:
            rid = run.info.run_id
            metrics = {k: [[m.value, m.timestamp, m.step] for m in client.get_metric_history(rid, k)]
                       for k in run.data.metrics}
            files = []
            for f in client.list_artifacts(rid):
                if f.is_dir or (f.path == CHECKPOINT and not with_checkpoints):
                    continue
                local = client.download_artifacts(rid, f.path, tmp)
                zf.write(local, f"artifacts/{rid}/{f.path}")
                files.append(f.path)
            manifest["runs"].append({
                "run_id": rid, "run_name": run.info.run_name, "status": run.info.status,
                "start_time": run.info.start_time, "end_time": run.info.end_time,
                "params": dict(run.data.params), "tags": dict(run.data.tags), "metrics": metrics, "artifacts": files})
        zf.writestr("manifest.json", json.dumps(manifest))
    return len(runs)


def import_runs(path: Path, experiment: str | None = None, uri: str | None = None) -> tuple[int, int]:
    """Recreate the runs of an export in the current store; returns (imported, already there)."""
    import tempfile
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
        manifest = json.loads(zf.read("manifest.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise TrackingError(f"{path}: not a runs export ({type(exc).__name__}); make one with `bench export-runs`") from None
    if manifest.get("format") != EXPORT_FORMAT:
        raise TrackingError(f"{path}: unknown export format {manifest.get('format')!r} (expected {EXPORT_FORMAT})")
    tracker_uri = uri or tracking_uri()
    check_reachable(tracker_uri)
    client = MlflowClient(tracker_uri)
    name = experiment or manifest["experiment"]
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(tracker_uri)
        exp_id = client.create_experiment(name, artifact_location=f"{root}/{name.replace('/', '_')}" if root else None,
                                          tags=manifest.get("experiment_tags") or {})
    else:
        exp_id = exp.experiment_id
    done = {r.data.tags[IMPORTED_TAG]: r.info.run_id for r in _all_runs(client, [exp_id]) if IMPORTED_TAG in r.data.tags}
    # parents first, then in start order (a fine-tune's source started before it), so every
    # reference to another run -- parent, source checkpoint, ensemble members -- maps to its new id
    runs = sorted(manifest["runs"], key=lambda r: (PARENT_TAG in r["tags"], r["start_time"] or 0))
    imported = skipped = 0
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        for r in runs:
            if r["run_id"] in done:
                skipped += 1
                continue
            tags = {k: v for k, v in r["tags"].items() if k not in ("mlflow.runName",)}
            for key in (PARENT_TAG, "bench_init_run_id"):
                if key in tags:
                    tags[key] = done.get(tags[key], tags[key])
            if tags.get("bench_members"):
                tags["bench_members"] = ",".join(done.get(m, m) for m in tags["bench_members"].split(","))
            tags[IMPORTED_TAG] = r["run_id"]
            new = client.create_run(exp_id, start_time=r["start_time"], tags=tags, run_name=r["run_name"])
            rid = new.info.run_id
            params = [Param(k, v) for k, v in r["params"].items()]
            metrics = [Metric(k, v, ts, step) for k, hist in r["metrics"].items() for v, ts, step in hist]
            for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
                client.log_batch(rid, params=params[i : i + 100])
            for i in range(0, len(metrics), 1000):
                client.log_batch(rid, metrics=metrics[i : i + 1000])
            if r["artifacts"]:
                for f in r["artifacts"]:
                    zf.extract(f"artifacts/{r['run_id']}/{f}", tmp)
                client.log_artifacts(rid, str(Path(tmp) / "artifacts" / r["run_id"]))
            client.set_terminated(rid, r["status"], end_time=r["end_time"])
            done[r["run_id"]] = rid
            imported += 1
    return imported, skipped
