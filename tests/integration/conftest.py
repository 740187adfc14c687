"""Fixtures that start real services (see ``services.py``); skipped where a piece is missing.

``pg`` lives for the whole session (tests use their own keys and experiment names);
the MLflow server and the Ray cluster live per module, because starting them is the
expensive part (~5-15 s each on 2 cores).
"""
from __future__ import annotations

import importlib.util
import logging

import pytest

from tests.integration import services


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: starts real services (PostgreSQL, mlflow server, Ray) on 127.0.0.1")


@pytest.fixture(scope="session", autouse=True)
def loopback_without_proxy():
    """MLflow clients here (requests honours NO_PROXY) and every service we start inherit this."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in services.LOOPBACK_NO_PROXY.items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def pg():
    """A running PostgreSQL (``.dsn``, ``.restart()``)."""
    pytest.importorskip("psycopg2", reason="needs the postgres extra: pip install -e '.[postgres]'")
    if not (services.PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server programs not found in {services.PG_BIN} (set BENCH_PG_BIN)")
    with services.postgres() as server:
        yield server


@pytest.fixture(scope="module")
def mlflow_srv(pg, tmp_path_factory):
    """``mlflow server`` on the ``pg`` database with proxied artifacts (``.url``, ``.restart()``)."""
    with services.mlflow_server(pg.dsn, tmp_path_factory.mktemp("artifacts")) as server:
        yield server


@pytest.fixture(scope="module")
def ray_cluster():
    """A loopback Ray head (1 CPU) plus one worker node (1 CPU): two nodes, two worker processes."""
    if importlib.util.find_spec("ray") is None:  # not importorskip: ray must not be imported before bench.executors.raysafe
        pytest.skip("needs the ray extra: pip install -e '.[ray]'")
    with services.ray_head(num_cpus=1, worker_nodes=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def ray_driver(ray_cluster):
    """The ``ray`` module, connected to ``ray_cluster`` as a driver."""
    from bench.executors.raysafe import import_ray

    ray = import_ray(loopback=True)
    ray.init(address=ray_cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()
