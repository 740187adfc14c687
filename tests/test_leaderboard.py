"""Leaderboard: golden file, recomputation from MLflow, paired test, CSV regeneration."""
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from bench import catalog
from leaderboard import aggregate as A
from leaderboard import collect, render
from leaderboard.build import build_leaderboard

GOLDEN = Path(__file__).parent / "fixtures" / "golden_leaderboard.md"
STAMP = "2026-01-01 00:00 UTC"


def synthetic_export() -> pd.DataFrame:
    """A runs table in the export format: 2 datasets x (ce, aucm) x aug off/on x 3 seeds."""
    rows, t = [], 0
    for dataset, base, verified in (("breastmnist", 0.88, True), ("vesselmnist3d", 0.85, False)):
        model = "resnet18_28" if dataset == "breastmnist" else "resnet18_3d_s2"
        for recipe, shift in (("ce", 0.0), ("aucm", 0.012)):
            for aug in (False, True):
                for seed in range(3):
                    t += 1
                    auc = base + shift + 0.01 * seed + (0.005 if aug else 0.0)
                    rows.append({
                        "run_id": f"r{t:03d}", "status": "FINISHED", "start_time": f"2026-01-01T00:{t:02d}:00.000000Z",
                        "params.dataset": dataset, "params.recipe": recipe, "params.objective": recipe,
                        "params.model": model, "params.aug": str(aug), "params.seed": str(seed),
                        "params.protocol": "official", "params.fold": "", "params.epochs": "100",
                        "tags.bench_cell_id": f"{dataset}-{recipe}-{aug}-{seed}", "tags.bench_group_id": f"{dataset}-{recipe}-{aug}",
                        "tags.bench_suite": "golden", "tags.bench_status": "finished", "tags.bench_git_commit": "abc1234",
                        "tags.bench_code_digest": "c0de00000000",
                        "tags.data_md5": "0" * 32, "tags.data_verified": str(verified).lower(),
                        "metrics.test_auc": auc, "metrics.test_auprc": auc - 0.2, "metrics.test_f1": auc - 0.3,
                        "metrics.test_acc": auc - 0.05, "metrics.test_acc_tuned": auc - 0.04,
                        "metrics.test_f1_tuned": auc - 0.25, "metrics.val_auc": auc + 0.01,
                    })
    # a stale duplicate of one cell (older): must be ignored in favour of the newest run
    dup = dict(rows[0], run_id="r000", start_time="2025-12-31T00:00:00.000000Z", **{"metrics.test_auc": 0.1})
    return collect.export_frame(pd.DataFrame(rows + [dup]))


def test_newest_run_per_cell_wins():
    runs = collect.tidy(synthetic_export())
    assert len(runs) == 24 and "r000" not in set(runs["run_id"])


def test_golden_markdown():
    runs = collect.tidy(collect.roundtrip(synthetic_export()))
    md = render.markdown("golden", runs, A.aggregate(runs), A.paired(runs, dam=("aucm",)), STAMP)
    if os.environ.get("BENCH_UPDATE_GOLDEN") == "1":  # regenerate deliberately, then review the diff
        GOLDEN.write_text(md)
    assert md == GOLDEN.read_text()


def test_aggregate_values():
    runs = collect.tidy(synthetic_export())
    agg = A.aggregate(runs)
    row = agg[(agg.dataset == "breastmnist") & (agg.recipe == "aucm") & (agg.aug == "off")].iloc[0]
    vals = np.array([0.892, 0.902, 0.912])
    assert row["n"] == 3 and row["test_auc_mean"] == pytest.approx(vals.mean())
    assert row["test_auc_std"] == pytest.approx(vals.std(ddof=1))
    assert row["test_auc_ci95"] == pytest.approx(4.302652729911275 * vals.std(ddof=1) / np.sqrt(3))
    assert agg[agg.dataset == "vesselmnist3d"]["unverified"].all()


def test_incomplete_group_is_marked():
    runs = collect.tidy(synthetic_export())
    runs = runs.drop(runs[(runs.recipe == "aucm") & (runs.seed == 2) & (runs.aug == "off") & (runs.dataset == "breastmnist")].index)
    agg = A.aggregate(runs)
    inc = agg[agg["incomplete"]]
    assert len(inc) == 1 and inc.iloc[0]["n"] == 2 and inc.iloc[0]["expected_n"] == 3
    table = render.dataset_table(agg, catalog.load_reference(), "breastmnist", 28, "official")
    assert "2 of 3 (incomplete)" in table


