"""search: {sampler: tpe} on a PostgreSQL tracking store: the Optuna studies live in MLflow's database,
a second run resumes without asking or running anything, and MLflow still opens the store."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.test_tpe import SPACE, SUITE, FakeExecutor

pytestmark = pytest.mark.integration
optuna = pytest.importorskip("optuna", reason="needs the tune extra: pip install -e '.[tune]'")


def test_tpe_study_in_postgres_resumes_and_mlflow_still_opens_the_store(pg, suites, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.store.db.utils import _get_latest_schema_revision, _verify_schema

    from bench import tpe
    from bench.driver import run_suite

    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg.dsn)
    suites("tpe_pg", SUITE.format(name="tpe_pg", recipes="[ce, aucm]", seeds="[0]", trials=2, space=SPACE))
    first, ex = FakeExecutor(), FakeExecutor()
    run_suite("tpe_pg", progress=False, leaderboard=False, executor=first)
    out = run_suite("tpe_pg", progress=False, leaderboard=False, executor=ex)
    assert len(first.ran) == 4 and ex.ran == [] and out.counts()["skipped"] == 4
    storage = optuna.storages.RDBStorage(pg.dsn, skip_compatibility_check=True)
    for recipe in ("ce", "aucm"):
        study = optuna.load_study(study_name=tpe.study_name("tpe_pg", recipe), storage=storage)
        assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 2
    engine = sa.create_engine(pg.dsn)
    with engine.connect() as c:
        assert c.execute(sa.text("select version_num from alembic_version")).scalar() == _get_latest_schema_revision()
    _verify_schema(engine)
    exp = MlflowClient(pg.dsn).get_experiment_by_name("medauc-bench/tpe_pg")
    assert len(MlflowClient(pg.dsn).search_runs([exp.experiment_id], "tags.bench_role = 'cell'")) == 4
