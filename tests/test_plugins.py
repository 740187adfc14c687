"""Extension without forking: an outside objective in its own file, loaded by a suite."""
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from bench import catalog, provenance
from bench.cli import main
from bench.config import load_suite
from bench.errors import ConfigError
from bench.objectives import OBJECTIVES

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "focal_loss" / "suite.yaml"


def test_example_plugin_registers_its_objective_and_enters_the_digest():
    before = provenance.code_digest()
    suite = load_suite(str(EXAMPLE))
    assert "focal" in OBJECTIVES and {c.recipe for c in suite.cells()} == {"ce", "focal"}
    assert "bench_plugin_focal" in provenance._extra_modules and provenance.code_digest() != before


def test_example_plugin_suite_runs_against_ce(synth_dir, monkeypatch, tmp_path):
    """The example, as shipped, on synthetic data for one epoch: both objectives finish and the
    leaderboard pairs the plugin's objective with CE."""
    from bench.driver import run_suite
    from bench.tracking import tracking_uri
    from leaderboard.build import build_leaderboard

    suite = tmp_path / "focal" / "suite.yaml"
    suite.parent.mkdir()
    suite.write_text(EXAMPLE.read_text().replace("train: {epochs: 20}", "train: {epochs: 1, batch_size: 16}")
                     .replace("seed: [0, 1, 2]", "seed: [0, 1]"))
    (suite.parent / "focal.py").write_text((EXAMPLE.parent / "focal.py").read_text())
    s = run_suite(str(suite), progress=False, leaderboard=False)
    assert s.failed == 0 and s.counts()["finished"] == 4
    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(experiment_names=["medauc-bench/focal_example"], filter_string="tags.bench_role = 'cell'")
    assert set(runs["params.recipe"]) == {"ce", "focal"} and set(runs["params.focal.gamma"].dropna()) == {"2.0"}
    md = build_leaderboard("focal_example", out_dir=tmp_path / "lb", charts=False, declared=load_suite(str(suite)))
    assert "| focal |" in md.read_text() and "### Against `ce`" in md.read_text()
    # what the README tells a user to type: the leaderboard of an outside suite, by its file
    res = CliRunner().invoke(main, ["leaderboard", "--suite", str(suite), "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "| focal |" in (tmp_path / "cli" / "focal_example.md").read_text()


@pytest.mark.parametrize("plugins, needle", [
    ("[no_such_package.losses]", "plugin 'no_such_package.losses' cannot be imported"),
    ("[missing.py]", "plugin file missing.py not found"),
    ("[broken.py]", "plugin 'broken.py' failed while loading (ZeroDivisionError"),
])
def test_bad_plugins_are_one_line_errors(suites, tmp_path, plugins, needle):
    (tmp_path / "suites" / "broken.py").write_text("1 / 0\n")
    suites("p", f"include: _base.yaml\nsuite: p\nplugins: {plugins}\n")
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load_suite("p")


def test_entry_points_are_loaded(monkeypatch, tmp_path):
    import importlib.metadata as md
    import sys

    import bench.plugins as P

    # leave no trace in the process: the module list of the code digest and the plugin cache
    monkeypatch.setattr(provenance, "_extra_modules", list(provenance._extra_modules))
    monkeypatch.setattr(P, "_loaded", dict(P._loaded))
    (tmp_path / "ep_models.py").write_text(
        "from bench.models import register_model, ResNet\n"
        "register_model('tiny_ep', 2, False, 'entry-point test model')(lambda i, o: ResNet(2, i, o, width=8))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = md.EntryPoint("tiny", "ep_models", "medauc_bench.models")
    monkeypatch.setattr(P, "entry_points", lambda group: [ep] if group == "medauc_bench.models" else [])
    assert P.load_entry_points() == ["ep_models"]
    from bench.models import MODELS

    assert "tiny_ep" in MODELS
    sys.modules.pop("ep_models", None)
    MODELS._items.pop("tiny_ep"), MODELS.meta.pop("tiny_ep"), catalog.remove_model("tiny_ep")
    provenance.code_digest.cache_clear()