def test_paired_test_known_answer():
    d = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    base = pd.DataFrame({"dataset": "b", "recipe": "ce", "model": "m", "aug": False, "protocol": "official",
                         "seed": range(6), "fold": -1, "test_auc": 0.8})
    dam = base.assign(recipe="aucm", test_auc=0.8 + d)
    base = base.assign(size=28, objective="ce")
    dam = dam.assign(size=28, objective="aucm")
    p = A.paired(pd.concat([base, dam]))
    row = p.iloc[0]
    assert row["n_pairs"] == 6 and row["wins"] == 6 and row["mean_diff"] == pytest.approx(0.035)
    # exact two-sided Wilcoxon with all 6 differences positive: 2 / 2^6
    assert row["wilcoxon_p"] == pytest.approx(2 / 64)
    # paired t by hand: t = mean / (sd / sqrt(n)), 5 degrees of freedom
    from scipy.stats import t as tdist

    tstat = d.mean() / (d.std(ddof=1) / np.sqrt(6))
    assert row["ttest_p"] == pytest.approx(2 * tdist.sf(tstat, 5))
    assert row["note"] == ""
    small = A.paired(pd.concat([base[:3], dam[:3]])).iloc[0]
    assert "cannot reach p<0.05" in small["note"] and small["wilcoxon_p"] == pytest.approx(0.25)
    # the same 6 pairs split over two datasets: 3 pairs per dataset, and one pooled row of 6
    two = pd.concat([base, dam]).assign(dataset=lambda f: np.where(f["seed"] < 3, "b", "c"))
    pooled = A.paired(two, dam=("aucm",)).set_index("dataset").loc["all (pooled)"]
    assert pooled.iloc[0]["n_pairs"] == 6 and pooled.iloc[0]["wilcoxon_p"] == pytest.approx(2 / 64)
    # one DAM recipe per dataset: a second pooled row over all pairs (here the same 6)
    assert len(pooled) == 2 and pooled.iloc[1]["recipe"] == "each dataset's DAM recipe" and pooled.iloc[1]["n_pairs"] == 6


def _log_synthetic_runs():
    client = mlflow.MlflowClient()
    exp = client.create_experiment("medauc-bench/golden")
    for _, r in synthetic_export().iterrows():
        if r["run_id"] == "r000":
            continue
        run = client.create_run(exp, tags={"bench_role": "cell", **{c[5:]: str(r[c]) for c in r.index if c.startswith("tags.") and pd.notna(r[c])}})
        client.log_batch(run.info.run_id,
                         params=[Param(c[7:], str(r[c])) for c in r.index if c.startswith("params.") and isinstance(r[c], str)],
                         metrics=[Metric(c[8:], float(r[c]), 0, 0) for c in r.index if c.startswith("metrics.") and pd.notna(r[c])])
        client.set_terminated(run.info.run_id)


def test_aggregate_equals_direct_recomputation_from_mlflow(tmp_path):
    from bench.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    _log_synthetic_runs()
    build_leaderboard("golden", out_dir=tmp_path, charts=False, generated_at=STAMP)
    ours = pd.read_csv(tmp_path / "golden.csv")
    direct = mlflow.search_runs(experiment_names=["medauc-bench/golden"], filter_string="attributes.status = 'FINISHED'")
    direct["aug"] = direct["params.aug"].map({"True": "on", "False": "off"})
    expect = direct.groupby(["params.dataset", "params.recipe", "aug"])["metrics.test_auc"].agg(["mean", "std", "count"])
    for (dataset, recipe, aug), e in expect.iterrows():
        got = ours[(ours.dataset == dataset) & (ours.recipe == recipe) & (ours.aug == aug)].iloc[0]
        assert got["test_auc_mean"] == pytest.approx(e["mean"], abs=1e-6)
        assert got["test_auc_std"] == pytest.approx(e["std"], abs=1e-6)
        assert got["n"] == e["count"]


def test_regeneration_from_csv_equals_mlflow(tmp_path):
    from bench.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    _log_synthetic_runs()
    a, b = tmp_path / "a", tmp_path / "b"
    build_leaderboard("golden", out_dir=a, charts=False, generated_at=STAMP)
    build_leaderboard("golden", out_dir=b, charts=False, generated_at=STAMP, from_csv=a / "golden-runs.csv")
    assert (a / "golden.md").read_text() == (b / "golden.md").read_text()
    assert (a / "golden.csv").read_text() == (b / "golden.csv").read_text()


