"""Temporary environment variables (MLflow and Ray read several settings from the environment)."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def temporary_environ(values: dict):
    """``values`` in ``os.environ`` for the duration of the block; the previous state comes back after."""
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
