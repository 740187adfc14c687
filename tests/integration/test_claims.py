"""The guarantees of ``bench.claims``, against real PostgreSQL and real files.

Claimers are separate processes (``claimer.py``): each has its own connections and pid,
and dies for real under SIGKILL, which is what the guarantees are about.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench.claims import FileClaims, PostgresClaims, advisory_key, make_claims
from bench.errors import ConfigError, TrackingError

pytestmark = pytest.mark.integration
CLAIMER = Path(__file__).with_name("claimer.py")
FREE_WITHIN_S = 5.0


@pytest.fixture(params=["postgres", "files"])
def store(request, tmp_path) -> str:
    """Where claims live: a PostgreSQL DSN or a lock folder."""
    return request.getfixturevalue("pg").dsn if request.param == "postgres" else str(tmp_path / "locks")


def open_claims(store: str):
    return PostgresClaims(store) if store.startswith("postgresql://") else FileClaims(Path(store))


def unique_keys(n: int) -> list[str]:
    prefix = uuid.uuid4().hex[:8]  # the session-wide database outlives each test
    return [f"{prefix}-cell-{i:02d}" for i in range(n)]


def start_claimers(store: str, keys: list[str], n: int) -> list[subprocess.Popen]:
    start_at = time.time() + 1.5  # after every interpreter has started: a real race
    return [subprocess.Popen([sys.executable, str(CLAIMER), store, "--start-at", str(start_at), *keys],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]


def claimed(proc: subprocess.Popen, timeout: float = 60) -> set[str]:
    """The keys a claimer reports holding (it keeps holding them)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            pytest.fail(f"claimer {proc.pid} reported nothing within {timeout} s")
    line = proc.stdout.readline()
    assert line.startswith("CLAIMED "), f"claimer {proc.pid} said {line!r} (exit {proc.poll()})"
    return set(json.loads(line.split(" ", 1)[1]))


