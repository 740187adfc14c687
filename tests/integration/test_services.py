"""Smoke test of the scale-out stack: PostgreSQL -> ``mlflow server`` (proxied artifacts)
-> Ray tasks on two nodes that log runs; the driver reads them back.

Where ``unshare -n`` works (root), the module runs again inside a network namespace that
has only loopback, and the tests below run there; outside it they are skipped.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from tests.integration.services import can_isolate_network, network_isolated, rerun_module_isolated

pytestmark = pytest.mark.integration
ISOLATE = can_isolate_network() and not network_isolated()
in_stack = pytest.mark.skipif(ISOLATE, reason="runs inside a private network namespace (test_module_in_private_network)")
log = logging.getLogger(__name__)


@pytest.mark.skipif(not ISOLATE, reason="already isolated, or `unshare -n` is not available (not root)")
def test_module_in_private_network(request):
    log.info("in the namespace: %s", rerun_module_isolated(request))


def log_run(tracking_uri: str, experiment_id: str, name: str, value: float) -> dict:
    """A Ray task: one MLflow run with a metric and an artifact, through the server's proxy.

    The tracking URI is an argument because workers inherit the environment of the node
    that started them, not the driver's.
    """
    import ray
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    node = ray.get_runtime_context().get_node_id()
    run = client.create_run(experiment_id, run_name=name, tags={"node_id": node})
    client.log_metric(run.info.run_id, "auc", value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "note.txt"
        path.write_text(f"{name} on {node}\n")
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return {"run_id": run.info.run_id, "node": node, "inherited_uri": os.environ.get("MLFLOW_TRACKING_URI")}


@in_stack
def test_ray_tasks_on_two_nodes_log_runs_through_the_proxy(mlflow_srv, ray_driver, tmp_path):
    from mlflow.tracking import MlflowClient
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray = ray_driver
    client = MlflowClient(mlflow_srv.url)
    exp = client.create_experiment("smoke")  # in the driver, before fanning out
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    task = ray.remote(num_cpus=1)(log_run)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            .remote(mlflow_srv.url, exp, f"task-{i}", 0.5 + i / 10) for i, node in enumerate(nodes)]
    results = ray.get(refs, timeout=120)

    assert {r["node"] for r in results} == set(nodes)
    assert all(r["inherited_uri"] is None for r in results), "workers must get the URI from the task, not the env"
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    assert sorted(runs) == ["task-0", "task-1"]
    for i, name in enumerate(sorted(runs)):
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["auc"] == pytest.approx(0.5 + i / 10)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must go through the server"
        local = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))
        assert Path(local).read_text() == f"{name} on {run.data.tags['node_id']}\n"
    stored = sorted(p.name for p in mlflow_srv.artifacts_dir.rglob("note.txt"))
    assert stored == ["note.txt", "note.txt"], "the proxy writes into --artifacts-destination"


@in_stack
def test_a_task_after_a_tracking_server_restart_still_logs(mlflow_srv, ray_driver):
    """The server restarts mid-suite: a client made before keeps working, runs are kept."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_srv.url)
    exp = client.create_experiment("restart")
    before = ray_driver.get(ray_driver.remote(num_cpus=1)(log_run).remote(mlflow_srv.url, exp, "before", 0.7))
    mlflow_srv.restart()
    after = ray_driver.get(ray_driver.remote(num_cpus=1)(log_run).remote(mlflow_srv.url, exp, "after", 0.8))
    runs = {r.info.run_id: r for r in client.search_runs([exp])}
    assert set(runs) == {before["run_id"], after["run_id"]}
    assert all(r.info.status == "FINISHED" for r in runs.values())
