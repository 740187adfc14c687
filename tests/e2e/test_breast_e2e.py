"""End to end on the real BreastMNIST file (tiny epochs) and on synthetic files of the
official layout for the datasets this machine does not have; temporary MLflow stores."""
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from bench.driver import run_suite
from bench.tracking import tracking_uri

# on the worker that holds the session's real `smoke` run (tests/conftest.py real_smoke)
pytestmark = pytest.mark.xdist_group("real_smoke")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cell_runs(exp):
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.search_runs(experiment_names=[exp], filter_string="tags.bench_role = 'cell'")
    except Exception:
        return None


def test_the_real_smoke_group_stays_on_one_worker(request):
    """`--dist loadgroup` must keep this module and the UI tests on one worker, or each worker
    trains its own `smoke` run and starts its own mlflow ui (~90 s each on 2 cores). pytest 9.2
    broke that silently (pytest-xdist#1386: the group suffix no longer reaches the node id)."""
    if not getattr(request.config.option, "loadgroup", False):  # set on xdist workers under --dist loadgroup
        pytest.skip("not under pytest-xdist --dist loadgroup")
    assert request.node.nodeid.endswith("@real_smoke"), (
        f"{request.node.nodeid}: xdist ignored the xdist_group mark; keep pytest at the version pyproject pins")


