"""search: {sampler: tpe}: Optuna studies in the tracking database, asked round by round, resumable.

Most tests run the driver's rounds with an executor that records a run per cell without training
(its val AUC a function of the trial's parameters), so the loop, the budgets, the told values and
resuming are checked in seconds; one test runs real (1-epoch) cells."""
import dataclasses
import importlib
import importlib.util
import math
import sys
from pathlib import Path

import mlflow
import pytest
import sqlalchemy as sa

from bench import tpe
from bench.config import load_suite
from bench.driver import data_fingerprint, run_suite, trial_value
from bench.errors import ConfigError
from bench.executors import Cluster, Executor
from bench.search import expand_search, families
from bench.tracking import Tracker, tracking_uri

HAVE_OPTUNA = importlib.util.find_spec("optuna") is not None
optuna = importlib.import_module("optuna") if HAVE_OPTUNA else None
needs_optuna = pytest.mark.skipif(not HAVE_OPTUNA, reason="needs the tune extra: pip install -e '.[tune]'")

SUITE = """
include: _base.yaml
suite: {name}
train: {{epochs: 1, batch_size: 16}}
grid: {{dataset: [breastmnist], recipe: {recipes}, aug: [false], seed: {seeds}, protocol: [official]}}
search:
  trials: {trials}
  sampler: tpe
  seed: 0
  space:
{space}
"""
SPACE = """    ce: {lr: {log_uniform: [1.0e-4, 1.0e-2]}}
    aucm: {margin: {uniform: [0.5, 1.0]}, sampling_rate: {choice: [0.1, 0.2]}}"""
CE_SPACE = """    ce: {lr: {log_uniform: [1.0e-4, 1.0e-2]}}"""


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An MLflow database with its tables and nothing else: creating them takes seconds per test."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path.read_bytes()


@pytest.fixture(autouse=True)
def store(empty_store, tmp_path):
    """Each test's tracking store (conftest's ``isolated``) starts as a copy of ``empty_store``."""
    (tmp_path / "mlflow.db").write_bytes(empty_store)


def write(suites, name="t", recipes="[ce, aucm, ap]", seeds="[0, 1]", trials=3, space=SPACE):
    return suites(name, SUITE.format(name=name, recipes=recipes, seeds=seeds, trials=trials, space=space))


def fake_val_auc(cell) -> float:
    """A smooth function of the trial's parameters (and the seed), so TPE has something to model."""
    p = cell.params_dict
    return 0.9 - abs(math.log10(p["lr"]) + 3) / 10 - abs(p.get("margin", 0.75) - 0.75) / 5 + 0.01 * cell.seed


class FakeExecutor(Executor):
    """Records a FINISHED run per planned cell (val_auc from :func:`fake_val_auc`); trains nothing."""

    name = "local"

    def __init__(self, fail=()):
        self.ran, self.fail, self.closed = [], set(fail), 0

    def cluster(self):
        return Cluster(cpus=1.0)

    def run(self, plan, ctx, tracker):
        from bench.runner import CellResult

        for item in plan.items:
            cell = item.task.cell
            self.ran.append(cell)
            run = tracker.start_cell(cell, ctx.suite, ctx.parent_run_id, None)
            if cell.recipe.split("@")[0] in self.fail:
                run.end("FAILED", "failed", "fake failure")
                yield CellResult(cell.cell_id, cell.run_name, "failed", error="fake failure")
                continue
            val = fake_val_auc(cell)
            run.metrics({"val_auc": val, "test_auc": 0.5})
            run.end("FINISHED", "finished")
            yield CellResult(cell.cell_id, cell.run_name, "finished", val_auc=val, test_auc=0.5)

    def close(self):
        self.closed += 1


def study(recipe, suite="t"):
    return optuna.load_study(study_name=tpe.study_name(suite, recipe),
                             storage=optuna.storages.RDBStorage(tracking_uri(), skip_compatibility_check=True))


def cells(name="t"):
    """The suite's cells with the ids the driver gives them (data fingerprints included)."""
    return load_suite(name).cells(data_fingerprint(None))


def go(name="t", **kw):
    return run_suite(name, progress=False, leaderboard=False, **kw)


