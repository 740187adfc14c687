"""Claims: which process trains a cell, across processes and across machines.

A process claims a cell (key = its cell id, or any string such as a parent run's
``parent-<pid>-<ns>``) before training it; a second claimer gets ``None`` and skips the
cell. A claim is released by :meth:`Claim.release` *or by the death of its holder*,
which is what lets a later invocation tell a RUNNING run of a dead process (its key is
free: :meth:`Claims.is_free`) from a live one. Store :attr:`Claim.key` in the run's
``bench_lock`` tag.

``FileClaims(lock_dir)`` -- an exclusive ``flock`` on ``<lock_dir>/<key>.lock``.
  * kill -9: the kernel closes the file and releases the lock at once.
  * Scope: one machine (or a shared filesystem whose flock really is cluster-wide; NFS
    and most network filesystems do not guarantee that).

``PostgresClaims(dsn)`` -- a session-level ``pg_try_advisory_lock`` held by one dedicated
connection per claim, on a signed 64-bit key: the first 16 hex digits of
sha256("medauc-bench/claim/" + key). Plus a row in ``bench_claims`` (key, host, pid,
claimed_at) so people can see who holds what. The lock is the truth; the row is
informational (rows of dead holders stay until the key is claimed again).
  * kill -9 of the holder: its kernel closes the TCP connection, PostgreSQL ends the
    backend and the lock is free at once (measured times: docs/scaling-out.md).
  * Holder's machine vanishes or is partitioned away: no FIN arrives. The claim
    connection asks the server for TCP keepalives (:data:`SERVER_KEEPALIVES`), so the
    server ends the backend and frees the lock after about a minute (measured with a
    link cut between two network namespaces: docs/scaling-out.md). From then on another machine may
    claim and train the cell while the cut-off holder, unaware, keeps training: a claim
    is a lease, not a fencing token. A holder can ask :meth:`Claim.held` before it
    records a result (client-side keepalives make that fail rather than hang).
  * PostgreSQL restart (or failover): every session ends, so every claim is lost at once
    and ``held()`` turns False on all holders; new claims work as soon as the server is
    back. Cells in flight may then be trained twice (each keeps its own run).
  * ``max_connections`` bounds the number of claims held at once across the cluster
    (one connection per claim, plus one per ``PostgresClaims`` for ``is_free``).

Guarantee of both: while the holder lives and stays connected, nobody else claims the key.

:func:`make_claims` chooses from the tracking URI: an explicit claims URI or
``$BENCH_CLAIMS_URI`` first, then ``$BENCH_LOCK_DIR``, then a ``postgresql://`` tracking
store's own database, then files next to a SQLite store; an HTTP tracking server without
a claims URI falls back to per-machine files in ``~/.cache`` with a warning.
"""
from __future__ import annotations

import abc
import hashlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import filelock

from bench.errors import ConfigError, TrackingError

log = logging.getLogger(__name__)

KEY_NAMESPACE = b"medauc-bench/claim/"  # keeps our advisory keys apart from other users of the database
POSTGRES_SCHEMES = ("postgresql", "postgres")
# Server-side keepalives (settable per session): the server notices a vanished client after ~60 s.
SERVER_KEEPALIVES = "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
TABLE_DDL = """CREATE TABLE IF NOT EXISTS bench_claims (
    cell_id    text PRIMARY KEY,
    host       text NOT NULL,
    pid        integer NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now())"""


class Claim(abc.ABC):
    """A held claim; release it once the cell's run has ended."""

    def __init__(self, key: str):
        self.key = key

    @abc.abstractmethod
    def release(self) -> None:
        """Give the claim back (idempotent)."""

    @abc.abstractmethod
    def held(self) -> bool:
        """Whether the claim is still ours (False once released or lost with the connection)."""