def test_smoke_suite_on_real_breast(real_smoke, monkeypatch, tmp_path):
    """The session's real `smoke` run (tests/conftest.py): verified data, the clinically positive
    class, test metrics, and a leaderboard built from the store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", real_smoke.uri)
    assert {r.run_name for r in real_smoke.summary.results} == {"breastmnist-ce-noaug-s0-official",
                                                               "breastmnist-aucm-noaug-s0-official"}
    df = cell_runs("medauc-bench/smoke")
    assert len(df) == 2 and (df["status"] == "FINISHED").all()
    assert (df["tags.data_verified"] == "true").all() and (df["tags.positive_label"] == "0").all()
    assert df["metrics.test_auc"].between(0, 1).all() and (df["params.epochs"] == "2").all()
    assert df["tags.path"].str.startswith("fast: ").all()  # the execution path is recorded (bench.device)
    from leaderboard.build import build_leaderboard

    md = build_leaderboard("smoke", out_dir=tmp_path / "lb", charts=False).read_text()
    assert "## breastmnist" in md and "ResNet-18 (28)" in md


def test_same_cell_twice_gives_the_same_val_auc(real_smoke, monkeypatch, tmp_path):
    """Rerunning a finished real cell (a copy of the session's store) reproduces its numbers."""
    from tests.conftest import copy_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", copy_store(real_smoke, tmp_path / "store"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(real_smoke.data_dir))
    s = run_suite("smoke", only=("objective=aucm",), rerun=True, progress=False, leaderboard=False)
    assert s.counts()["finished"] == 1, [r.line() for r in s.results]
    df = cell_runs("medauc-bench/smoke")
    aucm = df[df["params.recipe"] == "aucm"]
    assert len(aucm) == 2 and aucm["metrics.val_auc"].nunique() == 1 and aucm["metrics.test_auc"].nunique() == 1


def test_every_loss_family_runs_end_to_end_with_augmentation(synth_dir, suites):
    """The index-based and compositional losses through the whole driver, augmentation on (the
    real-data smoke run above covers CE and AUCM on the real file)."""
    suites("losses", """
include: _base.yaml
suite: losses
train: {epochs: 1, batch_size: 16}
grid: {dataset: [breastmnist], recipe: [ap, pauc, compauc], aug: [true], seed: [0], protocol: [official]}
""")
    s = run_suite("losses", progress=False, leaderboard=False)
    assert s.failed == 0 and s.counts()["finished"] == 3, [r.line() for r in s.results]
    assert cell_runs("medauc-bench/losses")["metrics.test_auc"].between(0, 1).all()


def _suite_cmd(name):
    return [sys.executable, "-m", "bench", "suite", name, "--no-leaderboard", "--no-progress"]


def test_kill_9_then_resume(synth_dir, suites):
    suites("kill", """
include: _base.yaml
suite: kill
train: {epochs: 3, batch_size: 8}
grid: {dataset: [breastmnist], recipe: [ce, aucm, ap], aug: [false], seed: [0], protocol: [official]}
""")
    from bench.tracking import Tracker

    Tracker("medauc-bench/kill")  # the store exists before two processes open it (concurrent migrations break SQLite)
    log = synth_dir.parent / "kill.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_suite_cmd("kill"), cwd=REPO, env=dict(os.environ), start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until one cell finished and the next is running
        df = cell_runs("medauc-bench/kill")
        if df is not None and len(df) >= 2 and (df["status"] == "RUNNING").any():
            break
        if proc.poll() is not None:
            pytest.fail(f"suite ended ({proc.returncode}) before its second cell:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"suite did not reach its second cell:\n{log.read_text()[-2000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    df = cell_runs("medauc-bench/kill")
    assert (df["status"] == "RUNNING").sum() == 1  # left behind by the dead process
    out = subprocess.run(_suite_cmd("kill"), cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    df = cell_runs("medauc-bench/kill")
    finished = df[df["status"] == "FINISHED"]
    assert finished["tags.bench_cell_id"].nunique() == 3 and len(finished) == 3  # exactly one per cell
    stale = df[df["status"] == "KILLED"]
    assert len(stale) == 1 and stale["tags.bench_status"].iloc[0] == "stale"
    assert not (df["status"] == "RUNNING").any()


def test_two_invocations_at_once(synth_dir, suites):
    suites("twin", """
include: _base.yaml
suite: twin
train: {epochs: 1, batch_size: 8}
grid: {dataset: [breastmnist], recipe: [ce, aucm], aug: [false, true], seed: [0], protocol: [official]}
""")
    # create the store first so that the two processes do not both run its migrations
    from bench.tracking import Tracker

    Tracker("medauc-bench/twin")
    procs = [subprocess.Popen(_suite_cmd("twin"), cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    why = [line for o in outs for line in o.splitlines() if "FAILED" in line or "rror" in line or "failed" in line]
    assert all(p.returncode == 0 for p in procs), why or outs
    df = cell_runs("medauc-bench/twin")
    counts = df[df["status"] == "FINISHED"].groupby("tags.bench_cell_id").size()
    assert len(counts) == 4 and (counts == 1).all()
    assert not (df["status"] == "RUNNING").any()


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ce", "aucm"])
def test_real_breast_learns(real_dir, monkeypatch, suites, objective):
    """20 epochs on the real file must clearly beat chance on the test split (minutes; `make test-all`)."""
    monkeypatch.setenv("BENCH_DATA_DIR", str(real_dir))
    suites("learn", f"""
include: _base.yaml
suite: learn
train: {{epochs: 20}}
grid: {{dataset: [breastmnist], recipe: [{objective}], aug: [false], seed: [0], protocol: [official]}}
""")
    s = run_suite("learn", progress=False, leaderboard=False)
    assert s.failed == 0
    assert s.results[0].test_auc > 0.8 and s.results[0].val_auc > 0.85


def test_sigterm_marks_the_running_cell_killed(synth_dir, suites):
    suites("term", """
include: _base.yaml
suite: term
train: {epochs: 50, batch_size: 8}
grid: {dataset: [breastmnist], recipe: [ce], aug: [false], seed: [0], protocol: [official]}
""")
    from bench.tracking import Tracker

    # the store exists before this process polls it while the driver opens it (two first
    # opens of one SQLite file both migrate it; CI once lost that race and the driver exited 2)
    Tracker("medauc-bench/term")
    log = synth_dir.parent / "term.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_suite_cmd("term"), cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                                stderr=out, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        df = cell_runs("medauc-bench/term")
        if df is not None and len(df) == 1:
            break
        if proc.poll() is not None:
            pytest.fail(f"suite ended ({proc.returncode}) before its cell started:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the cell did not start:\n{log.read_text()[-2000:]}")
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = log.read_text()
    assert proc.returncode == 130 and "run the same command again to resume" in err, err[-2000:]
    mlflow.set_tracking_uri(tracking_uri())
    df = mlflow.search_runs(experiment_names=["medauc-bench/term"])
    assert set(df["status"]) == {"KILLED"} and set(df["tags.bench_status"]) == {"interrupted"}


@pytest.mark.parametrize("flag, size, model", [("breastmnist", 64, "resnet18"), ("vesselmnist3d", 64, "resnet18_3d_tiny")])
def test_medmnist_plus_size_runs_a_cell_on_a_synthetic_file(tmp_path, monkeypatch, suites, flag, size, model):
    """`size: 64` reads <flag>_64.npz (official layout, synthetic content here), builds the
    large-input model and scores; the leaderboard shows "—" where the paper has no such row."""
    from tests.conftest import make_npz
    from leaderboard.build import build_leaderboard
    from bench.config import load_suite

    make_npz(tmp_path / "data", flag, size=size, n=(12, 6, 6))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BENCH_ALLOW_UNVERIFIED_DATA", "1")
    suites("plus", f"""
include: _base.yaml
suite: plus
size: {size}
models: {{3d: resnet18_3d_tiny}}
train: {{epochs: 1, batch_size: 16}}
grid: {{dataset: [{flag}], recipe: [ce], aug: [true], seed: [0], protocol: [official]}}
""")
    s = run_suite("plus", progress=False, leaderboard=False)
    assert s.failed == 0 and s.results[0].run_name == f"{flag}-{size}px-ce-aug-s0-official", [r.line() for r in s.results]
    df = cell_runs("medauc-bench/plus")
    assert df["params.size"].tolist() == [str(size)] and df["params.model"].tolist() == [model]
    md = build_leaderboard("plus", out_dir=tmp_path / "lb", charts=False, declared=load_suite("plus")).read_text()
    assert f"## {flag} ({size} px)" in md and "| — | — | — |" in md
