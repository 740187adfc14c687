"""Shift scoring of real runs: during a suite (`shift: true`) and afterwards (`bench shift`)."""
import mlflow
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.driver import run_suite
from bench.corrupt import has_shift, not_applicable_reason
from bench.tracking import tracking_uri

pytestmark = pytest.mark.skipif(not has_shift("breastmnist"), reason=str(not_applicable_reason("breastmnist")))

SUITE = """
include: _base.yaml
suite: {name}
{extra}
train: {{epochs: 1, batch_size: 16}}
datasets: {{adrenalmnist3d: {{model: resnet18_3d_tiny, train: {{batch_size: 16}}}}}}
grid: {{dataset: [{datasets}], recipe: [ce], aug: [false], seed: [0, 1], protocol: [official]}}
"""


def cell_runs(exp):
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.search_runs(experiment_names=[exp], filter_string="tags.bench_role = 'cell'")


def test_suite_with_shift_scores_each_selected_model_once(synth_dir, suites):
    suites("sh", SUITE.format(name="sh", extra="shift: true", datasets="breastmnist"))
    assert run_suite("sh", progress=False, leaderboard=False).failed == 0
    df = cell_runs("medauc-bench/sh")
    sets = [c for c in df.columns if c.startswith("metrics.shift_") and c.endswith("_auc") and "_s" in c]
    assert len(sets) == 35  # 7 MedMNIST-C corruptions of BreastMNIST x 5 severities
    row = df.iloc[0]
    assert row["metrics.shift_auc_mean"] == pytest.approx(row[sets].astype(float).mean())
    assert row["metrics.shift_auc_drop"] == pytest.approx(row["metrics.test_auc"] - row["metrics.shift_auc_mean"])
    assert (df["tags.shift_status"] == "scored").all() and df["tags.shift_version_medmnistc"].notna().all()


def test_bench_shift_scores_finished_runs_once_and_skips_missing_checkpoints(synth_dir, suites, tmp_path):
    suites("post", SUITE.format(name="post", extra="", datasets="breastmnist, adrenalmnist3d"))
    assert run_suite("post", progress=False, leaderboard=False).failed == 0
    client = mlflow.MlflowClient(tracking_uri())
    df = cell_runs("medauc-bench/post")
    victim = df[(df["params.dataset"] == "breastmnist") & (df["params.seed"] == "1")]["run_id"].iloc[0]
    art = client.get_run(victim).info.artifact_uri.replace("file://", "")
    import os

    os.remove(os.path.join(art, "model.pt"))
    res = CliRunner().invoke(main, ["shift", "--suite", "post", "--no-leaderboard", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "scored 3, not applicable 0, skipped 1" in res.output and "no model.pt artifact" in res.output
    df = cell_runs("medauc-bench/post")
    scored = df[df["run_id"] != victim]
    assert scored["metrics.shift_auc_mean"].notna().all() and df[df["run_id"] == victim]["metrics.shift_auc_mean"].isna().all()
    again = CliRunner().invoke(main, ["shift", "--suite", "post", "--no-leaderboard", "--no-progress"])
    assert "scored 0" in again.output and "already scored 3" in again.output  # each set is scored once per run
