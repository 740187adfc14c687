"""Real services for integration tests: PostgreSQL, ``mlflow server``, a Ray cluster.

Each binds 127.0.0.1 only, on a free port, keeps its files in a ``mkdtemp`` folder, and is
stopped by its process tree (SIGTERM, 2 s, then SIGKILL) -- never by a name-matching tool
such as ``ray stop``, which would hit other Ray instances on the machine. Logs stay in the
temp folder until teardown; a start failure quotes their tail.

Test modules that start Ray run again inside a fresh network namespace (loopback only)
where that is possible (root, ``unshare``; :func:`run_isolated`): a second guarantee,
besides ``bench.executors.raysafe``, that nothing leaves the machine.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.executors.raysafe import local_home, safe_ray_env

log = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
GRACE_S = 2.0
ISOLATED_ENV = "BENCH_TEST_NETNS"  # set inside the namespace, so a test does not re-run itself twice
# Loopback traffic must never be routed to an HTTP proxy (which may be another machine).
LOOPBACK_NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_table() -> list[tuple[int, int, int]]:
    """(pid, parent pid, session id) of every process, from /proc."""
    rows = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            rows.append((int(entry.name), int(fields[1]), int(fields[3])))
    return rows


def process_tree(pid: int) -> list[int]:
    """``pid``, its descendants, and the members of the session it leads.

    The session catches processes orphaned before we look (re-parented to init); the
    descendants catch any that started a session of their own.
    """
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for p, ppid, _ in table:
        children.setdefault(ppid, []).append(p)
    out: set[int] = set()
    todo = [pid, *(p for p, _, sid in table if sid == pid)]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return sorted(out)


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_tree(pid: int, grace: float = GRACE_S) -> None:
    """SIGTERM ``pid`` and its descendants, SIGKILL whatever is left after ``grace`` s.

    The tree is collected before signalling: once a parent dies its children are
    re-parented and could no longer be found from it.
    """
    pids = process_tree(pid)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(map(_alive, pids)):
        time.sleep(0.05)
    survivors = [p for p in pids if _alive(p)]
    survivors += [p for p in process_tree(pid) if p not in survivors and _alive(p)]  # spawned meanwhile
    if survivors:
        log.info("SIGKILL %d process(es) of tree %d", len(survivors), pid)
        _signal_all(survivors, signal.SIGKILL)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait(ready, what: str, timeout: float, proc: subprocess.Popen, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log {logfile}:\n{_tail(logfile)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s; log {logfile}:\n{_tail(logfile)}")
        time.sleep(0.2)


def _spawn(argv: list[str], logfile: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(logfile, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


# ---------------------------------------------------------------------------- PostgreSQL
class PostgresServer:
    """A throw-away cluster: trust auth, listening on 127.0.0.1 only, fsync off.

    As root, the server programs run as ``postgres`` (they refuse root) and the data folder
    is a ``mkdtemp`` under /tmp owned by ``postgres``: pytest's 0700 ``tmp_path`` is not
    reachable for that user.
    """

    def __init__(self, database: str = "bench"):
        self.database = database
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str) -> None:
        out = subprocess.run([*self.as_postgres, *argv], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}\n"
                               f"{_tail(self.logfile)}")

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        self.start()
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)

    def start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
                f"-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "30", "-o", opts, "start")

    def stop(self) -> None:
        """Immediate stop (no checkpoint): like a crash, the fastest way down."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        """Stop and start on the same port: every session, and so every advisory lock, ends."""
        self.stop()
        self.start()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        pid = self.postmaster_pid()
        if pid is not None and _alive(pid):
            try:
                self.stop()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.warning("pg_ctl stop failed (%s); stopping the process tree", exc)
                stop_tree(pid)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres(database: str = "bench"):
    """A running :class:`PostgresServer` with an empty ``database``; ``.dsn`` to connect."""
    server = PostgresServer(database)
    try:
        server.init()
        yield server
    finally:
        server.destroy()


# ---------------------------------------------------------------------------- MLflow
class MlflowServer:
    """``mlflow server`` with proxied artifacts (workers need no shared filesystem)."""

    def __init__(self, backend_uri: str, artifacts_dir: Path, log_dir: Path):
        self.backend_uri, self.artifacts_dir = backend_uri, Path(artifacts_dir)
        self.port = free_port()
        self.logfile = Path(log_dir) / f"mlflow-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        try:
            with NO_PROXY_OPENER.open(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else 8 job workers, ~1.3 GB
               "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_TELEMETRY": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = _spawn([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri,
                            "--serve-artifacts", "--artifacts-destination", str(self.artifacts_dir),
                            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"], self.logfile, env)
        _wait(self._healthy, "mlflow server", timeout, self.proc, self.logfile)

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port, as a tracking server restarted mid-suite."""
        self.stop()
        self.start()


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path):
    """A running :class:`MlflowServer`; ``.url`` is the tracking URI for clients."""
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as logs:
        server = MlflowServer(backend_uri, artifacts_dir, Path(logs))
        try:
            server.start()
            yield server
        finally:
            server.stop()


