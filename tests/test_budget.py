"""--budget-minutes (bench.budget): epochs scaled to this machine's measured speed, never below the floors."""
from __future__ import annotations

import dataclasses

import pytest
import yaml
from click.testing import CliRunner

from bench import budget as B
from bench import scaling as S
from bench.cli import main
from bench.config import expand, load_suite
from bench.errors import ConfigError
from bench.executors.estimate import estimate_seconds


def _quick():
    return load_suite("quick")


def _expand(suite):
    return lambda doc: expand(doc, suite.path, lambda f, size=None: "")


def _epochs(cells):
    return {(c.recipe, c.train.epochs) for c in cells}


def _seconds(suite, doc, speeds):
    return sum(estimate_seconds(c, speeds) for c in _expand(suite)(doc))


def test_a_fast_machine_runs_the_suite_as_declared():
    suite = _quick()
    choice = B.choose(suite, 15, {"resnet18_28": (1e5, 1e5)}, _expand(suite))
    assert choice.scale == 1.0 and choice.epochs == {"train": 30, "finetune": 10} and choice.doc == suite.doc
    assert choice.seeds == [0, 1, 2] and "it fits" in choice.message


def test_a_slightly_slow_machine_gets_fewer_epochs_in_proportion_and_keeps_its_seeds():
    suite = _quick()
    limit = 15 * 60 * B.SAFETY
    # a speed at which the declared suite needs ~20% more than the budget
    speeds = {"resnet18_28": (1.0, 4.0)}
    base = _seconds(suite, suite.doc, speeds)
    v = base / (limit * 1.2)  # seconds scale as 1/speed (start-up aside)
    speeds = {"resnet18_28": (v, 4 * v)}
    choice = B.choose(suite, 15, speeds, _expand(suite))
    fl = S.floors(suite)
    assert choice.seeds == [0, 1, 2] and choice.scale < 1.0
    assert choice.seconds_chosen <= limit < choice.seconds_declared
    assert fl.epochs <= choice.epochs["train"] <= 30 and fl.finetune_epochs <= choice.epochs["finetune"] < 10
    # the largest scale that fits: one step up would not
    bigger = S.scaled(suite.doc, round(choice.scale + 0.05, 2), fl.epochs, fl.finetune_epochs)
    assert _seconds(suite, bigger, speeds) > limit
    assert "runs train" in choice.message and "seeds" not in choice.message.split("runs")[1]


def test_an_avx2_machine_keeps_the_epoch_floors_and_drops_seeds_first():
    suite = _quick()
    speeds = {"resnet18_28": (61.0, 214.0)}  # the probe in fp32, AVX2 emulated (README, "Speed")
    choice = B.choose(suite, 15, speeds, _expand(suite))
    fl = S.floors(suite)
    assert choice.seconds_chosen <= 15 * 60 * B.SAFETY
    assert len(choice.seeds) < 3 and choice.seeds == [0, 1, 2][: len(choice.seeds)]
    assert choice.epochs["train"] >= fl.epochs and choice.epochs["finetune"] >= fl.finetune_epochs
    # with one seed more, even the floors would not fit
    more = S.scaled(suite.doc, 0.05, fl.epochs, fl.finetune_epochs, len(choice.seeds) + 1)
    assert _seconds(suite, more, speeds) > 15 * 60 * B.SAFETY
    assert f"seeds {choice.seeds} of [0, 1, 2]" in choice.message
    cells = _expand(suite)(choice.doc)
    assert {c.seed for c in cells} == set(choice.seeds) and len(cells) == 5 * len(choice.seeds)


def test_the_floors_come_before_the_budget_and_say_so():
    suite = _quick()
    choice = B.choose(suite, 1, {"resnet18_28": (5.0, 20.0)}, _expand(suite))
    fl = S.floors(suite)
    assert choice.epochs == {"train": fl.epochs, "finetune": fl.finetune_epochs}
    assert len(choice.seeds) == fl.seeds
    assert "still over the budget" in choice.message


def test_scaled_cells_are_other_cells_and_keep_their_sources():
    suite = _quick()
    doc = S.scaled(suite.doc, 0.8, 12, 4)  # floors below the scaled epochs: both stages scale
    cells = _expand(suite)(doc)
    assert {e for _, e in _epochs(c for c in cells if c.init_from is None)} == {24}
    assert {e for _, e in _epochs(c for c in cells if c.init_from)} == {8}
    declared = {c.cell_id for c in suite.cells()}
    assert declared.isdisjoint(c.cell_id for c in cells)
    by_id = {c.cell_id: c for c in cells}
    for c in cells:  # a fine-tune starts from the *scaled* CE cell
        if c.init_from:
            assert c.source_id in by_id and by_id[c.source_id].train.epochs == 24


def test_scaling_never_raises_epochs_and_reaches_per_dataset_budgets():
    doc = {"train": {"epochs": 10}, "finetune": {"epochs": 2},
           "datasets": {"breastmnist": {"train": {"epochs": 40}, "finetune": {"epochs": 8}}}}
    out = S.scaled(doc, 0.5, 12, 3)
    assert out["train"]["epochs"] == 10  # the floor is above it: the declared value stays
    assert out["finetune"]["epochs"] == 2
    assert out["datasets"]["breastmnist"]["train"]["epochs"] == 20
    assert out["datasets"]["breastmnist"]["finetune"]["epochs"] == 4
    assert doc["datasets"]["breastmnist"]["train"]["epochs"] == 40  # the input is not changed


