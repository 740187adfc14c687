"""Which code produced a run: the code digest and how resume uses it."""
import sys

import mlflow

from bench import provenance
from bench.driver import run_suite
from bench.tracking import tracking_uri

SUITE = """
include: _base.yaml
suite: prov
train: {epochs: 1, batch_size: 16}
grid: {dataset: [breastmnist], recipe: [ce], aug: [false], seed: [0], protocol: [official]}
"""


def test_digest_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    mod = tmp_path / "digest_probe.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    variants = {
        "base": 'def f(x):\n    return x + 1\n',
        "comment": '# a comment\ndef f(x):\n    """A docstring."""\n    return x + 1  # why\n',
        "code": 'def f(x):\n    return x + 2\n',
    }
    digests = {}
    for name, text in variants.items():
        mod.write_text(text)
        sys.modules.pop("digest_probe", None)
        monkeypatch.setattr(provenance, "_extra_modules", ["digest_probe"])
        provenance.code_digest.cache_clear()
        digests[name] = provenance.code_digest()
    provenance.code_digest.cache_clear()
    assert digests["base"] == digests["comment"] != digests["code"]


def test_every_run_records_its_code_and_other_code_does_not_count_as_done(synth_dir, suites, monkeypatch):
    suites("prov", SUITE)
    assert run_suite("prov", progress=False, leaderboard=False).counts()["finished"] == 1
    mlflow.set_tracking_uri(tracking_uri())
    df = mlflow.search_runs(experiment_names=["medauc-bench/prov"], filter_string="tags.bench_role = 'cell'")
    assert df["tags.bench_code_digest"].tolist() == [provenance.code_digest()]
    assert df["tags.bench_git_dirty"].isin(["true", "false"]).all()
    assert "other code" not in run_suite("prov", dry=True)
    # the same cell id under other code is not "done": resume runs it again, and says so
    monkeypatch.setattr("bench.tracking.code_digest", lambda: "0ther0c0de000")
    assert "1 of the selected cells have FINISHED runs of other code only" in run_suite("prov", dry=True)
    again = run_suite("prov", progress=False, leaderboard=False)
    assert again.counts()["finished"] == 1 and again.counts()["skipped"] == 0
