"""The Ray executor: one Ray task per cell, with declared resources, on a Ray cluster.

* Addresses (``--address``): ``auto`` (the cluster this machine belongs to: ``$RAY_ADDRESS``,
  else the address file ``ray start --head`` wrote), ``HOST:PORT`` (a head's GCS port,
  6379 by default), ``ray://HOST:PORT`` (Ray Client, 10001 by default), or nothing: a
  throw-away single-machine Ray started here and stopped at the end.
* Before connecting, the address is parsed and its port probed (3 s): a typo or a cluster
  that is down is one line within seconds, before anything is recorded.
* Loopback clusters (every node on 127.0.0.1, the throw-away one included) get
  ``bench.executors.raysafe``'s settings; they must be in the environment before ``import ray``,
  which is why Ray is imported here, in :meth:`RayExecutor.connect`, and nowhere else.
* Tasks: ``bench.executors.worker.ray_entry`` with the task's CPUs/GPUs; a dependent is submitted
  when its source has ended (``bench.executors.graph.Schedule``), so a failed source still
  gives its dependents a FAILED run that names it. A worker killed mid-cell (``kill -9``,
  a lost node) is retried by Ray up to :data:`MAX_RETRIES` times; the retry claims the cell
  again and marks the dead run KILLED (``bench.tracking.Tracker.mark_dead_runs_of``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from bench.environ import temporary_environ
from bench.hardware import usable_cpus
from bench.errors import ConfigError, TrackingError
from bench.executors import Cluster, Executor
from bench.executors.graph import Plan, Schedule
from bench.executors.raysafe import import_ray, local_home
from bench.runner import CellResult

log = logging.getLogger("bench.driver")

GCS_PORT, CLIENT_PORT = 6379, 10001
PROBE_S = 3.0
MAX_RETRIES = 3  # Ray re-runs a task whose worker process died (kill -9, OOM, lost node) this often
CANCEL_WAIT_S = 20.0  # after Ctrl-C: time for cancelled tasks to mark their runs KILLED


@dataclass(frozen=True)
class RayAddress:
    """A parsed ``--address``: kind ``local`` (start one here), ``gcs`` (HOST:PORT) or ``client`` (ray://)."""

    kind: str
    host: str = "127.0.0.1"
    port: int = 0
    text: str = ""

    @property
    def loopback(self) -> bool:
        if self.kind == "local" or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def for_ray(self) -> str:
        return f"ray://{self.host}:{self.port}" if self.kind == "client" else f"{self.host}:{self.port}"


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError(f"--address '{text}': {why}; use auto, HOST:PORT (a head's GCS port, e.g. 10.0.0.7:{GCS_PORT}) "
                       f"or ray://HOST:{CLIENT_PORT}")


def parse_address(text: str | None) -> RayAddress:
    """``--address`` -> :class:`RayAddress` (``auto`` resolved later); malformed text is one line."""
    if text is None or text == "":
        return RayAddress("local", text="a Ray instance on this machine")
    if text == "auto":
        return RayAddress("auto", text=text)
    scheme = ""
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme != "ray":
            raise _bad(text, f"unsupported scheme '{scheme}://'")
    if "/" in rest or "?" in rest or "#" in rest:
        raise _bad(text, "an address has no path")
    try:
        parts = urlsplit(f"//{rest}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # e.g. a port that is not a number or out of range
        raise _bad(text, str(exc)) from None
    if not host or parts.username or parts.password:
        raise _bad(text, "expected HOST:PORT")
    if port is None:
        if scheme != "ray":
            raise _bad(text, "the port is missing")
        port = CLIENT_PORT
    return RayAddress("client" if scheme else "gcs", host, port, text)


def resolve_auto() -> RayAddress:
    """``auto`` as Ray resolves it (``$RAY_ADDRESS``, then the address file of ``ray start``),
    read *before* importing Ray: whether the cluster is loopback decides Ray's settings."""
    env = os.environ.get("RAY_ADDRESS")
    if env and env != "auto":
        return parse_address(env)
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    path = Path(base) / "ray" / "ray_current_cluster"
    try:
        found = path.read_text().strip()
    except OSError:
        raise ConfigError(f"--address auto: no running Ray cluster found (no RAY_ADDRESS, no {path}); start one with "
                          f"`ray start --head` or give HOST:PORT") from None
    return dataclasses.replace(parse_address(found), text=f"auto ({found})")


def probe(addr: RayAddress, timeout: float = PROBE_S) -> None:
    try:
        with socket.create_connection((addr.host, addr.port), timeout=timeout):
            pass
    except OSError as exc:
        what = "Ray Client server" if addr.kind == "client" else "Ray cluster (GCS)"
        raise ConfigError(f"{what} at {addr.host}:{addr.port} is unreachable ({exc.strerror or exc}); start it "
                          f"(`ray start --head --port {addr.port}`) or fix --address") from None


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:500]


class RayExecutor(Executor):
    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, max_concurrent: int | None = None, max_retries: int = MAX_RETRIES,
                 num_cpus: int | None = None):
        """``num_cpus``: CPUs of the throw-away local Ray (no ``address``); default all of them."""
        if max_concurrent is not None and max_concurrent < 1:
            raise ConfigError("--max-concurrent must be >= 1")
        self.address = parse_address(address)
        self.max_concurrent, self.max_retries, self.num_cpus = max_concurrent, max_retries, num_cpus
        self.ray = None
        self._tmp: Path | None = None
        self._cluster: Cluster | None = None

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        if self.ray is not None:
            return
        addr = resolve_auto() if self.address.kind == "auto" else self.address
        self.address = addr
        ray = import_ray(loopback=addr.loopback)
        if addr.kind == "local":
            self._start_local(ray)
        else:
            if addr.kind == "client" and importlib.util.find_spec("grpc") is None:
                raise ConfigError(f"--address {addr.text}: Ray Client (ray://) needs grpcio, which plain ray does not "
                                  f"install; pip install 'ray[client]==2.60.0', or run the driver on a cluster node "
                                  f"with --address auto or HOST:PORT")
            probe(addr)
            if os.environ.get("RAY_ADDRESS"):  # Ray would prefer it to the address we give
                log.info("--address %s given: ignoring RAY_ADDRESS=%s", addr.text, os.environ.pop("RAY_ADDRESS"))
            try:
                ray.init(address=addr.for_ray, logging_level=logging.WARNING, log_to_driver=True,
                         namespace="medauc-bench")
            except Exception as exc:  # Ray's connection errors come in many types
                raise ConfigError(f"cannot connect to the Ray cluster at {addr.text} ({_one_line(exc)})") from None
        self.ray = ray
        self._cluster = self._read_cluster()
        log.info("Ray: %s (%g CPUs, %g GPUs)", addr.text, self._cluster.cpus, self._cluster.gpus)

    def _start_local(self, ray) -> None:
        """A single-machine Ray on loopback, with a private temp folder and a HOME whose bootstrap
        file stops the head's cloud-metadata probes (bench.executors.raysafe); stopped by :meth:`close`."""
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))  # short: Ray's socket paths are limited
        # the processes started now inherit HOME (the local-provider bootstrap config) and RAY_TMPDIR
        with temporary_environ({"HOME": str(local_home(self._tmp / "home")), "RAY_TMPDIR": str(self._tmp)}):
            ray.init(num_cpus=self.num_cpus or usable_cpus(), include_dashboard=False, _node_ip_address="127.0.0.1",
                     _temp_dir=str(self._tmp / "ray"), logging_level=logging.WARNING, log_to_driver=True,
                     namespace="medauc-bench")

    def _read_cluster(self) -> Cluster:
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        cpus = [float(n.get("CPU", 0)) for n in nodes]
        gpus = [float(n.get("GPU", 0)) for n in nodes]
        return Cluster(sum(cpus), sum(gpus), max(cpus, default=0.0), max(gpus, default=0.0), self.address.text,
                       self.address.loopback)

    def cluster(self) -> Cluster:
        return self._cluster

    def check_store(self, tracker) -> None:
        """Workers on other machines reach the tracking store and artifacts only through a server."""
        if self._cluster.loopback:
            return
        if tracker.uri.startswith("sqlite:"):
            raise TrackingError(f"tracking store {tracker.uri} is a file on this machine, which workers on other machines "
                                f"cannot reach; run an MLflow server (docs/scaling-out.md) and set MLFLOW_TRACKING_URI")
        location = tracker.artifact_location() or ""
        if "://" not in location or location.startswith("file:"):
            raise TrackingError(f"artifacts of experiment '{tracker.experiment_name}' go to {location}, a folder of this "
                                f"machine; serve artifacts through the tracking server (mlflow server --serve-artifacts) "
                                f"and unset BENCH_ARTIFACT_ROOT")

    # ------------------------------------------------------------------ running
    def run(self, plan: Plan, ctx, tracker) -> Iterator[CellResult]:
        from bench.executors.worker import ray_entry

        ray = self.ray
        task_fn = ray.remote(ray_entry)
        ctx_ref = ray.put(ctx)
        schedule, in_flight, n = Schedule(plan), {}, 0
        try:
            while schedule:
                while self.max_concurrent is None or len(in_flight) < self.max_concurrent:
                    item = schedule.take()
                    if item is None:
                        break
                    opts = {**item.resources.ray_options(), "max_retries": self.max_retries, "retry_exceptions": False,
                            "name": item.task.cell.run_name}
                    in_flight[task_fn.options(**opts).remote(item.task, ctx_ref, item.resources.threads)] = item
                    log.debug("submitted %s (%s)", item.task.cell.run_name, item.resources)
                if not in_flight:
                    break
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    item = in_flight.pop(ref)
                    res = self._result(ref, item)
                    n += 1
                    log.info("cell %d/%d %s", n, len(plan), res.line())
                    schedule.done(item.cell_id, res.status, res.error)
                    yield res
        except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C / SIGTERM, or the driver stopped consuming
            self._cancel(in_flight)
            raise

    def _result(self, ref, item) -> CellResult:
        cell = item.task.cell
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the worker died (after retries) or the task raised
            log.debug("task %s", cell.run_name, exc_info=True)
            return CellResult(cell.cell_id, cell.run_name, "failed", error=f"Ray task failed: {_one_line(exc)}")

    def _cancel(self, in_flight: dict) -> None:
        """Ctrl-C: interrupt the running tasks (their runs end KILLED), then give up waiting."""
        for ref in in_flight:
            self.ray.cancel(ref)
        if in_flight:
            self.ray.wait(list(in_flight), num_returns=len(in_flight), timeout=CANCEL_WAIT_S)

    def close(self) -> None:
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()
        self.ray = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