def test_a_suite_without_floors_is_refused_in_one_line():
    suite = dataclasses.replace(_quick(), doc={k: v for k, v in _quick().doc.items() if k != "budget"})
    with pytest.raises(ConfigError, match=r"--budget-minutes needs the suite to declare its floors"):
        S.floors(suite)
    with pytest.raises(ConfigError, match=r"must be > 0"):
        B.choose(_quick(), 0, {}, _expand(_quick()))


@pytest.mark.parametrize("bad", [{"min_epochs": 0}, {"min_epochs": 12, "min_finetune_epochs": "x"},
                                 {"min_epochs": 12, "min_seeds": 0}, {"min_epochs": True}])
def test_bad_floors_are_refused(bad):
    suite = dataclasses.replace(_quick(), doc={**_quick().doc, "budget": bad})
    with pytest.raises(ConfigError, match="budget.min_epochs"):
        S.floors(suite)


def test_an_unknown_budget_key_is_a_schema_error(tmp_path):
    from bench.config import validate

    doc = {**_quick().doc, "budget": {"min_epoch": 3}}
    with pytest.raises(ConfigError, match="min_epoch"):
        validate(doc, tmp_path / "x.yaml")


def test_measure_speed_times_real_steps_on_the_cells_path():
    train, score = B.measure_speed("resnet18_28", 1, "auto", "fast", seconds=0.4)
    assert 0 < train < score  # a scoring pass is cheaper than a training step


def test_the_cli_refuses_a_non_positive_budget():
    res = CliRunner().invoke(main, ["suite", "quick", "--budget-minutes", "0", "--dry-run"])
    assert res.exit_code == 2 and "--budget-minutes" in res.output


def test_quick_declares_its_floors_with_their_reason():
    text = _quick().path.read_text()
    assert "budget:" in text and yaml.safe_load(text)["budget"]["min_epochs"] >= 1


def test_the_parent_runs_tag_rebuilds_the_same_cells():
    suite = _quick()
    choice = B.choose(suite, 15, {"resnet18_28": (61.0, 214.0)}, _expand(suite))
    again = S.reapply(suite, S.tag_value(choice, 15))
    assert {c.cell_id for c in again.cells()} == {c.cell_id for c in _expand(suite)(choice.doc)}
    full = B.choose(suite, 15, {"resnet18_28": (1e5, 1e5)}, _expand(suite))
    assert S.reapply(suite, S.tag_value(full, 15)) is suite
    with pytest.raises(ConfigError, match="unreadable bench_budget tag"):
        S.reapply(suite, "{not json")


def test_the_leaderboard_reads_the_cells_a_budget_run_ran(isolated, monkeypatch):
    # `make run` on a slow CPU ran a scaled quick; `bench leaderboard --suite quick` afterwards must read
    # those cells (its newest parent run says how it was scaled), not the declared ones
    from mlflow import MlflowClient

    from bench import cli
    from bench.tracking import last_parent_tags, tracking_uri

    suite = _quick()
    assert last_parent_tags(suite.experiment, "quick") == {}  # no experiment yet
    client = MlflowClient(tracking_uri())  # the store bench reads (mlflow's global URI may be another test's)
    exp = client.create_experiment(suite.experiment)
    value = S.tag_value(B.choose(suite, 15, {"resnet18_28": (61.0, 214.0)}, _expand(suite)), 15)
    client.create_run(exp, start_time=1, tags={"bench_role": "suite", "bench_suite": "quick"})
    client.create_run(exp, start_time=2, tags={"bench_role": "suite", "bench_suite": "quick", S.TAG: value})
    client.create_run(exp, start_time=3, tags={"bench_role": "suite", "bench_suite": "other"})
    assert last_parent_tags(suite.experiment, "quick")[S.TAG] == value
    read = cli._as_last_run(suite, suite.experiment)
    assert {c.cell_id for c in read.cells()} == {c.cell_id for c in S.reapply(suite, value).cells()}
    assert len(read.cells()) < len(suite.cells())
    client.create_run(exp, start_time=4, tags={"bench_role": "suite", "bench_suite": "quick"})  # then a full run
    assert cli._as_last_run(suite, suite.experiment) is suite


def test_a_runs_csv_of_a_budget_run_rebuilds_with_the_scaled_suite(tmp_path):
    # the committed quick runs, as if make run had kept seed 0 only: the rebuilt power line is of 1 pair
    import pandas as pd

    from leaderboard.build import build_leaderboard

    suite = _quick()
    runs = pd.read_csv("leaderboard/quick-runs.csv")
    runs = runs[runs["params.seed"] == 0].copy()
    runs["tags.bench_budget"] = '{"minutes": 15, "scale": 1.0, "seeds": [0]}'
    csv = tmp_path / "quick-runs.csv"
    runs.to_csv(csv, index=False)
    out = build_leaderboard("quick", out_dir=tmp_path / "lb", from_csv=csv, declared=suite, charts=False,
                            generated_at="t")
    text = out.read_text()
    assert "n = 1 pairs" in text and "not defined with n = 1" in text and "nan AUC" not in text
