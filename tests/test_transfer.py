"""Runs travel as one file: `bench export-runs` / `bench import-runs` between two stores."""
import zipfile

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.errors import BenchError
from bench.tracking import IMPORTED_TAG, PARENT_TAG, export_runs, import_runs


def _store(tmp_path, name):
    uri = f"sqlite:///{tmp_path / name}.db"
    return uri, MlflowClient(uri)


def _source(tmp_path):
    uri, c = _store(tmp_path, "a")
    exp = c.create_experiment("medauc-bench/t", artifact_location=str(tmp_path / "a-art"))
    parent = c.create_run(exp, run_name="suite-t", tags={"bench_role": "suite"}).info.run_id
    ce = c.create_run(exp, run_name="ce", start_time=1000, tags={"bench_role": "cell", "bench_cell_id": "c1",
                                                                   PARENT_TAG: parent}).info.run_id
    ft = c.create_run(exp, run_name="ft", start_time=2000, tags={"bench_role": "cell", "bench_cell_id": "c2",
                                                                   PARENT_TAG: parent, "bench_init_run_id": ce}).info.run_id
    for rid, auc in ((ce, 0.8), (ft, 0.81)):
        c.log_batch(rid, params=[Param("recipe", "x")],
                    metrics=[Metric("val_auc", auc - 0.1 + 0.01 * e, 0, e) for e in range(3)] + [Metric("test_auc", auc, 0, 4)])
        (tmp_path / "pred.csv").write_text("0,0.5\n1,0.7\n")
        c.log_artifact(rid, str(tmp_path / "pred.csv"))
        (tmp_path / "model.pt").write_bytes(b"weights")
        c.log_artifact(rid, str(tmp_path / "model.pt"))
        c.set_terminated(rid, "FINISHED")
    c.set_terminated(parent, "FINISHED")
    return uri, ce, ft


def test_round_trip_keeps_metrics_tags_artifacts_and_links(tmp_path):
    src_uri, ce, ft = _source(tmp_path)
    out = tmp_path / "runs.zip"
    assert export_runs("medauc-bench/t", out, uri=src_uri) == 3
    assert not any(n.endswith("model.pt") for n in zipfile.ZipFile(out).namelist())  # checkpoints on request only
    dst_uri, d = _store(tmp_path, "b")
    assert import_runs(out, uri=dst_uri) == (3, 0)
    assert import_runs(out, uri=dst_uri) == (0, 3)  # idempotent
    exp = d.get_experiment_by_name("medauc-bench/t")
    runs = {r.data.tags[IMPORTED_TAG]: r for r in d.search_runs([exp.experiment_id])}
    new_ce, new_ft = runs[ce], runs[ft]
    assert new_ft.data.tags["bench_init_run_id"] == new_ce.info.run_id  # the source link follows the new ids
    suite_run = next(r for r in runs.values() if r.data.tags.get("bench_role") == "suite")
    assert new_ft.data.tags[PARENT_TAG] == new_ce.data.tags[PARENT_TAG] == suite_run.info.run_id
    assert [m.value for m in d.get_metric_history(new_ft.info.run_id, "val_auc")] == pytest.approx([0.71, 0.72, 0.73])
    assert new_ft.data.metrics["test_auc"] == 0.81 and new_ft.data.params["recipe"] == "x"
    assert new_ft.info.status == "FINISHED" and new_ft.info.run_name == "ft"
    assert [f.path for f in d.list_artifacts(new_ft.info.run_id)] == ["pred.csv"]


def test_checkpoints_travel_when_asked_and_bad_files_are_one_line_errors(tmp_path):
    src_uri, _, _ = _source(tmp_path)
    out = tmp_path / "runs.zip"
    export_runs("medauc-bench/t", out, with_checkpoints=True, uri=src_uri)
    assert sum(n.endswith("model.pt") for n in zipfile.ZipFile(out).namelist()) == 2
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    with pytest.raises(BenchError, match=r"bad\.zip: not a runs export .*bench export-runs"):
        import_runs(bad, uri=f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(BenchError, match="no experiment 'medauc-bench/none'"):
        export_runs("medauc-bench/none", tmp_path / "x.zip", uri=src_uri)


def test_cli_commands(tmp_path, monkeypatch):
    src_uri, _, _ = _source(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", src_uri)
    out = tmp_path / "t.zip"
    res = CliRunner().invoke(main, ["export-runs", "--suite", "t", "--out", str(out)])
    assert res.exit_code == 0 and "3 runs of experiment 'medauc-bench/t'" in res.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'd.db'}")
    res = CliRunner().invoke(main, ["import-runs", str(out)])
    assert res.exit_code == 0 and "imported 3 run(s), 0 already there" in res.output
