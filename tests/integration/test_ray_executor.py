"""The Ray executor and cross-machine claims against real services, with faults.

Stack (module-scoped, loopback only): PostgreSQL -> ``mlflow server --serve-artifacts`` on
it -> a two-node Ray cluster (1 CPU each). Drivers use the server as tracking URI and
PostgreSQL for claims (``BENCH_CLAIMS_URI``), as on a real cluster; workers get both from
their tasks (the cluster was started without them). Cells are tiny synthetic BreastMNIST
runs. Where ``unshare -n`` works (root) the module runs again inside a network namespace
that has only loopback, and the tests run there.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO, make_npz
from tests.integration.services import can_isolate_network, free_port, network_isolated, rerun_module_isolated

pytestmark = pytest.mark.integration
ISOLATE = can_isolate_network() and not network_isolated()
in_stack = pytest.mark.skipif(ISOLATE, reason="runs inside a private network namespace (test_module_in_private_network)")
log = logging.getLogger(__name__)

SUITE = """
include: _base.yaml
suite: {name}
train: {{epochs: {epochs}, batch_size: 16}}
finetune: {{epochs: 1}}
recipes: {{aucm_ft: {{objective: aucm, init_from: ce}}}}
grid: {{dataset: {datasets}, recipe: {objectives}, aug: {augs}, seed: [{seed}], protocol: [official]}}
"""


@pytest.mark.skipif(not ISOLATE, reason="already isolated, or `unshare -n` is not available (not root)")
def test_module_in_private_network(request):
    log.info("in the namespace: %s", rerun_module_isolated(request, timeout=900))


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic files: ``small`` (1-epoch cells), ``long`` (cells of ~10 s, to be interrupted)."""
    root = tmp_path_factory.mktemp("data")
    make_npz(root / "small", "breastmnist")
    (root / "small" / "chestmnist.npz").write_bytes(b"not an npz")  # every chestmnist cell fails to load
    make_npz(root / "long", "breastmnist", n=(240, 48, 48))
    return root


