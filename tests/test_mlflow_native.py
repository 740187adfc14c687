"""bench.mlflow_native: tags, links, dataset inputs and system metrics, against a real SQLite store."""
from __future__ import annotations

import json
import os
import time

import pytest
from mlflow.tracking import MlflowClient

from bench import mlflow_native as N


@pytest.fixture
def client():
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def test_experiment_tags_carry_the_description_the_ml_kind_and_the_view():
    tags = N.experiment_tags("BreastMNIST smoke suite")
    assert tags["mlflow.note.content"] == "BreastMNIST smoke suite"
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert set(tags) == {"mlflow.note.content", "mlflow.experimentKind", "mlflow.sharedViewState.medauc-bench"}
    assert set(N.experiment_tags("d", view=False)) == {"mlflow.note.content", "mlflow.experimentKind"}


def test_saved_view_has_the_envelope_the_ui_validates():
    (key, value), = N.saved_view_tag(metrics=("val_auc",), params=("seed",), created_ms=5).items()
    assert key == "mlflow.sharedViewState.medauc-bench"
    env = json.loads(value)  # the UI requires a string name, a number createdAt and a string state
    assert env["name"] == "medauc-bench" and env["createdAt"] == 5 and isinstance(env["state"], str)
    state = json.loads(env["state"])
    assert state["selectedColumns"] == ["attributes.`Dataset`", "metrics.`val_auc`", "params.`seed`"]
    assert len(value) < 5000  # fits an experiment tag value


def test_links_open_the_runs_table_in_machine_learning_mode():
    assert N.runs_table_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=medauc-bench"
    assert N.runs_table_url("http://127.0.0.1:5000", "7", view_id=None) == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert N.experiment_url("http://127.0.0.1:5000", "7") == \
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"


def test_dataset_input_round_trips_through_log_inputs(client, tmp_path):
    exp = client.create_experiment("e", tags=N.experiment_tags("d"))
    run = client.create_run(exp).info.run_id
    path = str(tmp_path / "breastmnist.npz")
    md5 = "750601b1f35ba3300ea97c75c52ff8f6"
    client.log_inputs(run, datasets=[N.dataset_input("breastmnist", md5, path, "cv5/fold2",
                                                     profile={"train": 546, "val": 78, "test": 156})])
    (inp,) = client.get_run(run).inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest, inp.dataset.source_type) == ("breastmnist", md5[:8], "local")
    assert json.loads(inp.dataset.source) == {"uri": path}  # the UI's dataset drawer shows "Path: <uri>"
    assert json.loads(inp.dataset.profile) == {"train": 546, "val": 78, "test": 156, "md5": md5}
    assert [(t.key, t.value) for t in inp.tags] == [("mlflow.data.context", "cv5/fold2")]
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"


def test_dataset_input_can_keep_the_whole_digest():
    inp = N.dataset_input("breastmnist", "750601b1f35ba3300ea97c75c52ff8f6", "/x.npz", "official", digest_chars=None)
    assert inp.dataset.digest == "750601b1f35ba3300ea97c75c52ff8f6" and inp.dataset.profile is None


def test_dataset_input_needs_name_and_digest():
    with pytest.raises(ValueError):
        N.dataset_input("breastmnist", "", "/x.npz", "official")


@pytest.mark.parametrize("argv", [["/venv/bin/bench", "suite", "smoke", "--only", "seed=0"],
                                  ["suite", "smoke", "--only", "seed=0"]])
def test_parent_description_names_the_command(argv):
    text = N.parent_description(argv)
    assert "`bench suite smoke --only seed=0`" in text and "resume" in text


def test_system_metrics_off_logs_nothing(client):
    run = client.create_run(client.create_experiment("e")).info.run_id
    with N.system_metrics(run, enabled=False) as monitor:
        assert monitor is None
    assert not [k for k in client.get_run(run).data.metrics if k.startswith("system/")]


def test_system_metrics_land_in_a_client_created_run(client):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    run = client.create_run(client.create_experiment("e")).info.run_id
    with N.system_metrics(run, enabled=True, tracking_uri=uri, sampling_interval=0.3) as monitor:
        assert monitor is not None
        time.sleep(1.5)
    client.set_terminated(run)  # after the block, as the docstring asks
    metrics = client.get_run(run).data.metrics
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in metrics, sorted(metrics)
    assert len(client.get_metric_history(run, "system/cpu_utilization_percentage")) >= 2


def test_system_metrics_that_cannot_start_do_not_fail_the_cell(client, monkeypatch, caplog):
    import mlflow.system_metrics.system_metrics_monitor as smm

    def broken(*args, **kwargs):
        raise RuntimeError("no /proc here")

    monkeypatch.setattr(smm, "SystemMetricsMonitor", broken)
    run = client.create_run(client.create_experiment("e")).info.run_id
    with caplog.at_level("WARNING"), N.system_metrics(run, enabled=True) as monitor:
        assert monitor is None
    assert "system metrics are off" in caplog.text
