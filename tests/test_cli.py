"""User-facing errors: one line on stderr, exit code != 0, no traceback, nothing left RUNNING."""
import os
import subprocess
import sys

import mlflow
import pytest
from click.testing import CliRunner

from bench.cli import main
from tests.conftest import make_npz


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(res, *needles):
    assert res.exit_code != 0, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    errs = [line for line in lines if line.startswith("error: ")]
    assert len(errs) == 1, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in errs[0], errs[0]


def no_running_runs():
    from bench.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    exps = [e.name for e in mlflow.search_experiments()]
    if not exps:
        return True
    df = mlflow.search_runs(experiment_names=exps)
    return df.empty or not (df["status"] == "RUNNING").any()


def test_unknown_dataset():
    assert_one_line_error(invoke("cell", "--dataset", "breastmnst", "--objective", "ce"), "did you mean 'breastmnist'")


def test_unknown_objective():
    assert_one_line_error(invoke("cell", "--dataset", "breastmnist", "--objective", "acum"), "did you mean 'aucm'")


def test_unknown_model():
    assert_one_line_error(invoke("cell", "--dataset", "breastmnist", "--objective", "ce", "--model", "resnet81_28"),
                          "unknown model 'resnet81_28'")


def test_unknown_suite():
    assert_one_line_error(invoke("suite", "quik"), "unknown suite 'quik'", "did you mean 'quick'")


def test_md5_mismatch_via_cli(tmp_path):
    make_npz(tmp_path, "breastmnist")
    res = invoke("cell", "--dataset", "breastmnist", "--objective", "ce", "--epochs", "1", "--data-dir", str(tmp_path))
    assert_one_line_error(res, "does not match the official 750601b1", "--allow-unverified-data")
    assert no_running_runs()


def test_missing_data_via_cli(tmp_path, monkeypatch):
    import torchvision.datasets.utils as U

    monkeypatch.setattr(U, "download_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    res = invoke("cell", "--dataset", "nodulemnist3d", "--objective", "ce", "--model", "resnet18_3d_tiny",
                 "--data-dir", str(tmp_path / "empty"))
    assert_one_line_error(res, "nodulemnist3d.npz not found", "BENCH_DATA_DIR")
    assert no_running_runs()


def test_not_applicable_via_cli(synth_dir):
    res = invoke("cell", "--dataset", "chestmnist", "--objective", "compauc", "--epochs", "1")
    assert res.exit_code == 3 and "not_applicable" in res.output and "Traceback" not in res.output
    assert no_running_runs()


def test_cv5_needs_fold():
    assert_one_line_error(invoke("cell", "--dataset", "breastmnist", "--objective", "ce", "--protocol", "cv5"),
                          "--fold")


@pytest.mark.parametrize("args, needle", [
    (("cell", "--dataset", "breastmnist", "--objective", "ce", "--protocol", "official", "--fold", "2"),
     "--fold 2 contradicts --protocol official"),
    (("cell", "--dataset", "breastmnist", "--objective", "ce", "--aug", "--aug-value", "false"),
     "--aug/--no-aug and --aug-value both given"),
    (("suite", "smoke", "--dry-run", "--rerun"), "--dry-run and --rerun contradict"),
    (("leaderboard", "--suite", "smoke", "--from-csv", __file__, "--experiment", "x"), "--from-csv and --experiment"),
])
def test_contradictory_options_are_one_line_errors(args, needle):
    res = invoke(*args)
    assert_one_line_error(res, needle)
    assert no_running_runs()


def test_unreachable_tracking_via_cli(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert_one_line_error(invoke("suite", "smoke"), "unreachable")


def test_list_and_doctor(real_dir):
    res = invoke("list")
    assert res.exit_code == 0 and "compauc" in res.output and "resnet18_3d_s2" in res.output
    res = invoke("doctor", "--data-dir", str(real_dir))
    assert res.exit_code == 0 and "breastmnist" in res.output and "ready" in res.output


def test_console_script_error_is_one_line():
    """The real entry point, in a subprocess: what a user sees in a terminal."""
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "bench", "suite", "nosuch"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: unknown suite 'nosuch'")


def test_mlproject_parameters_are_quoted_and_validated():
    """MLproject values reach a shell only quoted; bench then rejects names not in its registries."""
    from mlflow.projects import _project_spec

    from tests.conftest import REPO

    project = _project_spec.load_project(str(REPO))
    cmd = project.get_entry_point("suite").compute_command({"name": "x; touch /tmp/pwned"}, None)
    assert cmd == "python -m bench suite 'x; touch /tmp/pwned' --executor local --address default"
    res = invoke("suite", "x; touch /tmp/pwned")
    assert_one_line_error(res, "unknown suite 'x; touch /tmp/pwned'")
    cell = project.get_entry_point("cell").compute_command({"dataset": "breastmnist", "objective": "ce"}, None)
    assert "--model default" in cell and "--fold none" in cell


def test_checkpoints_load_weights_only(tmp_path):
    import torch

    from bench.models import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"w": torch.zeros(1), "evil": Evil()}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    assert load_checkpoint(tmp_path / "good.pt")["w"].sum() == 2


def test_leaderboard_turns_off_mlflows_bar_per_downloaded_file(monkeypatch, tmp_path):
    """bench leaderboard fetches prediction files run by run: one MLflow bar each was 186 lines of
    log for study v3. The command turns them off unless the user set the variable."""
    seen = []
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "x")  # restored (unset) after the test
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    monkeypatch.setattr("leaderboard.build.build_leaderboard",
                        lambda *a, **k: seen.append(os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")) or tmp_path)
    assert invoke("leaderboard", "--suite", "gone_suite").exit_code == 0
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # a user's choice stands
    assert invoke("leaderboard", "--suite", "gone_suite").exit_code == 0
    assert seen == ["false", "true"]
