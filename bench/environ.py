"""The environment: where the tracking store is, and temporary variables (MLflow and Ray read
several settings from the environment)."""
from __future__ import annotations

import contextlib
import os

from bench.suitefile import PROJECT_ROOT


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else an *absolute* SQLite file in the project folder
    (MLflow's own default, ``sqlite:///mlflow.db``, depends on the working directory).

    Here, below every layer, because a ``tpe`` search's trials live in the tracking database and
    loading its suite (``bench.search``, below ``bench.tracking``) must find the same store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


@contextlib.contextmanager
def temporary_environ(values: dict):
    """``values`` in ``os.environ`` for the duration of the block; the previous state comes back after.

    Not ``unittest.mock.patch.dict(os.environ, values)``: that restores the *whole* environment on
    exit, which would also undo what ``ray.init`` and MLflow set inside the block for later calls.
    Only the keys given here are restored. (Tests use pytest's ``monkeypatch.setenv``.)
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