def test_chart_draws_the_aggregated_means(tmp_path):
    runs = collect.tidy(synthetic_export())
    agg = A.aggregate(runs)
    recipes, bars = render.chart_data(agg, "breastmnist")
    assert recipes == ["aucm", "ce"] and set(bars) == {"off", "on"}
    for aug, (means, stds) in bars.items():
        for recipe, m, s in zip(recipes, means, stds):
            row = agg[(agg.dataset == "breastmnist") & (agg.recipe == recipe) & (agg.aug == aug)].iloc[0]
            assert m == pytest.approx(row["test_auc_mean"]) and s == pytest.approx(row["test_auc_std"])
    render.chart(agg, "breastmnist", catalog.load_reference(), tmp_path / "c.png")
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "c.png")
    assert img.shape[0] > 300 and img.std() > 0.05  # a real picture, not a blank canvas


def test_chestmnist_acc_caveat():
    export = synthetic_export()
    export["params.dataset"] = export["params.dataset"].replace({"breastmnist": "chestmnist"})
    runs = collect.tidy(export)
    md = render.markdown("x", runs, A.aggregate(runs), A.paired(runs), STAMP)
    assert "all-negative rate" in md


def _runs(recipes_aucs: dict, protocol="official", folds=(-1,), dataset="b", seeds=range(3), code="c0de"):
    """A tidy runs frame: recipe -> f(seed, fold) giving test AUC."""
    rows = []
    for recipe, f in recipes_aucs.items():
        for seed in seeds:
            for fold in folds:
                auc = f(seed, fold)
                rows.append({"dataset": dataset, "size": 28, "recipe": recipe, "objective": recipe.split("_")[0],
                             "init_from": "ce" if recipe.endswith("_ft") else "", "model": "resnet18_28", "aug": "off",
                             "protocol": protocol, "seed": seed, "fold": fold, "epochs": 5, "data_verified": True,
                             "code": code, "commit": "abc", "dirty": False, "test_auc": auc, "val_auc": auc,
                             **{m: auc for m in A.TEST_METRICS[1:]}})
    return pd.DataFrame(rows)


def test_cv5_folds_are_averaged_per_seed_before_statistics():
    def f_ce(s, k):
        return 0.80 + 0.01 * s + 0.002 * k

    def f_dam(s, k):
        return 0.81 + 0.01 * s + 0.004 * k

    runs = _runs({"ce": f_ce, "aucm": f_dam}, protocol="cv5", folds=range(5))
    agg = A.aggregate(runs).set_index("recipe")
    assert agg.loc["ce", "n"] == 3 and agg.loc["ce", "n_runs"] == 15 and agg.loc["ce", "folds"] == 5
    seed_means = [np.mean([f_ce(s, k) for k in range(5)]) for s in range(3)]
    assert agg.loc["ce", "test_auc_std"] == pytest.approx(np.std(seed_means, ddof=1))
    p = A.paired(runs).iloc[0]
    assert p["n_pairs"] == 3  # pairs per seed, not 15 fold x seed pairs
    assert p["mean_diff"] == pytest.approx(0.01 + 0.002 * 2)


def test_dam_is_compared_with_the_budget_matched_control_and_with_ce():
    runs = _runs({"ce": lambda s, k: 0.80 + 0.01 * s, "ce_ft": lambda s, k: 0.805 + 0.01 * s,
                  "aucm_ft": lambda s, k: 0.812 + 0.01 * s})
    p = A.paired(runs, primary="ce_ft")
    vs = {(r.control, r.recipe): r.mean_diff for r in p.itertuples()}
    assert vs[("ce_ft", "aucm_ft")] == pytest.approx(0.007)
    assert vs[("ce", "aucm_ft")] == pytest.approx(0.012) and vs[("ce", "ce_ft")] == pytest.approx(0.005)
    assert ("ce_ft", "ce") not in vs  # a control is never a treatment of the first control
    md = render.markdown("x", runs, A.aggregate(runs), p, STAMP)
    assert "### Against `ce_ft`" in md and "budget-matched control" in md and "### Against `ce`" in md


