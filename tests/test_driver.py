"""Driver: skip logic, failure isolation, claims, stale runs, init_from, not-applicable cells."""
import json

import mlflow
import pytest

from bench.driver import run_suite
from bench.errors import ConfigError, TrackingError
from bench.tracking import Tracker, tracking_uri

SUITE = """
include: _base.yaml
suite: {name}
train: {{epochs: 1, batch_size: 16}}
grid: {{dataset: {datasets}, recipe: {objectives}, aug: [false], seed: [0], protocol: [official]}}
"""


def write(suites, name="t", datasets="[breastmnist]", objectives="[ce, aucm]", extra=""):
    return suites(name, SUITE.format(name=name, datasets=datasets, objectives=objectives) + extra)


def runs(experiment="medauc-bench/t"):
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.search_runs(experiment_names=[experiment], filter_string="tags.bench_role = 'cell'")


def test_second_invocation_skips_finished_cells(suites, synth_dir):
    write(suites)
    first = run_suite("t", progress=False, leaderboard=False)
    assert first.counts()["finished"] == 2 and first.failed == 0
    second = run_suite("t", progress=False, leaderboard=False)
    assert second.counts()["skipped"] == 2 and not second.results
    df = runs()
    assert (df.groupby("tags.bench_cell_id")["status"].apply(lambda s: (s == "FINISHED").sum()) == 1).all()
    # --rerun forces a new run per cell
    third = run_suite("t", rerun=True, progress=False, leaderboard=False)
    assert third.counts()["finished"] == 2


