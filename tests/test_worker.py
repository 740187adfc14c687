"""bench.executors.worker: the checks a worker makes before training, and what it records when one fails."""
import dataclasses
import threading
import time

import pytest

import bench.runner
from bench.config import load_suite, source_cell
from bench.driver import data_fingerprint
from bench.provenance import code_digest
from bench.tracking import Tracker
from bench.executors.worker import CellTask, WorkerContext, data_root, run_task

SUITE = """
include: _base.yaml
suite: w
train: {epochs: 1, batch_size: 16}
finetune: {epochs: 1}
recipes: {aucm_ft: {objective: aucm, init_from: ce}}
grid: {dataset: [breastmnist], recipe: [ce, aucm_ft], aug: [false], seed: [0], protocol: [official]}
"""


@pytest.fixture
def setup(suites, synth_dir, monkeypatch):
    """(suite, ce cell, aucm_ft cell, tracker, context); training fails the test if it starts."""
    suites("w", SUITE)
    suite = load_suite("w")
    ce, ft = suite.cells(data_fingerprint(None))
    tracker = Tracker(suite.experiment)
    ctx = WorkerContext(suite="w", suite_path=str(suite.path), experiment=suite.experiment, tracking_uri=tracker.uri,
                        code_digest=code_digest(), source_poll_s=0.1)
    monkeypatch.setattr(bench.runner, "fit", lambda *a, **k: pytest.fail("training started"))
    return suite, ce, ft, tracker, ctx


def only_run(tracker):
    (run,) = tracker._search("tags.bench_role = 'cell'")
    return run


def test_a_worker_with_other_code_fails_the_cell_and_says_why(setup):
    suite, ce, _, tracker, ctx = setup
    res = run_task(CellTask(ce), dataclasses.replace(ctx, code_digest="0123456789ab"), tracker)
    assert res.status == "failed" and "runs other code" in res.error and "0123456789ab" in res.error
    run = only_run(tracker)
    assert run.info.status == "FAILED" and "install the driver's version" in run.data.tags["bench_error"]


def test_a_worker_with_other_data_fails_the_cell_and_says_why(setup):
    _, ce, _, tracker, ctx = setup
    planned_for_other_file = dataclasses.replace(ce, data_fingerprint="0" * 32)
    res = run_task(CellTask(planned_for_other_file), ctx, tracker)
    assert res.status == "failed"
    err = only_run(tracker).data.tags["bench_error"]
    assert "but the driver planned this cell for MD5 00000000000000000000000000000000" in err
    assert "nothing was trained on other data" in err


def test_remote_workers_use_their_own_data_folder_when_the_drivers_is_not_there(setup, tmp_path, synth_dir):
    _, ce, _, _, ctx = setup
    assert data_root(ce, dataclasses.replace(ctx, data_dir=str(tmp_path / "nope"))) == str(tmp_path / "nope")
    hint = dataclasses.replace(ctx, data_dir=str(tmp_path / "nope"), data_dir_is_hint=True)
    assert data_root(ce, hint) is None  # -> this worker's BENCH_DATA_DIR, else medmnist's download
    assert data_root(ce, dataclasses.replace(hint, data_dir=str(synth_dir))) == str(synth_dir)


def test_a_dependent_of_a_failed_source_fails_naming_it(setup):
    suite, ce, ft, tracker, ctx = setup
    task = CellTask(ft, source=source_cell(suite.doc, suite.path, ft), source_status="failed: loss became nan")
    res = run_task(task, ctx, tracker)
    assert res.status == "failed"
    err = only_run(tracker).data.tags["bench_error"]
    assert f"its init_from cell {ce.run_name} did not finish (failed: loss became nan)" in err


def test_a_dependent_waits_while_another_process_trains_its_source(setup):
    suite, ce, ft, tracker, ctx = setup
    other = Tracker(suite.experiment).claim(ce.cell_id)  # "another process" holds the source
    threading.Timer(1.0, other.release).start()
    t0 = time.monotonic()
    res = run_task(CellTask(ft, source=source_cell(suite.doc, suite.path, ft)), ctx, tracker)
    assert time.monotonic() - t0 >= 1.0
    assert res.status == "failed" and "no FINISHED run" in res.error  # that process did not finish it


def test_claimed_and_finished_cells_are_left_alone(setup):
    suite, ce, _, tracker, ctx = setup
    other = Tracker(suite.experiment).claim(ce.cell_id)
    assert run_task(CellTask(ce), ctx, tracker).status == "claimed"
    other.release()
    run = tracker.client.create_run(tracker.experiment_id, tags={"bench_role": "cell", "bench_cell_id": ce.cell_id,
                                                                 "bench_code_digest": code_digest()})
    tracker.client.set_terminated(run.info.run_id, "FINISHED")
    assert run_task(CellTask(ce), ctx, tracker).status == "skipped"