@pytest.fixture
def stack(mlflow_srv, ray_cluster, pg, data, suites, monkeypatch, tmp_path):
    """Environment of a driver on the cluster; returns a namespace of the services."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_srv.url)
    monkeypatch.setenv("BENCH_CLAIMS_URI", pg.dsn)
    monkeypatch.setenv("BENCH_DATA_DIR", str(data / "small"))
    monkeypatch.setenv("BENCH_ALLOW_UNVERIFIED_DATA", "1")
    from mlflow.tracking import MlflowClient

    class Stack:
        client = MlflowClient(mlflow_srv.url)
        address = ray_cluster.address

        @staticmethod
        def suite(name, objectives="[ce]", datasets="[breastmnist]", epochs=1, seed=0, augs="[false]", files="small",
                  extra=""):
            """Write suite ``name``; ``files``: which synthetic data the driver (and so its workers) use."""
            monkeypatch.setenv("BENCH_DATA_DIR", str(data / files))
            suites(name, SUITE.format(name=name, objectives=objectives, datasets=datasets, epochs=epochs, seed=seed,
                                      augs=augs) + extra)

        @staticmethod
        def runs(name, role="cell"):
            exp = Stack.client.get_experiment_by_name(f"medauc-bench/{name}")
            return [] if exp is None else Stack.client.search_runs([exp.experiment_id], f"tags.bench_role = '{role}'")

    Stack.mlflow, Stack.pg, Stack.data = mlflow_srv, pg, data
    return Stack


def run_ray(name, stack, **kw):
    from bench.driver import run_suite

    return run_suite(name, executor="ray", address=stack.address, progress=False, leaderboard=False, **kw)


def one_finished_run_per_cell(runs, n_cells):
    finished = [r.data.tags["bench_cell_id"] for r in runs if r.info.status == "FINISHED"]
    killed = sum(r.info.status == "KILLED" for r in runs)
    # The closing-note figure of each fault case: cells finished, and finished twice (must be 0).
    line = (f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}: {len(set(finished))} cells finished, "
            f"{len(finished) - len(set(finished))} finished twice, {killed} runs KILLED (stale)")
    log.info(line)
    if os.environ.get("BENCH_FAULT_COUNTS"):  # a file to collect these lines across the isolated re-run
        with open(os.environ["BENCH_FAULT_COUNTS"], "a") as f:
            f.write(line + "\n")
    assert len(finished) == len(set(finished)) == n_cells, f"FINISHED runs per cell: {sorted(finished)}"
    assert not [r for r in runs if r.info.status == "RUNNING"], "a run was left RUNNING"


def wait_for(what, predicate, timeout=180, every=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def running_with_epochs(stack, name):
    """Cell runs that are RUNNING and have logged at least one training epoch."""
    return [r for r in stack.runs(name) if r.info.status == "RUNNING" and "train_loss" in r.data.metrics]


def normalized(names):
    return {re.sub(r"\[(AUC|ACC)\][0-9.]+", r"[\1]x", n) for n in names}


# ---------------------------------------------------------------------------- tests
@in_stack
def test_ray_runs_look_like_local_runs_and_dependencies_hold(stack):
    """The same suite through both executors: same parent/child structure, same tag, param,
    metric and artifact keys; two-stage cells start from their source's checkpoint (one source
    run, never retrained); a failed source fails its dependent with a run naming it."""
    from bench.driver import run_suite

    stack.suite("same", objectives="[aucm_ft]", datasets="[breastmnist, chestmnist]")
    local = run_suite("same", experiment="medauc-bench/same-local", progress=False, leaderboard=False)
    ray = run_ray("same", stack)
    for s in (local, ray):
        assert (s.counts()["finished"], s.failed) == (2, 2), [r.line() for r in s.results]

    by_exec = {}
    for name, label in (("same-local", "local"), ("same", "ray")):
        (parent,) = stack.runs(name, role="suite")
        cells = stack.runs(name)
        assert parent.info.status == "FINISHED" and parent.data.tags["bench_executor"] == label
        assert {r.data.tags["mlflow.parentRunId"] for r in cells} == {parent.info.run_id}
        assert {r.data.tags["bench_executor"] for r in cells} == {label}
        by_exec[label] = {r.info.run_name: r for r in cells}
    assert set(by_exec["local"]) == set(by_exec["ray"])
    for run_name, loc in by_exec["local"].items():
        rem = by_exec["ray"][run_name]
        assert loc.info.status == rem.info.status, run_name
        assert set(loc.data.tags) == set(rem.data.tags), (run_name, set(loc.data.tags) ^ set(rem.data.tags))
        assert set(loc.data.params) == set(rem.data.params), run_name
        assert set(loc.data.metrics) == set(rem.data.metrics), run_name
        arts = [normalized(a.path for a in stack.client.list_artifacts(r.info.run_id)) for r in (loc, rem)]
        assert arts[0] == arts[1], run_name
        assert loc.data.params == rem.data.params and loc.data.tags["bench_cell_id"] == rem.data.tags["bench_cell_id"]

    ray_runs = by_exec["ray"]
    ce, ft = ray_runs["breastmnist-ce-noaug-s0-official"], ray_runs["breastmnist-aucm_ft-noaug-s0-official"]
    assert ft.data.tags["bench_init_run_id"] == ce.info.run_id
    assert ce.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must go through the server's proxy"
    assert "model.pt" in {a.path for a in stack.client.list_artifacts(ce.info.run_id)}
    chest_ft = ray_runs["chestmnist-aucm_ft-noaug-s0-official"]
    assert chest_ft.info.status == "FAILED"
    assert "its init_from cell chestmnist-ce-noaug-s0-official did not finish" in chest_ft.data.tags["bench_error"]
    # a second invocation finds everything finished or failed-for-a-reason: no source is retrained
    again = run_ray("same", stack)
    assert again.counts()["skipped"] == 1 and again.failed == 2
    assert len([r for r in stack.runs("same") if r.info.run_name == ce.info.run_name]) == 1


@in_stack
def test_gpus_asked_on_a_cluster_without_gpus_is_one_line_before_any_run(stack):
    from bench.driver import run_suite
    from bench.errors import ConfigError

    stack.suite("gpu", seed=7, extra="resources: {2d: {gpus: 0.5}}\n")
    with pytest.raises(ConfigError, match="asks for GPUs.*has none") as err:
        run_suite("gpu", executor="ray", address=stack.address, leaderboard=False)
    assert "\n" not in str(err.value)
    assert stack.runs("gpu") == [] and stack.runs("gpu", role="suite") == []


def _cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


@in_stack
def test_unreachable_ray_address_or_tracking_server_is_one_line_within_seconds(stack):
    stack.suite("unreach", seed=8)
    dead = f"127.0.0.1:{free_port()}"
    for env_over, args, needle in [
        ({}, ("--address", dead), f"Ray cluster (GCS) at {dead} is unreachable"),
        ({"MLFLOW_TRACKING_URI": f"http://{dead}"}, ("--address", stack.address), f"tracking server http://{dead} is unreachable"),
    ]:
        t0 = time.monotonic()
        out = _cli("suite", "unreach", "--executor", "ray", *args, env={**os.environ, **env_over})
        seconds = time.monotonic() - t0
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and needle in out.stderr, out.stderr[-2000:]
        assert seconds < 30, f"took {seconds:.0f} s (interpreter start included)"
    assert stack.runs("unreach") == []


@in_stack
def test_two_drivers_on_one_server_never_finish_a_cell_twice(stack):
    """PostgreSQL-backed mlflow server + PostgreSQL claims, two `bench suite` processes at once."""
    from bench.tracking import Tracker

    stack.suite("twin", objectives="[ce, aucm]", augs="[false, true]", seed=3)  # 4 cells
    Tracker("medauc-bench/twin")  # the experiment exists before the race (concurrent creation fails)
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "suite", "twin", "--no-leaderboard", "--no-progress"],
                              cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-1500:] for o in outs]
    one_finished_run_per_cell(stack.runs("twin"), 4)
    tables = [re.search(r"suite twin: finished (\d+), skipped (\d+), .* claimed by another process (\d+)", o) for o in outs]
    assert all(tables), outs
    log.info("two drivers: %s", [t.group(0) for t in tables])
    assert sum(int(t.group(1)) for t in tables) == 4, "every cell finished by exactly one of the drivers"


@in_stack
@pytest.mark.slow
def test_a_worker_killed_mid_cell_is_retried_and_its_run_marked(stack):
    import psycopg2

    stack.suite("wkill", objectives="[ce, aucm]", epochs=4, seed=4, files="long")
    killed: dict = {}

    def killer():
        run = wait_for("a cell to train", lambda: running_with_epochs(stack, "wkill"), timeout=240)[0]
        cell = run.data.tags["bench_cell_id"]
        with psycopg2.connect(stack.pg.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT pid FROM bench_claims WHERE cell_id = %s", (cell,))
            (pid,) = cur.fetchone()
        conn.close()
        os.kill(pid, signal.SIGKILL)  # the worker process that holds the claim, mid-cell
        killed.update(run_id=run.info.run_id, pid=pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    summary = run_ray("wkill", stack)
    t.join(timeout=5)
    assert killed, "nothing was killed"
    assert summary.failed == 0 and summary.counts()["finished"] == 2, [r.line() for r in summary.results]
    runs = stack.runs("wkill")
    one_finished_run_per_cell(runs, 2)
    dead = stack.client.get_run(killed["run_id"])
    assert dead.info.status == "KILLED" and dead.data.tags["bench_status"] == "stale"


@in_stack
@pytest.mark.slow
def test_tracking_server_restart_mid_suite_loses_no_run(stack):
    stack.suite("restart", objectives="[ce, aucm, ap]", epochs=4, seed=5, files="long")
    restarted = threading.Event()

    def restart():
        wait_for("a cell to train", lambda: running_with_epochs(stack, "restart"), timeout=240)
        stack.mlflow.restart()  # stop (SIGTERM, SIGKILL after 2 s) and start again: ~10 s without a server
        restarted.set()

    t = threading.Thread(target=restart, daemon=True)
    t.start()
    summary = run_ray("restart", stack)
    t.join(timeout=120)
    assert restarted.is_set()
    assert summary.failed == 0 and summary.counts()["finished"] == 3, [r.line() for r in summary.results]
    runs = stack.runs("restart")
    one_finished_run_per_cell(runs, 3)
    for r in runs:
        assert {"test_auc", "val_auc", "train_seconds"} <= set(r.data.metrics), r.info.run_name
        assert "model.pt" in {a.path for a in stack.client.list_artifacts(r.info.run_id)}


@in_stack
@pytest.mark.slow
def test_killed_driver_then_the_same_command_finishes_the_rest(stack):
    from bench.claims import PostgresClaims

    stack.suite("dkill", objectives="[ce, aucm, ap]", epochs=4, seed=6, files="long")
    argv = [sys.executable, "-m", "bench", "suite", "dkill", "--executor", "ray", "--address", stack.address,
            "--no-leaderboard", "--no-progress"]
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("one cell finished and another running",
             lambda: any(r.info.status == "FINISHED" for r in stack.runs("dkill")) and running_with_epochs(stack, "dkill"),
             timeout=300)
    proc.kill()  # kill -9 of the driver: Ray stops its tasks, their runs stay RUNNING
    proc.wait()
    cells = {r.data.tags["bench_cell_id"] for r in stack.runs("dkill")}
    with PostgresClaims(stack.pg.dsn) as claims:  # the dead driver's workers let go of their claims
        wait_for("the dead driver's claims to end", lambda: all(map(claims.is_free, cells)), timeout=60)
    summary = run_ray("dkill", stack)
    assert summary.failed == 0 and summary.counts()["skipped"] >= 1, [r.line() for r in summary.results]
    runs = stack.runs("dkill")
    one_finished_run_per_cell(runs, 3)
    stale = [r for r in runs if r.info.status == "KILLED"]
    assert stale and all(r.data.tags["bench_status"] == "stale" for r in stale)
    parents = sorted(stack.runs("dkill", role="suite"), key=lambda r: r.info.start_time)
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
