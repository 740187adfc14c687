import pytest

from bench import tracking as T
from bench.errors import TrackingError


def test_default_uri_is_absolute_sqlite_in_the_project(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = T.tracking_uri()
    assert uri.startswith("sqlite:////") and uri.endswith("/mlflow.db")


def test_file_store_is_refused_with_a_hint(tmp_path):
    with pytest.raises(TrackingError, match="file store"):
        T.check_reachable(str(tmp_path / "mlruns"))


def test_missing_sqlite_folder(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        T.check_reachable(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")


def test_claims_are_exclusive_and_sit_next_to_the_sqlite_store(tmp_path):
    from bench.claims import FileClaims

    a, b = T.Tracker("e"), T.Tracker("e")
    assert isinstance(a.claims, FileClaims) and a.claims.lock_dir == tmp_path / ".mlflow.db.locks"
    first = a.claim("cell")
    assert first is not None and b.claim("cell") is None and not b.claims.is_free("cell")
    first.release()
    second = b.claim("cell")
    assert second is not None
    second.release()


def test_runs_carry_their_claim_key_and_stale_ones_are_marked(tmp_path):
    """bench_lock holds the claim key; a RUNNING run whose key is free belongs to a dead process."""
    from bench.config import load_suite

    tracker = T.Tracker("e", executor="local")
    cell = load_suite("smoke").cells()[0]
    claim = tracker.claim(cell.cell_id)
    run = tracker.start_cell(cell, "smoke", None, claim)
    tags = tracker.client.get_run(run.run_id).data.tags
    assert tags["bench_lock"] == cell.cell_id and tags["bench_executor"] == "local" and tags["bench_host"]
    assert "physical cores" in tags["bench_cpu"] and "CPUs" in tags["bench_cpu"]
    import torch

    assert tags["bench_torch_threads"] == str(torch.get_num_threads())  # numbers depend on it (CPU reductions)
    assert tracker.mark_stale() == 0  # its holder (we) is alive
    # while we hold the key, a RUNNING run of the cell with that key is a dead process's
    older = tracker.start_cell(cell, "smoke", None, claim)
    assert tracker.mark_dead_runs_of(cell.cell_id, claim) == 2
    claim.release()
    assert {tracker.client.get_run(r.run_id).info.status for r in (run, older)} == {"KILLED"}
    parent = tracker.start_parent("smoke", {})
    assert tracker.mark_stale() == 0  # the parent's claim is held by this process
    parent.end()
    assert tracker.client.get_run(parent.run_id).info.status == "FINISHED"


def test_http_check_probes_without_retries_then_turns_them_on(monkeypatch):
    import socket

    from mlflow.tracking import MlflowClient

    for k in T.HTTP_RETRIES:
        monkeypatch.delenv(k, raising=False)
    seen = {}
    monkeypatch.setattr(MlflowClient, "search_experiments",
                        lambda self, **kw: seen.update(retries=T.os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")))
    with socket.socket() as srv:  # a listening port: the TCP probe passes
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        T.check_reachable(f"http://127.0.0.1:{srv.getsockname()[1]}")
    assert seen["retries"] == "0"
    assert T.os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7" and T.http_retry_env()["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "2"


def test_postgres_store_without_psycopg2_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # an install without the postgres extra
    with pytest.raises(TrackingError) as err:
        T.check_reachable("postgresql://bench:secret@db.example:5432/mlflow")
    msg = str(err.value)
    assert "pip install -e '.[postgres]'" in msg and "\n" not in msg and "secret" not in msg


def test_two_drivers_opening_one_experiment_at_once_both_succeed(monkeypatch):
    """The race two drivers starting together run: both see the experiment (or a tag) missing,
    both write it, and the store's unique key refuses the second write. The loser goes on."""
    import mlflow
    from mlflow.tracking import MlflowClient

    first = T.Tracker("race", description="a suite")  # the winner: experiment and tags exist now
    real_create, real_tag = MlflowClient.create_experiment, MlflowClient.set_experiment_tag

    def lost_create(self, name, **kw):
        raise mlflow.exceptions.MlflowException(f"Experiment(name={name}) already exists.")

    def lost_tag(self, experiment_id, key, value):
        real_tag(self, experiment_id, key, value)  # the other driver's insert lands first ...
        raise mlflow.exceptions.MlflowException("UNIQUE constraint failed: experiment_tags")  # ... ours fails

    real_get, calls = MlflowClient.get_experiment_by_name, []

    def not_yet(self, name):  # the first look happens before the other driver's create
        calls.append(name)
        return None if len(calls) == 1 else real_get(self, name)

    monkeypatch.setattr(MlflowClient, "create_experiment", lost_create)
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet)
    assert T.Tracker("race", description="a suite").experiment_id == first.experiment_id
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", real_get)
    monkeypatch.setattr(MlflowClient, "create_experiment", real_create)
    bare = T.Tracker("bare")  # created without tags; a second driver then adds them and loses the race
    monkeypatch.setattr(MlflowClient, "set_experiment_tag", lost_tag)
    again = T.Tracker("bare", description="a suite")
    assert again.experiment_id == bare.experiment_id
    assert again.client.get_experiment(bare.experiment_id).tags  # the tags are there


def test_three_processes_creating_one_sqlite_store_at_once_all_succeed(tmp_path):
    """MLflow creates and migrates a SQLite store on first open; three processes doing that at
    once without the create lock fail ("duplicate column name: step") -- measured, 2 of 3 every
    time. With it (bench.tracking._creating) every opener waits for the first and succeeds."""
    import subprocess
    import sys

    code = "import sys; from bench.tracking import check_reachable; check_reachable(sys.argv[1]); print('ok')"
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in outs]


def test_two_processes_logging_one_dataset_at_once_both_link_it(monkeypatch):
    """MLflow's log_inputs looks a dataset up and then inserts it; when another process inserts
    the same dataset in between, our insert fails once. The run must still get its input."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from bench.config import load_suite

    tracker = T.Tracker("e")
    cell = load_suite("smoke").cells()[0]
    run = tracker.start_cell(cell, "smoke", None, None)
    real, calls = MlflowClient.log_inputs, []

    def lost_race(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException("UNIQUE constraint failed: datasets.experiment_id, datasets.name")
        return real(self, run_id, datasets=datasets)

    monkeypatch.setattr(MlflowClient, "log_inputs", lost_race)
    run.dataset("breastmnist", "0123456789abcdef", "/data/breastmnist.npz", "Official")
    inputs = tracker.client.get_run(run.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["breastmnist"] and len(calls) == 2
