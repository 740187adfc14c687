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


def test_lock_is_exclusive_and_released(tmp_path):
    a, b = T.Lock(tmp_path / "x.lock"), T.Lock(tmp_path / "x.lock")
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    b.release()


def test_lock_dir_sits_next_to_the_sqlite_store(tmp_path):
    assert T.lock_dir(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / ".mlflow.db.locks"