# --------------------------------------------------------------------------- declaration


@needs_optuna
def test_distributions_map_each_kind():
    dims = (("a", "log_uniform", (1e-4, 1e-2)), ("b", "uniform", (0, 1)), ("c", "int_uniform", (1, 4)),
            ("d", "choice", ("v1", "v2", None)))
    D = optuna.distributions
    assert tpe.distributions(dims, "w") == {
        "a": D.FloatDistribution(1e-4, 1e-2, log=True), "b": D.FloatDistribution(0.0, 1.0),
        "c": D.IntDistribution(1, 4), "d": D.CategoricalDistribution(["v1", "v2", None])}
    with pytest.raises(ConfigError, match=r"w\.e\.choice: sampler 'tpe' needs plain values"):
        tpe.distributions((("e", "choice", ([1, 2], [3])),), "w")


def test_missing_optuna_names_the_extra(suites, monkeypatch):
    write(suites)
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(ConfigError) as e:
        load_suite("t")
    msg = str(e.value)
    assert "\n" not in msg and "search.sampler: sampler 'tpe' needs Optuna" in msg and "pip install -e '.[tune]'" in msg


@needs_optuna
@pytest.mark.parametrize("uri, kind", [("http://127.0.0.1:5000", "an MLflow server"), ("file:///tmp/mlruns", "a file store")])
def test_a_store_without_a_database_is_one_line(suites, monkeypatch, uri, kind):
    write(suites)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError, match=f"keeps its Optuna study in the tracking database, but the tracking store "
                                          f"is {kind}") as e:
        load_suite("t")
    assert "\n" not in str(e.value)


@needs_optuna
def test_before_any_trial_each_family_shows_its_first_and_nothing_is_written(suites, tmp_path):
    write(suites)
    text = run_suite("t", dry=True)
    assert "search: ce 3 tpe trials over lr (seed 0, the first 2 random): 0 in the study, 0 with a value" in text
    assert "search: aucm 3 tpe trials over margin, sampling_rate (seed 0, the first 2 random): 0 in the study" in text
    assert "equal budget: every family 3 trials" in text
    assert "tpe asks each family's trials one at a time" in text
    assert "6 cells" in text  # ce@t00 and aucm@t00 and ap, two seeds each
    assert [c.recipe for c in load_suite("t").cells()] == ["ce@t00"] * 2 + ["aucm@t00"] * 2 + ["ap"] * 2
    tables = set(sa.inspect(sa.create_engine(tracking_uri())).get_table_names())
    assert "experiments" in tables and "studies" not in tables  # the dry run opened MLflow, never Optuna


@needs_optuna
def test_the_first_trial_shown_is_the_one_asked(suites):
    write(suites)
    shown = {c.recipe: c.params_dict for c in load_suite("t").cells()}
    Tracker("medauc-bench/t")  # MLflow creates the store first
    for fam in _families("t"):
        tpe.ask(tracking_uri(), tpe.study_name("t", fam.recipe), fam.dims, fam.seed, fam.trials, "w")
    again = {c.recipe: c.params_dict for c in load_suite("t").cells()}
    assert again == shown and _families("t")[0].asked == 1


def _families(name):
    suite = load_suite(name)
    return families(suite.doc, suite.path, expanded=True)


# --------------------------------------------------------------------------- the rounds


@needs_optuna
def test_every_family_gets_its_trials_and_a_second_run_runs_nothing(suites):
    write(suites)
    ex = FakeExecutor()
    first = go(executor=ex)
    assert first.failed == 0 and ex.closed == 1  # one executor for every round
    for recipe in ("ce", "aucm"):
        trials = study(recipe).get_trials()
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    recipes = sorted({c.recipe for c in ex.ran})
    assert recipes == ["ap", "aucm@t00", "aucm@t01", "aucm@t02", "ce@t00", "ce@t01", "ce@t02"]
    assert len(ex.ran) == 14 and first.counts()["finished"] == 14
    assert sorted(c.cell_id for c in cells()) == sorted(c.cell_id for c in ex.ran)  # the suite now lists every trial
    again = FakeExecutor()
    second = go(executor=again)
    assert again.ran == [] and second.counts()["skipped"] == 14 and not second.results
    assert all(len(study(r).get_trials()) == 3 for r in ("ce", "aucm"))
    text = run_suite("t", dry=True)
    assert "search: ce 3 tpe trials over lr (seed 0, the first 2 random): 3 in the study, 3 with a value" in text
    assert "14 cells, 14 finished, 0 to run" in text