def test_pooled_dam_rows_never_mix_protocols_and_the_primary_is_official():
    """A dataset run under both protocols shares its seeds between them: pooling both would count
    each seed twice, so each protocol pools on its own and only the official row is primary."""
    off = pd.concat([_runs({"ce_ft": lambda s, k: 0.80, "aucm_ft": lambda s, k: 0.80 + 0.01 * (s + 1)}, dataset=d)
                     for d in ("a", "b")])
    cv = _runs({"ce_ft": lambda s, k: 0.80, "aucm_ft": lambda s, k: 0.70}, protocol="cv5", folds=range(5), dataset="a")
    cv2 = cv.assign(dataset="b")
    p = A.paired(pd.concat([off, cv, cv2]), controls=("ce_ft",), primary="ce_ft", dam=("aucm_ft",))
    each = p[p["recipe"] == "each dataset's DAM recipe"].set_index("protocol")
    assert set(each.index) == {"official", "cv5"} and (each["n_pairs"] == 6).all()
    assert each.loc["official", "mean_diff"] == pytest.approx(0.02) and each.loc["cv5", "mean_diff"] == pytest.approx(-0.1)
    assert p["primary"].sum() == 1 and bool(each.loc["official", "primary"]) and not bool(each.loc["cv5", "primary"])


def test_groups_name_their_code_and_flag_mixed_or_dirty_code():
    runs = pd.concat([_runs({"ce": lambda s, k: 0.8}, code="aaaa1111"), _runs({"aucm": lambda s, k: 0.8}, code="bbbb2222")])
    runs.loc[(runs.recipe == "aucm") & (runs.seed == 2), "code"] = "cccc3333"
    runs.loc[(runs.recipe == "ce") & (runs.seed == 0), "dirty"] = True
    agg = A.aggregate(runs).set_index("recipe")
    assert agg.loc["aucm", "mixed_code"] and not agg.loc["ce", "mixed_code"] and agg.loc["ce", "dirty"]
    table = render.dataset_table(agg.reset_index(), catalog.load_reference(), "b", 28, "official")
    assert "bbbb2222,cccc3333 ⚠ mixed code" in table and "aaaa1111 ⚠ dirty tree" in table
    assert "1 run(s) from a dirty tree" in render.code_line(runs)


COMMITTED = sorted(p for p in (Path(__file__).parents[1] / "leaderboard").glob("*-runs.csv"))
# the generated blocks README shows (its quick start, the studies' findings, the search record)
README_BLOCKS = {"quick-findings.md", "study-findings.md", "confirm-findings.md", "confirm_v3-findings.md",
                 "search_v2-selection.md"}


def _changed_since_commit(path) -> bool:
    """True when ``path`` differs from the checkout's HEAD (False outside a git checkout, e.g. a bundle)."""
    import subprocess

    res = subprocess.run(["git", "status", "--porcelain", "--", path.name], cwd=path.parent, capture_output=True, text=True)
    return res.returncode == 0 and bool(res.stdout.strip())