def test_parent_and_child_runs(suites, synth_dir):
    write(suites)
    run_suite("t", progress=False, leaderboard=False)
    mlflow.set_tracking_uri(tracking_uri())
    all_runs = mlflow.search_runs(experiment_names=["medauc-bench/t"])
    parent = all_runs[all_runs["tags.bench_role"] == "suite"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    children = all_runs[all_runs["tags.bench_role"] == "cell"]
    assert set(children["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    assert set(children["tags.bench_suite"]) == {"t"}
    row = children.iloc[0]
    for tag in ("bench_cell_id", "bench_group_id", "data_md5", "data_verified", "bench_version", "positive_label"):
        assert row[f"tags.{tag}"] not in (None, "")
    assert row["tags.data_verified"] == "false"  # synthetic files: unverified, and it says so
    for m in ("test_auc", "test_auprc", "test_f1", "test_acc", "test_acc_tuned", "test_f1_tuned", "val_auc",
              "best_epoch", "train_seconds", "train_samples_per_s"):
        assert m in {c.split(".", 1)[1] for c in children.columns if c.startswith("metrics.")}
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(row["run_id"])}
    assert {"config.json", "history.csv", "roc_test.png", "model.pt"} <= arts
    assert any(a.startswith("breastmnist_test_[AUC]") or a.startswith(row["params.dataset"] + "_test_[AUC]") for a in arts)


def test_failing_cell_does_not_sink_the_suite(suites, synth_dir):
    (synth_dir / "nodulemnist3d.npz").unlink()
    write(suites, datasets="[nodulemnist3d, breastmnist]", objectives="[ce]",
          extra="datasets: {nodulemnist3d: {model: resnet18_3d_tiny}}\n")
    import torchvision.datasets.utils as U

    def offline(*a, **k):
        raise OSError("offline")

    U_download = U.download_url
    U.download_url = offline
    try:
        s = run_suite("t", progress=False, leaderboard=False)
    finally:
        U.download_url = U_download
    c = s.counts()
    assert c["failed"] == 1 and c["finished"] == 1
    df = runs()
    failed = df[df["status"] == "FAILED"]
    assert "nodulemnist3d.npz not found" in failed["tags.bench_error"].iloc[0]
    assert not (df["status"] == "RUNNING").any()


def test_not_applicable_is_recorded_and_not_retried(suites, synth_dir):
    write(suites, datasets="[chestmnist]", objectives="[compauc]")
    s = run_suite("t", progress=False, leaderboard=False)
    assert s.counts()["not_applicable"] == 1 and s.failed == 0
    df = runs()
    assert df["tags.bench_status"].tolist() == ["not_applicable"] and df["status"].tolist() == ["FINISHED"]
    assert run_suite("t", progress=False, leaderboard=False).counts()["skipped"] == 1


def test_claimed_cell_is_left_to_its_owner(suites, synth_dir):
    write(suites, objectives="[ce]")
    from bench.config import load_suite
    from bench.driver import data_fingerprint

    cell = load_suite("t").cells(data_fingerprint(None))[0]
    other = Tracker("medauc-bench/other").claims.claim(cell.cell_id)  # another holder of the same claim store
    assert other is not None
    try:
        s = run_suite("t", progress=False, leaderboard=False)
    finally:
        other.release()
    assert s.counts()["claimed"] == 1 and s.counts()["finished"] == 0
    assert runs().empty


def test_stale_running_run_is_marked(suites, synth_dir):
    tracker = Tracker("medauc-bench/t")
    run = tracker.client.create_run(tracker.experiment_id, tags={"bench_role": "cell", "bench_lock": "dead.lock",
                                                                 "bench_cell_id": "x"})
    held = tracker.client.create_run(tracker.experiment_id, tags={"bench_role": "cell", "bench_lock": "alive.lock",
                                                                  "bench_cell_id": "y"})
    alive = tracker.claims.claim("alive.lock")  # tags written before claims existed name the lock file
    assert alive is not None
    try:
        assert tracker.mark_stale() == 1
    finally:
        alive.release()
    got = tracker.client.get_run(run.info.run_id)
    assert got.info.status == "KILLED" and got.data.tags["bench_status"] == "stale"
    assert tracker.client.get_run(held.info.run_id).info.status == "RUNNING"


def test_init_from_runs_the_source_first_and_tags_it(suites, synth_dir):
    write(suites, objectives="[aucm_ft]", extra="recipes: {aucm_ft: {objective: aucm, init_from: ce, params: {lr: 0.05}}}\n")
    s = run_suite("t", progress=False, leaderboard=False)
    assert s.failed == 0 and s.counts()["finished"] == 2
    df = runs()
    ce = df[df["params.recipe"] == "ce"]
    ft = df[df["params.recipe"] == "aucm_ft"]
    assert ft["tags.bench_init_run_id"].iloc[0] == ce["run_id"].iloc[0]
    # the source cell counts as finished next time
    assert run_suite("t", progress=False, leaderboard=False).counts()["skipped"] == 1


def test_nan_loss_fails_the_cell_with_epoch_and_reason(suites, synth_dir, monkeypatch):
    import torch

    import bench.techniques as TQ

    write(suites, objectives="[ce]")
    monkeypatch.setattr(TQ.F, "binary_cross_entropy_with_logits", lambda a, b, weight=None: (a * float("nan")).mean())
    s = run_suite("t", progress=False, leaderboard=False)
    assert s.failed == 1
    err = runs()["tags.bench_error"].iloc[0]
    assert "loss became nan at epoch 1, step 1" in err
    assert torch.isnan(torch.tensor(float("nan")))


def test_unwritable_artifact_location_fails_clearly(suites, synth_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    monkeypatch.setenv("BENCH_ARTIFACT_ROOT", str(blocker / "artifacts"))
    write(suites, objectives="[ce]")
    s = run_suite("t", progress=False, leaderboard=False)
    assert s.failed == 1
    df = runs()
    assert df["status"].tolist() == ["FAILED"]
    assert "cannot write artifacts" in df["tags.bench_error"].iloc[0]


def test_unreachable_tracking_server_fails_before_training(suites, synth_dir, monkeypatch):
    import socket

    with socket.socket() as s:  # a port that is closed: bind, read it, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    write(suites)
    import bench.train

    monkeypatch.setattr(bench.train, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(TrackingError, match=f"tracking server http://127.0.0.1:{port} is unreachable"):
        run_suite("t", progress=False, leaderboard=False)


def test_only_filters_and_typos(suites, synth_dir):
    write(suites)
    s = run_suite("t", only=("objective=ce",), progress=False, leaderboard=False)
    assert [r.run_name.split("-")[1] for r in s.results] == ["ce"]
    with pytest.raises(ConfigError, match="did you mean 'objective'"):
        run_suite("t", only=("objectiv=ce",), progress=False, leaderboard=False)
    with pytest.raises(ConfigError, match="matches no cell"):
        run_suite("t", only=("objective=cee",), progress=False, leaderboard=False)


def test_dry_run_lists_cells_and_status(suites, synth_dir):
    write(suites)
    run_suite("t", only=("objective=ce",), progress=False, leaderboard=False)
    text = run_suite("t", dry=True)
    assert "finished" in text and "to run" in text and "2 cells, 1 finished, 1 to run" in text


def test_dry_run_shows_each_cells_augmentation_by_name(suites, synth_dir):
    write(suites, extra="grids:\n  - {aug: [false]}\n  - {aug: [true], recipe: [ce]}\n")
    rows = [line.split() for line in run_suite("t", dry=True).splitlines() if "breastmnist" in line]
    assert sorted((r[2], r[4]) for r in rows) == [("aucm", "off"), ("ce", "off"), ("ce", "on")], rows


def test_failed_init_source_fails_the_dependent_cell(suites, synth_dir, monkeypatch):
    import bench.techniques as TQ

    write(suites, objectives="[aucm_ft]", extra="recipes: {aucm_ft: {objective: aucm, init_from: ce}}\n")
    monkeypatch.setattr(TQ.F, "binary_cross_entropy_with_logits", lambda a, b, weight=None: (a * float("nan")).mean())
    s = run_suite("t", progress=False, leaderboard=False)
    assert s.failed == 2  # the ce source diverged, and the fine-tuning cell says why it could not start
    df = runs()
    assert sorted(df["status"]) == ["FAILED", "FAILED"]
    ft = df[df["params.recipe"] == "aucm_ft"]
    assert "init_from cell" in ft["tags.bench_error"].iloc[0]


def test_fine_tuning_scores_its_source_as_epoch_0(suites, synth_dir):
    write(suites, objectives="[aucm_ft]",
          extra="recipes: {aucm_ft: {objective: aucm, init_from: ce, params: {lr: 0.05}, train: {epochs: 2}}}\n")
    assert run_suite("t", progress=False, leaderboard=False).failed == 0
    df = runs()
    ce = df[df["params.recipe"] == "ce"].iloc[0]
    ft = df[df["params.recipe"] == "aucm_ft"].iloc[0]
    hist = {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(ft["run_id"], "val_auc")}
    # epoch 0 is the CE checkpoint itself: the same validation AUC as the CE run's selected model
    assert hist[0] == pytest.approx(ce["metrics.val_auc"], abs=1e-9)
    assert ft["metrics.val_auc"] >= ce["metrics.val_auc"] - 1e-12  # selection can only keep or improve it
    assert ft["metrics.epochs_run"] == 2


def test_reuse_counts_identical_cells_of_another_suite(suites, synth_dir):
    from leaderboard.build import build_leaderboard
    from bench.config import load_suite

    write(suites, name="a", objectives="[ce]")
    assert run_suite("a", progress=False, leaderboard=False).counts()["finished"] == 1
    write(suites, name="b", objectives="[ce, aucm]", extra="reuse: [a]\n")
    s = run_suite("b", progress=False, leaderboard=False)
    assert s.counts()["skipped"] == 1 and s.counts()["finished"] == 1  # ce reused, aucm run
    md = build_leaderboard("b", out_dir=synth_dir.parent / "lb", charts=False, declared=load_suite("b"))
    text = md.read_text()
    assert "**2 runs**" in text and "| ce |" in text and "| aucm |" in text
    write(suites, name="c", objectives="[ce]", extra="reuse: [aa]\n")
    with pytest.raises(ConfigError, match="did you mean 'a'"):
        run_suite("c", progress=False, leaderboard=False)


def test_seed_ensemble_is_its_own_run_and_matches_its_members(suites, synth_dir, tmp_path):
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from bench import data as D
    from bench.config import load_suite
    from leaderboard.build import build_leaderboard

    suites("e", SUITE.format(name="e", datasets="[breastmnist]", objectives="[ce]").replace("seed: [0]", "seed: [0, 1]")
           + "ensembles: true\n")
    assert run_suite("e", progress=False, leaderboard=False).counts()["finished"] == 2
    mlflow.set_tracking_uri(tracking_uri())
    ens = mlflow.search_runs(experiment_names=["medauc-bench/e"], filter_string="tags.bench_role = 'ensemble'")
    assert len(ens) == 1 and ens["metrics.n_models"].iloc[0] == 2
    client = mlflow.MlflowClient()
    preds = []
    for rid in ens["tags.bench_members"].iloc[0].split(","):
        name = next(a.path for a in client.list_artifacts(rid) if a.path.startswith("breastmnist_test_"))
        preds.append(pd.read_csv(client.download_artifacts(rid, name, str(tmp_path)), header=None, index_col=0).to_numpy())
    y = D.load("breastmnist", allow_unverified=True).splits["test"].y.numpy()[:, 0]
    assert ens["metrics.test_auc"].iloc[0] == pytest.approx(roc_auc_score(y, np.mean(preds, axis=0)[:, 0]), abs=1e-12)
    from bench.evaluate import bootstrap_auc_ci

    lo, hi = bootstrap_auc_ci(y[:, None], np.mean(preds, axis=0))  # the interval of the averaged scores, recomputed
    assert (ens["metrics.test_auc_lo"].iloc[0], ens["metrics.test_auc_hi"].iloc[0]) == pytest.approx((lo, hi), abs=1e-12)
    assert lo <= ens["metrics.test_auc"].iloc[0] <= hi
    run_suite("e", progress=False, leaderboard=False)  # same members: no second ensemble run
    assert len(mlflow.search_runs(experiment_names=["medauc-bench/e"], filter_string="tags.bench_role = 'ensemble'")) == 1
    md = build_leaderboard("e", out_dir=tmp_path / "lb", charts=False, declared=load_suite("e")).read_text()
    assert "### Seed ensembles" in md and "2 (0,1)" in md
    assert "**2 runs**" in md  # the ensemble is not counted as a single-model run


def test_a_budget_run_scales_the_suite_and_tags_every_run_with_how(suites, synth_dir, monkeypatch):
    # a machine too slow for the declared suite: the floors win, and the parent and cells say so
    import bench.budget as B
    from bench import cli
    from bench.config import load_suite
    from bench.scaling import TAG

    path = suites("t", SUITE.format(name="t", datasets="[breastmnist]", objectives="[ce]").replace(
        "seed: [0]", "seed: [0, 1]").replace("epochs: 1,", "epochs: 3,") + "budget: {min_epochs: 1, min_seeds: 1}\n")
    assert path.is_file()
    monkeypatch.setattr(B, "measure_speed", lambda *a, **k: (0.01, 0.04))
    s = run_suite("t", progress=False, leaderboard=False, budget_minutes=1)
    assert s.failed == 0 and s.counts()["finished"] == 1  # seed 0 only, at the floor of 1 epoch
    df = runs()
    assert list(df["params.seed"]) == ["0"] and list(df["params.epochs"]) == ["1"]
    rec = json.loads(df[f"tags.{TAG}"].iloc[0])
    assert rec == {"minutes": 1, "scale": 0.05, "seeds": [0]}
    parent = mlflow.search_runs(experiment_names=["medauc-bench/t"], filter_string="tags.bench_role = 'suite'")
    assert list(parent[f"tags.{TAG}"]) == [df[f"tags.{TAG}"].iloc[0]]
    read = cli._as_last_run(load_suite("t"), "medauc-bench/t")  # what `bench leaderboard --suite t` reads
    assert [(c.seed, c.train.epochs) for c in read.cells()] == [(0, 1)]