@needs_optuna
def test_only_runs_part_of_a_trial_and_leaves_it_untold(suites):
    write(suites, trials=2)
    go(executor=FakeExecutor(), only=("seed=0",))
    for recipe in ("ce", "aucm"):  # seed 1 of trial 0 has not run: its mean is not known yet
        assert [t.state for t in study(recipe).get_trials()] == [optuna.trial.TrialState.RUNNING]
    go(executor=FakeExecutor())
    assert all(len(study(r).get_trials()) == 2 for r in ("ce", "aucm"))


@needs_optuna
def test_unequal_budgets_need_a_reason_and_each_family_gets_its_own(suites):
    suites("u", SUITE.format(name="u", recipes="[ce, aucm]", seeds="[0]", trials="{ce: 3, aucm: 2}", space=SPACE)
           + "  unequal_budget_reason: aucm is the slower family\n")
    go("u", executor=FakeExecutor())
    assert len(study("ce", "u").get_trials()) == 3 and len(study("aucm", "u").get_trials()) == 2
    assert "unequal budget (ce 3, aucm 2): aucm is the slower family" in run_suite("u", dry=True)


@needs_optuna
def test_the_told_value_is_the_mean_validation_auc_of_the_trials_runs(suites):
    write(suites, trials=2)
    go(executor=FakeExecutor())
    mlflow.set_tracking_uri(tracking_uri())
    df = mlflow.search_runs(experiment_names=["medauc-bench/t"], filter_string="tags.bench_role = 'cell'")
    for recipe in ("ce", "aucm"):
        for t in study(recipe).get_trials():
            runs = df[df["params.recipe"] == f"{recipe}@t{t.number:02d}"]
            assert len(runs) == 2  # both seeds
            assert t.value == pytest.approx(runs["metrics.val_auc"].mean(), abs=1e-12)
            assert t.value != pytest.approx(runs["metrics.test_auc"].mean())


@needs_optuna
def test_trial_value_reads_validation_only_and_counts_missing_cells(suites):
    write(suites, trials=1)
    go(executor=FakeExecutor())
    trial = [c for c in cells() if c.recipe == "ce@t00"]
    tracker = Tracker("medauc-bench/t")
    value, missing = trial_value(tracker, trial)
    assert missing == 0 and value == pytest.approx(sum(map(fake_val_auc, trial)) / 2)
    unrun = dataclasses.replace(trial[0], seed=7)
    assert trial_value(tracker, [*trial, unrun])[1] == 1


@needs_optuna
def test_an_asked_but_unfinished_trial_runs_again_with_its_params(suites):
    write(suites, recipes="[ce]", trials=2, space=CE_SPACE)
    Tracker("medauc-bench/t")
    fam = _families("t")[0]
    asked = tpe.ask(tracking_uri(), tpe.study_name("t", "ce"), fam.dims, fam.seed, fam.trials, "w")  # then "killed"
    ex = FakeExecutor()
    go(executor=ex)
    trials = study("ce").get_trials()
    assert len(trials) == 2 and trials[0].params == asked.params  # no third ask: trial 0 was run, not re-asked
    t0 = [c for c in ex.ran if c.recipe == "ce@t00"]
    assert {c.params_dict["lr"] for c in t0} == {float(f"{asked.params['lr']:.6g}")}


@needs_optuna
def test_a_failed_trial_blocks_only_its_family_until_the_next_run(suites):
    write(suites, trials=2)
    go(executor=FakeExecutor(fail={"aucm"}))
    states = [t.state for t in study("aucm").get_trials()]
    assert states == [optuna.trial.TrialState.RUNNING]  # not told: TPE's next proposal needs its value
    assert len(study("ce").get_trials()) == 2
    ex = FakeExecutor()
    go(executor=ex)  # the failed trial runs again with the same params, then the family goes on
    assert [t.state for t in study("aucm").get_trials()] == [optuna.trial.TrialState.COMPLETE] * 2
    assert {c.recipe for c in ex.ran} == {"aucm@t00", "aucm@t01"}