def finish(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def wait_free(claims, keys: list[str], timeout: float = FREE_WITHIN_S) -> float:
    """Seconds until every key is free; fails after ``timeout``."""
    t0 = time.monotonic()
    while not all(map(claims.is_free, keys)):
        if time.monotonic() - t0 > timeout:
            held = [k for k in keys if not claims.is_free(k)]
            pytest.fail(f"{len(held)} claim(s) still held {timeout} s after their holder died: {held[:3]}")
        time.sleep(0.1)
    return time.monotonic() - t0


def test_two_processes_racing_claim_every_cell_exactly_once(store):
    keys = unique_keys(50)
    procs = start_claimers(store, keys, n=2)
    try:
        won = [claimed(p) for p in procs]
        assert won[0].isdisjoint(won[1]), f"claimed twice: {sorted(won[0] & won[1])[:5]}"
        assert won[0] | won[1] == set(keys)
        logging.getLogger(__name__).info("split of 50 cells between the racers: %d / %d", len(won[0]), len(won[1]))
        with open_claims(store) as claims:
            assert not any(map(claims.is_free, keys))
            assert claims.claim(keys[0]) is None
    finally:
        for p in procs:
            finish(p)
    with open_claims(store) as claims:
        assert all(map(claims.is_free, keys)), "released on exit"


def test_claims_of_a_killed_process_become_free(store):
    keys = unique_keys(5)
    (proc,) = start_claimers(store, keys, n=1)
    assert claimed(proc) == set(keys)
    with open_claims(store) as claims:
        assert not claims.is_free(keys[0])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        seconds = wait_free(claims, keys)
        logging.getLogger(__name__).info("claims free %.2f s after SIGKILL", seconds)
        again = claims.claim(keys[0])
        assert again is not None and again.held()
        again.release()
        assert not again.held()


def test_a_claim_is_exclusive_within_one_process_too(store):
    """Two claims of one key from one process (two threads of an executor) must not both win."""
    (key,) = unique_keys(1)
    with open_claims(store) as claims, open_claims(store) as other:
        first = claims.claim(key)
        assert first is not None
        assert claims.claim(key) is None and other.claim(key) is None
        assert not claims.is_free(key), "is_free must not take the holder's own lock for free"
        first.release()
        first.release()  # idempotent
        assert claims.is_free(key)


def test_claim_table_shows_the_holder(pg):
    import psycopg2

    (key,) = unique_keys(1)
    with PostgresClaims(pg.dsn) as claims:
        claim = claims.claim(key)
        with psycopg2.connect(pg.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT pid FROM bench_claims WHERE cell_id = %s", (key,))
            assert cur.fetchall() == [(os.getpid(),)]
            claim.release()
            cur.execute("SELECT count(*) FROM bench_claims WHERE cell_id = %s", (key,))
            assert cur.fetchone() == (0,)
        conn.close()


def test_postgres_restart_loses_claims_and_says_so(pg):
    """After a restart every claim is gone: ``held()`` turns False and others may claim."""
    (key,) = unique_keys(1)
    with PostgresClaims(pg.dsn) as claims:
        claim = claims.claim(key)
        assert claim.held()
        pg.restart()
        assert not claim.held()
        assert claims.is_free(key), "a store made before the restart opens a new session and keeps working"
        second = claims.claim(key)
        assert second is not None and second.held()
        second.release()
    claim.release()  # on a dead connection: no error


def test_advisory_key_is_a_stable_signed_int64():
    assert advisory_key("abc") == advisory_key("abc") != advisory_key("abd")
    assert all(-(2**63) <= advisory_key(f"k{i}") < 2**63 for i in range(100))
    assert any(advisory_key(f"k{i}") < 0 for i in range(100))


# ---------------------------------------------------------------------------- make_claims
def test_make_claims_chooses_by_uri(tmp_path, monkeypatch, caplog, pg):
    monkeypatch.delenv("BENCH_CLAIMS_URI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    db = tmp_path / "mlflow.db"
    sqlite = make_claims(f"sqlite:///{db}")
    assert isinstance(sqlite, FileClaims) and sqlite.lock_dir == tmp_path / ".mlflow.db.locks"

    with caplog.at_level(logging.WARNING, logger="bench.claims"):
        http = make_claims("http://127.0.0.1:5000")
    assert isinstance(http, FileClaims) and str(http.lock_dir).startswith(str(tmp_path / "home" / ".cache"))
    assert "BENCH_CLAIMS_URI" in caplog.text

    with make_claims("http://127.0.0.1:5000", pg.dsn) as explicit, make_claims(pg.dsn.replace("postgresql", "postgresql+psycopg2")) as store:
        assert isinstance(explicit, PostgresClaims) and isinstance(store, PostgresClaims)
    monkeypatch.setenv("BENCH_CLAIMS_URI", pg.dsn)
    with make_claims(f"sqlite:///{db}") as env:
        assert isinstance(env, PostgresClaims)
    with pytest.raises(ConfigError, match="unsupported scheme 'redis'"):
        make_claims(f"sqlite:///{db}", "redis://127.0.0.1/0")


def test_missing_psycopg2_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # what an install without the extra looks like
    with pytest.raises(TrackingError) as err:
        make_claims("http://127.0.0.1:5000", "postgresql://bench:secret@db.example:5432/bench")
    msg = str(err.value)
    assert "pip install -e '.[postgres]'" in msg and "\n" not in msg
    assert "No module named" not in msg and "secret" not in msg


def test_unreachable_postgres_is_one_line():
    from tests.integration.services import free_port

    with pytest.raises(TrackingError) as err:
        PostgresClaims(f"postgresql://postgres:pw@127.0.0.1:{free_port()}/bench")
    msg = str(err.value)
    assert "\n" not in msg and "BENCH_CLAIMS_URI" in msg and ":pw@" not in msg