class Claims(abc.ABC):
    """A claim store; also a context manager that closes it."""

    @abc.abstractmethod
    def claim(self, key: str) -> Claim | None:
        """Claim ``key`` without waiting; None when another process holds it."""

    @abc.abstractmethod
    def is_free(self, key: str) -> bool:
        """Whether nobody holds ``key`` (a RUNNING run with a free key belongs to a dead process)."""

    def close(self) -> None:
        """Release resources of the store itself (claims stay valid)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- files
class FileClaim(Claim):
    def __init__(self, key: str, lock: filelock.BaseFileLock):
        super().__init__(key)
        self.lock: filelock.BaseFileLock | None = lock

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def held(self) -> bool:
        return self.lock is not None and self.lock.is_locked


class FileClaims(Claims):
    """An exclusive lock on ``<lock_dir>/<key>.lock`` (``filelock``: ``flock`` on POSIX), taken
    without waiting. The kernel drops it when the holder dies (``kill -9`` included), which is what
    makes a RUNNING run with a free claim a dead process's. One lock object per claim, so a
    second claim of the same key -- in this process too -- is refused."""

    def __init__(self, lock_dir: Path):
        self.lock_dir = Path(lock_dir)

    def _path(self, key: str) -> Path:
        # runs tagged before claims existed carry the file name ("<cell id>.lock") as key
        return self.lock_dir / (key if key.endswith(".lock") else f"{key}.lock")

    def claim(self, key: str) -> FileClaim | None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(path, mode=0o644, thread_local=False, is_singleton=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return None
        return FileClaim(key, lock)

    def is_free(self, key: str) -> bool:
        if not self._path(key).exists():
            return True
        claim = self.claim(key)
        if claim is None:
            return False
        claim.release()
        return True

    def __repr__(self) -> str:
        return f"FileClaims({str(self.lock_dir)!r})"


# ---------------------------------------------------------------------------- PostgreSQL
def advisory_key(key: str) -> int:
    """The signed 64-bit advisory lock key of a claim key (first 8 bytes of a sha256)."""
    return int.from_bytes(hashlib.sha256(KEY_NAMESPACE + key.encode()).digest()[:8], "big", signed=True)


def redact(uri: str) -> str:
    """``uri`` without its password, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def libpq_dsn(uri: str) -> str:
    """A libpq URI from a SQLAlchemy one (``postgresql+psycopg2://`` -> ``postgresql://``)."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


class PostgresClaim(Claim):
    def __init__(self, key: str, conn, owner: tuple[str, int], db_error: type[Exception]):
        super().__init__(key)
        self.conn, self.owner, self.db_error = conn, owner, db_error

    def release(self) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        try:
            with conn.cursor() as cur:
                cur.execute("DELETE FROM bench_claims WHERE cell_id = %s AND host = %s AND pid = %s", (self.key, *self.owner))
                cur.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(self.key),))
        except self.db_error as exc:  # connection already gone: the server released the lock with it
            log.debug("claim %s: release on a broken connection (%s)", self.key, exc)
        finally:
            conn.close()

    def held(self) -> bool:
        if self.conn is None:
            return False
        hi, lo = divmod(advisory_key(self.key) & 0xFFFFFFFFFFFFFFFF, 1 << 32)
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                            "AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1 AND granted",
                            (hi, lo))
                return cur.fetchone()[0] > 0
        except self.db_error as exc:  # the session, and with it the lock, is gone
            log.warning("claim %s is lost: its PostgreSQL connection failed (%s)", self.key, _first_line(exc))
            return False


class PostgresClaims(Claims):
    """Advisory locks in a PostgreSQL database shared by every machine of a run."""

    def __init__(self, dsn: str):
        try:
            import psycopg2
        except ImportError:
            raise TrackingError(f"claims store {redact(dsn)} needs the PostgreSQL driver, which is not installed; "
                                f"pip install -e '.[postgres]'") from None
        self._psycopg2 = psycopg2
        self.dsn = libpq_dsn(dsn)
        self._control = self._connect()
        try:
            with self._control.cursor() as cur:  # concurrent CREATE ... IF NOT EXISTS can fail: serialise it
                cur.execute("BEGIN")
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("bench_claims DDL"),))
                cur.execute(TABLE_DDL)
                cur.execute("COMMIT")
        except psycopg2.Error as exc:
            self._control.close()
            raise TrackingError(f"claims store {redact(self.dsn)}: cannot create table bench_claims ({_first_line(exc)}); "
                                f"use a database the claims user owns") from None

    def _connect(self):
        try:
            conn = self._psycopg2.connect(
                self.dsn, connect_timeout=10, application_name="medauc-bench claims",
                keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                options=SERVER_KEEPALIVES,
            )
        except self._psycopg2.Error as exc:
            raise TrackingError(f"claims store {redact(self.dsn)} cannot be used ({_first_line(exc)}); start PostgreSQL "
                                f"or fix BENCH_CLAIMS_URI") from None
        conn.autocommit = True
        return conn

    def _try_lock(self, conn, key: str) -> bool:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key(key),))
            return bool(cur.fetchone()[0])

    def claim(self, key: str) -> PostgresClaim | None:
        conn = self._connect()
        owner = (socket.gethostname(), os.getpid())  # at claim time: the store may have been made before a fork
        try:
            if not self._try_lock(conn, key):
                conn.close()
                return None
            with conn.cursor() as cur:
                cur.execute("INSERT INTO bench_claims (cell_id, host, pid) VALUES (%s, %s, %s) ON CONFLICT (cell_id) "
                            "DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, claimed_at = now()",
                            (key, *owner))
        except self._psycopg2.Error as exc:
            conn.close()
            raise TrackingError(f"claims store {redact(self.dsn)}: cannot claim {key} ({_first_line(exc)})") from None
        return PostgresClaim(key, conn, owner, self._psycopg2.Error)

    def _is_free(self, key: str) -> bool:
        # the control connection never keeps a lock, so its try-lock sees every holder
        if not self._try_lock(self._control, key):
            return False
        with self._control.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(key),))
        return True

    def is_free(self, key: str) -> bool:
        try:
            try:
                return self._is_free(key)
            except self._psycopg2.Error:
                if not self._control.closed:
                    raise
                self._control = self._connect()  # PostgreSQL restarted since: a new session, once
                return self._is_free(key)
        except self._psycopg2.Error as exc:
            raise TrackingError(f"claims store {redact(self.dsn)}: cannot check {key} ({_first_line(exc)})") from None

    def close(self) -> None:
        self._control.close()

    def __repr__(self) -> str:
        return f"PostgresClaims({redact(self.dsn)!r})"


# ---------------------------------------------------------------------------- choice
def cache_lock_dir(tracking_uri: str) -> Path:
    """Per-machine lock folder for a store that has no folder of its own (a server)."""
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    return Path("~/.cache/medauc-bench/locks").expanduser() / digest


def make_claims(tracking_uri: str, claims_uri: str | None = None) -> Claims:
    """The claim store for a tracking store (see the module docstring for the order)."""
    claims_uri = claims_uri or os.environ.get("BENCH_CLAIMS_URI")
    if claims_uri:
        scheme = urlsplit(claims_uri).scheme.split("+", 1)[0]
        if scheme in POSTGRES_SCHEMES:
            return PostgresClaims(claims_uri)
        if scheme in ("", "file"):
            return FileClaims(Path(urlsplit(claims_uri).path if scheme else claims_uri))
        raise ConfigError(f"claims URI {redact(claims_uri)}: unsupported scheme '{scheme}'; "
                          f"use postgresql://user@host:port/db or a lock folder path")
    if os.environ.get("BENCH_LOCK_DIR"):
        return FileClaims(Path(os.environ["BENCH_LOCK_DIR"]))
    scheme = urlsplit(tracking_uri).scheme.split("+", 1)[0]
    if scheme in POSTGRES_SCHEMES:
        return PostgresClaims(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):]).resolve()
        return FileClaims(db.parent / f".{db.name}.locks")
    log.warning("claims for %s are per machine (%s); set BENCH_CLAIMS_URI=postgresql://... when several "
                "machines run one suite", redact(tracking_uri), cache_lock_dir(tracking_uri))
    return FileClaims(cache_lock_dir(tracking_uri))
