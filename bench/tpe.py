"""``search: {sampler: tpe}``: the Optuna study behind a TPE search (the optional ``tune`` extra).

TPE proposes each trial from the values of the ones before it, so its trials cannot all be drawn
when the suite loads, as Sobol's are (``bench.search``). They are kept in an Optuna study, one per
searched recipe (:func:`study_name`), **in the tracking database itself** (SQLite or PostgreSQL):
the study resumes with the runs and cannot get separated from them. The trials that exist are the
ones the study holds, with their parameters, so loading the suite again gives the same trial
recipes (``R@t03``) and cell ids; the driver (``bench.driver``) asks a family's next trial only
after the previous one was told its value (the mean validation AUC of its runs).

Sharing the database with MLflow: both keep their Alembic revision in the table
``alembic_version`` (the other table names differ). Optuna stamps it only when it is empty, so
MLflow must have created the store first -- the driver opens its tracker before it asks, and
:func:`_storage` refuses a store without it. Optuna's own schema check would then compare MLflow's
revision with its own and refuse, so it is skipped: the exact ``optuna`` pin of the extra keeps
Optuna's tables as they were created. Reading (loading a suite, a dry run, a leaderboard) never
creates a table or a file.

Determinism: trial ``n`` is asked with a sampler seeded from ``(search.seed, n)``. A sampler seeded
once would restart its random stream in every process, so a resumed study would repeat the draws
of its first trials; seeded per trial, a resumed study asks what an uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.errors import ConfigError

log = logging.getLogger(__name__)
EXTRA = "pip install -e '.[tune]'"
STORES = ("sqlite", "postgresql")  # the tracking databases a study can live in
MAX_STARTUP = 10  # Optuna's default number of random trials before TPE models the results


@dataclass(frozen=True)
class Trial:
    """One trial of a study: ``state`` is ``running`` (asked, not told yet), ``complete`` or ``fail``."""

    number: int
    params: dict
    state: str
    value: float | None = None


def require(where: str):
    """The ``optuna`` module, or the one-line error that names the extra."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"{where}: sampler 'tpe' needs Optuna, which is not installed; {EXTRA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per ask
    return optuna


def storage_url(uri: str, where: str) -> str:
    """The SQLAlchemy URL of the study's database: the tracking store's own. A file store or an
    MLflow server has no database this process can reach, and a study elsewhere would not resume
    with the runs, so they are refused rather than given a side file."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme in STORES:
        return uri
    kind = "an MLflow server" if scheme in ("http", "https") else "a file store"
    shown = f"{parts.scheme}://{parts.hostname or ''}" if parts.scheme else uri
    raise ConfigError(f"{where}: sampler 'tpe' keeps its Optuna study in the tracking database, but the tracking "
                      f"store is {kind} ({shown}); set MLFLOW_TRACKING_URI to a sqlite:/// or postgresql:// database "
                      f"(a server's own backend store), or use sampler sobol")


def study_name(suite: str, recipe: str) -> str:
    """One study per (suite, searched recipe): every family is searched on its own."""
    return f"medauc-bench/{suite}/{recipe}"


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: a quarter of the budget, 2 to 10. Optuna's
    default (10) would leave a benchmark-sized budget (8, 16 trials) all or mostly random."""
    return max(2, min(MAX_STARTUP, trials // 4))


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` (see the module docstring)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{number}".encode()).digest()[:4], "big")


def distributions(dims: tuple, where: str) -> dict:
    """``search.space.<recipe>`` (sorted ``(name, kind, values)`` triples, ``bench.search``) as
    Optuna distributions, in the same order, so a draw does not depend on the YAML's key order."""
    D = require(where).distributions
    out = {}
    for name, kind, values in dims:
        if kind == "choice":
            bad = [v for v in values if v is not None and not isinstance(v, (bool, int, float, str))]
            if bad:
                raise ConfigError(f"{where}.{name}.choice: sampler 'tpe' needs plain values (numbers, strings, "
                                  f"booleans, null), got {bad[0]!r}")
            out[name] = D.CategoricalDistribution(list(values))
        elif kind == "int_uniform":
            out[name] = D.IntDistribution(values[0], values[1])
        else:
            out[name] = D.FloatDistribution(float(values[0]), float(values[1]), log=kind == "log_uniform")
    return out


def _tables(url: str) -> set[str]:
    """The database's table names; none (and no file created) when a SQLite file does not exist yet."""
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return set()
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@contextlib.contextmanager
def _storage(optuna, url: str, where: str, create: bool = False):
    """Optuna's RDB storage on the tracking database (see the module docstring for the flags);
    ``create``: Optuna may create its tables (asking), else it only reads and writes rows."""
    if "alembic_version" not in _tables(url):
        raise ConfigError(f"{where}: the tracking database has no MLflow tables yet; Optuna must not create it "
                          f"(open it with MLflow first, e.g. bench doctor)")
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=not create)
    try:
        yield storage
    finally:
        storage.engine.dispose()


def _state(optuna, state) -> str:
    S = optuna.trial.TrialState
    return "running" if state in (S.RUNNING, S.WAITING) else "complete" if state == S.COMPLETE else "fail"


def stored_trials(url: str, name: str, dims: tuple, where: str) -> list[Trial]:
    """The trials study ``name`` holds, by number; [] when it does not exist. Read only.

    A trial asked from another space (the YAML was edited after the search began) would give cells
    whose parameters the space does not declare: one line says so instead."""
    optuna = require(where)
    if not {"studies", "alembic_version"} <= _tables(url):
        return []
    with _storage(optuna, url, where) as storage:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return []
        frozen = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    want = distributions(dims, where)
    for t in frozen:
        if t.distributions != want:
            raise ConfigError(f"{where}: study '{name}' holds trial {t.number} from another search space "
                              f"({', '.join(f'{k}: {v}' for k, v in sorted(t.distributions.items()))}); restore the "
                              f"space, or start afresh: optuna delete-study --study-name '{name}' --storage <tracking "
                              f"database>")
    return [Trial(t.number, dict(t.params), _state(optuna, t.state), t.value) for t in frozen]


def _sampler(optuna, seed: int, number: int, trials: int):
    return optuna.samplers.TPESampler(seed=trial_seed(seed, number), n_startup_trials=startup_trials(trials))


def first_trial(dims: tuple, seed: int, trials: int, where: str) -> dict:
    """The parameters trial 0 will be asked with, computed in memory: it depends on no result, so a
    family whose study is empty still has a trial to show (and its cells) without writing anything."""
    optuna = require(where)
    study = optuna.create_study(direction="maximize", sampler=_sampler(optuna, seed, 0, trials))
    return dict(study.ask(distributions(dims, where)).params)


def ask(url: str, name: str, dims: tuple, seed: int, trials: int, where: str) -> Trial:
    """Ask study ``name`` (created on the first ask) for its next trial; stored at once, so an
    interrupted round runs the same parameters again."""
    optuna = require(where)
    with _storage(optuna, url, where, create=True) as storage:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
        study.sampler = _sampler(optuna, seed, len(study.get_trials(deepcopy=False)), trials)
        trial = study.ask(distributions(dims, where))
    log.info("tpe: %s asked trial %d: %s", name, trial.number, trial.params)
    return Trial(trial.number, dict(trial.params), "running")


def tell(url: str, name: str, number: int, value: float | None, where: str) -> None:
    """Record trial ``number``'s value (None: it has none, e.g. every cell was not applicable: FAIL).
    A trial told already (another driver got there first) is left as it is."""
    optuna = require(where)
    with _storage(optuna, url, where) as storage:
        study = optuna.load_study(study_name=name, storage=storage)
        if value is None:
            study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(number, value, skip_if_finished=True)