@needs_optuna
def test_two_drivers_never_ask_one_trial_twice(suites):
    from bench.config import digest
    from bench.driver import _ask
    from bench.errors import TrackingError

    write(suites, recipes="[ce]", trials=2, space=CE_SPACE)
    tracker, suite = Tracker("medauc-bench/t"), load_suite("t")
    fam = _families("t")[0]
    _ask(tracker, tracking_uri(), suite, fam, 0)
    _ask(tracker, tracking_uri(), suite, fam, 0)  # another driver's view was stale: trial 0 exists now
    assert len(study("ce").get_trials()) == 1
    held = tracker.claim(f"tpe-{digest(tpe.study_name('t', 'ce'))}")  # a driver asking right now
    with pytest.raises(TrackingError, match="another process has held study 'medauc-bench/t/ce'"):
        _ask(tracker, tracking_uri(), suite, fam, 1, wait_s=0.3)
    held.release()
    _ask(tracker, tracking_uri(), suite, fam, 1)
    assert len(study("ce").get_trials()) == 2


@needs_optuna
def test_max_cells_is_refused(suites):
    write(suites)
    with pytest.raises(ConfigError, match="--max-cells: a tpe search"):
        go(max_cells=2, executor=FakeExecutor())


@needs_optuna
def test_a_changed_space_is_one_line(suites):
    write(suites, trials=1)
    go(executor=FakeExecutor())
    write(suites, trials=1, space=SPACE.replace("1.0e-2]", "1.0e-1]"))
    with pytest.raises(ConfigError, match=r"search\.space\.ce: study 'medauc-bench/t/ce' holds trial 0 from another "
                                          r"search space .*optuna delete-study") as e:
        load_suite("t")
    assert "\n" not in str(e.value)


@needs_optuna
def test_mlflow_still_opens_the_store_after_optuna_wrote_to_it(suites):
    from mlflow.store.db.utils import _get_latest_schema_revision, _upgrade_db, _verify_schema

    write(suites, recipes="[ce]", trials=1, seeds="[0]", space=CE_SPACE)
    go(executor=FakeExecutor())
    engine = sa.create_engine(tracking_uri())
    with engine.connect() as c:
        assert c.execute(sa.text("select version_num from alembic_version")).scalar() == _get_latest_schema_revision()
    _verify_schema(engine)  # what MLflow checks when it opens a store
    _upgrade_db(engine)  # `mlflow db upgrade`: a no-op, and Optuna's tables survive it
    client = mlflow.MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("medauc-bench/t")
    assert len(client.search_runs([exp.experiment_id], "tags.bench_role = 'cell'")) == 1
    assert len(study("ce").get_trials()) == 1


@needs_optuna
def test_a_real_tiny_search_resumes(suites, synth_dir):
    """The ordinary run path (local executor, 1 epoch on a synthetic file): run twice, the second
    runs nothing and the study holds exactly its trials."""
    write(suites, recipes="[ce]", seeds="[0]", trials=2, space=CE_SPACE)
    first = go(checkpoints="needed")  # no model.pt: nothing starts from these cells
    assert first.failed == 0 and first.counts()["finished"] == 2, [r.line() for r in first.results]
    second = go(checkpoints="needed")
    assert not second.results and second.counts()["skipped"] == 2
    trials = study("ce").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.value for t in trials] == [pytest.approx(r.val_auc) for r in first.results]


@needs_optuna
def test_expand_search_of_tpe_keeps_the_sobol_naming(suites):
    doc = {"suite": "x", "grid": {"recipe": ["ce", "aucm"]},
           "search": {"trials": 12, "sampler": "tpe", "space": {"ce": {"lr": {"log_uniform": [1.0e-4, 1.0e-2]}}}}}
    out = expand_search(doc, Path("x.yaml"))
    assert out["grid"]["recipe"] == ["ce@t00", "aucm"]
    assert "search trial 0 of 12 (tpe, seed 0)" in out["recipes"]["ce@t00"]["description"]