# ---------------------------------------------------------------------------- Ray
class RayCluster:
    """A loopback-only Ray head (+ worker nodes) started by ``ray_local_cluster.py``."""

    def __init__(self, num_cpus: int, worker_nodes: int, worker_cpus: int, folder: Path):
        self.num_cpus, self.worker_nodes, self.worker_cpus = num_cpus, worker_nodes, worker_cpus
        self.folder = folder
        self.port = free_port()
        self.logfile = folder / "cluster.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What the head and its workers see: no tracking URI, so tasks must be given one."""
        env = {**os.environ, **safe_ray_env(loopback=True, home=local_home(self.folder / "home")),
               "RAY_TMPDIR": str(self.folder),  # ray_current_cluster goes there, not to /tmp/ray
               "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_TELEMETRY": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def start(self, timeout: float = 90) -> None:
        temp = self.folder / "ray"
        temp.mkdir()
        argv = [sys.executable, str(Path(__file__).with_name("ray_local_cluster.py")), "--port", str(self.port),
                "--num-cpus", str(self.num_cpus), "--worker-nodes", str(self.worker_nodes),
                "--worker-cpus", str(self.worker_cpus), "--temp-dir", str(temp)]
        self.proc = _spawn(argv, self.logfile, self.env())
        _wait(lambda: "READY" in self.logfile.read_text(errors="replace"), "ray cluster", timeout, self.proc, self.logfile)

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, worker_nodes: int = 0, worker_cpus: int = 1):
    """A running :class:`RayCluster`; ``.address`` (``127.0.0.1:PORT``) for ``ray.init``.

    ``worker_nodes`` adds that many raylets (``worker_cpus`` each) beside the head, so
    tasks can be made to run on different nodes.
    """
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cluster = RayCluster(num_cpus, worker_nodes, worker_cpus, folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- network namespace
def network_isolated() -> bool:
    """True inside the namespace made by :func:`run_isolated`."""
    return os.environ.get(ISOLATED_ENV) == "1"


@functools.lru_cache(maxsize=1)
def can_isolate_network() -> bool:
    """Whether ``unshare -n`` works here (root, util-linux, iproute2) -- probed, not assumed."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=10)
    return probe.returncode == 0


def run_isolated(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` in a new network namespace whose only interface is loopback (brought up).

    Returns (exit code, stdout and stderr). On timeout the whole tree is stopped -- the
    services the command started included -- before the error propagates.
    """
    env = {**os.environ, ISOLATED_ENV: "1"}
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_tree(proc.pid)
        proc.communicate()
        raise
    return proc.returncode, out


def rerun_module_isolated(request, timeout: float = 300) -> str:
    """Run the calling test's module again inside :func:`run_isolated` (minus this test), with
    the same marker selection; fail on errors or skips there; return pytest's summary line."""
    path = str(request.node.fspath)
    argv = [sys.executable, "-m", "pytest", path, "--deselect", request.node.nodeid, "-q", "-rs",
            "-p", "no:cacheprovider", "-o", "addopts=", "--durations=8"]
    markexpr = request.config.getoption("markexpr", default="")
    if markexpr:
        argv += ["-m", markexpr]
    code, out = run_isolated(argv, timeout=timeout)
    lines = out.splitlines()
    tail = "\n".join(lines[-40:])
    if code != 0:
        raise AssertionError(f"in the namespace:\n{tail}")
    if "skipped" in lines[-1]:
        raise AssertionError(f"something was skipped in the namespace:\n{tail}")
    durations = [line for line in lines if re.match(r"^[0-9.]+s (call|setup|teardown) ", line)]
    log.info("in the namespace, slowest: %s", "; ".join(durations))
    return lines[-1]