@pytest.mark.parametrize("runs_csv", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_leaderboards_regenerate_byte_for_byte(runs_csv, tmp_path):
    """Every committed leaderboard is exactly what its run export generates (nothing typed by hand)."""
    import re

    from bench.config import load_suite
    from bench.suitefile import available_suites

    suite = runs_csv.name[: -len("-runs.csv")]
    committed = runs_csv.with_name(f"{suite}.md").read_text()
    stamp = re.search(r"generated (\d{4}-\d\d-\d\d \d\d:\d\d UTC)\.", committed).group(1)
    declared = load_suite(suite) if suite in available_suites() else None
    md = build_leaderboard(suite, out_dir=tmp_path, from_csv=runs_csv, charts=False, generated_at=stamp,
                           declared=declared)
    assert md.read_text() == committed
    from leaderboard.findings import GENERATED_SUFFIXES, readme_block

    for generated in (runs_csv.with_name(suite + suffix) for suffix in GENERATED_SUFFIXES):
        if generated.exists():
            assert (tmp_path / generated.name).read_text() == generated.read_text()
            block = readme_block(generated)
            if generated.name in README_BLOCKS and _changed_since_commit(generated):
                # a user's `make run` rewrote it (README's block stays the committed one until `--readme`):
                # it is still checked above against its own runs, and README's block is checked in a clean tree
                assert block is not None, f"README has no block of {generated.name}"
            elif generated.name in README_BLOCKS:  # README must carry these, and carry them current
                assert block == generated.read_text().rstrip("\n"), f"README block of {generated.name}"
            else:
                assert block is None, f"README has a block of {generated.name}: add it to README_BLOCKS"


def test_search_rule_picks_by_validation_only_and_records_the_budget():
    from leaderboard.selection import search_record, winners

    runs = _runs({"ce": lambda s, k: 0.80, "ce_swa": lambda s, k: 0.82, "aucm_ft": lambda s, k: 0.81,
                  "compauc_ft": lambda s, k: 0.81})
    runs["test_auc"] = 1 - runs["val_auc"]  # test disagrees everywhere: it must not matter
    select = {"ce": ["ce", "ce_swa"], "dam": ["aucm_ft", "compauc_ft"]}
    won = winners(runs, select)
    assert won[("b", "ce")][0] == "ce_swa"
    assert won[("b", "dam")][0] == "aucm_ft"  # a tie goes to the configuration listed first
    rec = search_record(runs, select, "the rule")
    assert "**ce_swa**" in rec and "unequal" not in rec
    uneven = winners(runs[runs.recipe != "compauc_ft"], select)
    assert uneven[("b", "dam")][0] == "aucm_ft"
    assert "unequal budget" in search_record(runs[runs.recipe != "compauc_ft"], select, "the rule")


def test_readme_block_is_replaced_between_markers(tmp_path):
    from leaderboard.findings import BEGIN, END, readme_block, update_readme

    f = tmp_path / "demo-findings.md"
    f.write_text("## Findings\n\nnew table\n")
    name = "leaderboard/demo-findings.md"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN.format(name=name, suite='demo')}\nold\n{END.format(name=name)}\nrest\n")
    update_readme(f, readme)
    assert readme_block(f, readme) == "## Findings\n\nnew table" and readme.read_text().endswith("rest\n")
    record = tmp_path / "demo-selection.md"  # a search's record gets a block of its own
    record.write_text("| rule |\n")
    rname = "leaderboard/demo-selection.md"
    readme.write_text(readme.read_text() + f"{BEGIN.format(name=rname, suite='demo')}\n{END.format(name=rname)}\n")
    assert readme_block(record, readme) == ""  # a fresh, empty block is found (and then filled)
    update_readme(record, readme)
    assert readme_block(record, readme) == "| rule |" and readme_block(f, readme) == "## Findings\n\nnew table"


def test_secondary_metrics_get_their_own_tables_and_never_the_primary_mark(tmp_path):
    """The primary endpoint is declared on test AUC: the AUPRC tables show the same pooled row
    unmarked, so a reader cannot mistake a secondary endpoint for the primary one."""
    from types import SimpleNamespace

    csv = tmp_path / "x-runs.csv"
    synthetic_export().to_csv(csv, index=False)
    analysis = {"controls": ["ce"], "families": {"dam": ["aucm"]}, "primary": {"control": "ce"},
                "secondary_metrics": ["test_auprc"]}
    md = build_leaderboard("x", out_dir=tmp_path, from_csv=csv, charts=False, generated_at=STAMP,
                           declared=SimpleNamespace(doc={"analysis": analysis})).read_text()
    main, auprc = md.split("## Paired comparisons on AUPRC (secondary endpoint)")
    assert main.count("(primary endpoint)") == 1 and "(primary endpoint)" not in auprc
    assert "each dataset's DAM recipe" in auprc and "mean Δ AUPRC" in auprc


def test_findings_pair_official_runs_even_when_the_dataset_also_ran_cv5():
    """The findings table is official-split: a dataset also run under cv5 must not show its cv5 Δ."""
    from leaderboard import findings

    off = _runs({"ce_ft": lambda s, k: 0.80, "aucm_ft": lambda s, k: 0.83}, dataset="a")
    cv = _runs({"ce_ft": lambda s, k: 0.80, "aucm_ft": lambda s, k: 0.70}, protocol="cv5", folds=range(5), dataset="a")
    runs = pd.concat([off, cv])
    from bench import analysis as AN

    a = AN.parse({"controls": ["ce_ft"], "families": {"dam": ["aucm_ft"]}})
    text = findings.findings("x", runs, A.aggregate(runs), a, catalog.load_reference())
    assert "0.030 ± 0.000 [0.030, 0.030], 3/0/0" in text and "-0.100" not in text


def test_a_locally_regenerated_leaderboard_is_told_from_the_committed_one(tmp_path):
    # after `make run` the findings file is the user's: README's committed block is no longer compared to it
    import subprocess

    f = tmp_path / "quick-findings.md"
    f.write_text("a\n")
    assert not _changed_since_commit(f)  # not a git checkout (a bundle install): always compared
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    assert not _changed_since_commit(f)
    f.write_text("b\n")
    assert _changed_since_commit(f)
