"""The DAM-vs-CE comparison measures what it says: source-aware ids, matched controls, the gate
reported, findings per group, a validated analysis block, checked sources and stated power."""
import numpy as np
import pandas as pd
import pytest
import torch

from bench import catalog
from bench import data as D
from bench.config import load_suite, source_cell
from bench.errors import BenchError, ConfigError
from leaderboard import aggregate as A
from leaderboard import findings, render
from tests.conftest import make_npz

BASE = """
include: _base.yaml
suite: t
train: {epochs: 3}
finetune: {epochs: 2}
grid: {dataset: [breastmnist], recipe: [ce, ce_ft, aucm_ft, ce_ft_dual, ce_ft_pesg], aug: [false], seed: [0, 1],
       protocol: [official]}
"""


# --------------------------------------------------------------------------- identity


def test_changing_the_source_changes_every_dependent_id(suites):
    """Old code: a fine-tune's id held `init_from: ce` only, so raising CE epochs kept every *_ft
    id and the stale fine-tunes were skipped as FINISHED."""
    suites("t", BASE)
    before = {(c.recipe, c.seed): c.cell_id for c in load_suite("t").cells()}
    suites("t", BASE.replace("train: {epochs: 3}", "train: {epochs: 4}"))
    after = {(c.recipe, c.seed): c.cell_id for c in load_suite("t").cells()}
    assert all(before[k] != after[k] for k in before)  # ce retrains, and so does everything built on it
    suites("t", BASE.replace("finetune: {epochs: 2}", "finetune: {epochs: 5}"))
    ft_only = {(c.recipe, c.seed): c.cell_id for c in load_suite("t").cells()}
    assert all((before[k] == ft_only[k]) == (k[0] == "ce") for k in before)


def test_source_ids_are_recursive(suites):
    suites("t", BASE.replace("recipe: [ce,", "recipe: [ce, ft2,") + """
recipes:
  ft2: {objective: ce, init_from: ce_ft, params: {lr: 1.0e-5}}
""")
    s = load_suite("t")
    cells = {(c.recipe, c.seed): c for c in s.cells()}
    ft2, ce_ft, ce = cells[("ft2", 0)], cells[("ce_ft", 0)], cells[("ce", 0)]
    assert ft2.source_id == ce_ft.cell_id and ce_ft.source_id == ce.cell_id
    assert source_cell(s.doc, s.path, ft2) == ce_ft
    assert ft2.group_id == cells[("ft2", 1)].group_id  # the group id holds the source's *group*


# --------------------------------------------------------------------------- matched controls


def test_matched_controls_take_the_dam_values_as_resolved_per_dataset(suites):
    suites("t", BASE + """
datasets:
  breastmnist: {recipes: {aucm_ft: {params: {sampling_rate: 0.35, lr: 0.02}}}}
""")
    cells = {c.recipe: c.params_dict for c in load_suite("t").cells() if c.seed == 0}
    assert cells["ce_ft_dual"]["sampling_rate"] == 0.35 and cells["ce_ft_dual"]["lr"] == 1e-4  # Adam keeps ce_ft's lr
    pesg, aucm = cells["ce_ft_pesg"], cells["aucm_ft"]
    assert all(pesg[k] == aucm[k] for k in ("lr", "epoch_decay", "momentum", "weight_decay", "sampling_rate",
                                             "decay_epochs", "decay_factor"))


@pytest.mark.parametrize("extra, match", [
    ("recipes: {ce_ft_pesg: {params: {lr: 0.3}}}", r"recipes\.ce_ft_pesg\.params\.lr contradicts match"),
    ("recipes: {ce_ft_dual: {match: {recipe: aucm_ft, params: [sampling_rte]}}}",
     r"'sampling_rte' is not a hyperparameter of both.*did you mean 'sampling_rate'"),
    ("recipes: {ce_ft_pesg: {init_from: ce_ft}}", r"must start from the same source"),
    ("recipes: {aucm_ft: {family: dam}}", r"recipes\.aucm_ft\.family: a recipe's role is declared once, in analysis\.families"),
    ("analysis: {primay: {control: ce_ft}}", r"unknown key 'analysis\.primay' \(did you mean 'primary'\?\)"),
    ("analysis: {primary: {contrl: ce_ft}}", r"unknown key 'analysis\.primary\.contrl' \(did you mean 'control'\?\)"),
    ("analysis: {controls: [ce_ftt]}", r"analysis\.controls: unknown recipe 'ce_ftt' \(did you mean 'ce_ft'\?\)"),
    ("analysis: {primary: {control: ce_ft, protocol: cv5}}", r"analysis\.primary\.protocol 'cv5' is not run by this suite"),
    ("analysis: {families: {dam: [aucm_ft], ctrl: [aucm_ft]}}", r"'aucm_ft' is in both 'dam' and 'ctrl'"),
    ("analysis: {secondary_metrics: [test_auprcc]}", r"unknown metric 'test_auprcc' \(did you mean 'test_auprc'\?\)"),
    ("analysis: {primary: {control: ce_ft, selection: best}}", r"analysis\.primary\.selection"),
    ("analysis: {power: {pilot: confirm}}", r"analysis\.power needs analysis\.primary"),
])
def test_bad_matches_and_analysis_blocks_are_one_line_errors(suites, extra, match):
    suites("t", BASE + extra + "\n")
    with pytest.raises(ConfigError, match=match) as e:
        load_suite("t")
    assert "\n" not in str(e.value)


@pytest.fixture
def breast(tmp_path):
    make_npz(tmp_path, "breastmnist", n=(60, 16, 16))
    data = D.load("breastmnist", tmp_path, allow_unverified=True)
    return data, D.make_protocol(data, "official", None)


def _recipe(name, data, proto, params, epochs=2, batch=16, model=None):
    from bench.objectives import OBJECTIVES, TrainContext
    from bench.train import train_targets

    cls = OBJECTIVES.get(name)
    model = model or torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 1))
    labels = train_targets(proto.train.y, data.sampler_label).numpy().astype(int)[:, 0]
    ctx = TrainContext(labels, epochs, batch, 0, torch.device("cpu"))
    return model, cls.build(model, cls.Params(**params), ctx)


def _params(name, **over):
    from bench.config import base_config

    return {**base_config()["objectives"][name], **over}


def test_the_sampler_control_has_the_dam_recipes_batches_and_steps(breast):
    data, proto = breast
    # one sampler at a time, as in a run: LibAUC's DualSampler draws from numpy's global RNG
    _, dual = _recipe("ce_dual", data, proto, _params("ce_dual", sampling_rate=0.5))
    b_dual = [idx.tolist() for idx, _ in dual.batches(1)]
    _, aucm = _recipe("aucm", data, proto, _params("aucm", sampling_rate=0.5))
    b_aucm = [idx.tolist() for idx, _ in aucm.batches(1)]
    assert b_dual == b_aucm  # the same DualSampler batches, so the same optimizer steps per epoch
    pos = set(np.flatnonzero(proto.train.y.numpy()[:, 0] == data.sampler_label).tolist())
    share = np.mean([i in pos for b in b_dual for i in b])
    assert share > np.mean([i in pos for i in range(len(proto.train))])  # oversampled minority


def test_ce_pdsca_takes_only_the_ce_branch_and_ce_pesg_pulls_toward_the_reference(breast):
    data, proto = breast
    model, rec = _recipe("ce_pdsca", data, proto, _params("ce_pdsca"))
    x = D.scale(proto.train.x[:16], False)
    y = (proto.train.y[:16] == data.sampler_label).float()
    w0 = model[1].weight.detach().clone()
    for _ in range(3):
        rec.zero_grad()
        rec.loss(model(x), y, None, None).backward()
        rec.optimizer.step()
    group = rec.optimizer.param_groups[0]
    assert group["alpha"].grad is None  # the AUC branch never ran
    assert not torch.equal(w0, model[1].weight)
    # PESG with the CE loss: the epoch_decay term pulls toward the reference weights
    m1, r1 = _recipe("ce_pesg", data, proto, _params("ce_pesg", epoch_decay=0.0, momentum=0.0))
    m2, r2 = _recipe("ce_pesg", data, proto, _params("ce_pesg", epoch_decay=1.0, momentum=0.0),
                     model=__import__("copy").deepcopy(m1))
    for m, r in ((m1, r1), (m2, r2)):
        r.zero_grad()
        r.loss(m(x), y, None, None).backward()
        r.optimizer.step()
    assert not torch.allclose(m1[1].weight, m2[1].weight)


# --------------------------------------------------------------------------- the gate


def test_a_gated_fine_tune_reports_its_ungated_candidate(breast, monkeypatch):
    """Validation AUC per epoch is scripted (epoch 0 best, then 0.6 / 0.8 / 0.7): the selected
    model is epoch 0 (gated) and the ungated candidate is epoch 2, the best epoch >= 1."""
    import bench.train as T
    from bench.config import base_config, expand
    from bench.models import create_model
    from bench.suitefile import deep_merge, suites_dir

    data, proto = breast
    doc = deep_merge(base_config(), {
        "grid": {"dataset": ["breastmnist"], "recipe": ["ce_ft"], "aug": [False], "seed": [0], "protocol": ["official"]},
        "train": {"epochs": 1, "batch_size": 16, "precision": "fp32"}, "finetune": {"epochs": 3},
    })
    cell = expand(doc, suites_dir() / "_base.yaml", lambda f: "")[0]
    y = (proto.val.y.numpy()[:, 0] == data.sampler_label).astype(float)
    rng = np.random.default_rng(0)
    targets = iter([1.0, 0.6, 0.8, 0.7])

    def scripted(*args, **kwargs):  # scores whose AUC is (about) the next target
        t = next(targets)
        noise = rng.random(len(y))
        return (np.where(rng.random(len(y)) < t, y, 1 - y) * 0.5 + noise * 0.1)[:, None]

    monkeypatch.setattr(T, "predict", scripted)
    init = create_model(cell.model, 1, 1).state_dict()
    res = T.fit(cell, proto, data.spec, data.sampler_label, data.positive_label, init_state=init, progress=False)
    aucs = [h["val_auc"] for h in res.history]
    assert res.best_epoch == 0 and res.gated and aucs[0] == max(aucs)
    assert res.ungated.epoch == 1 + int(np.argmax(aucs[1:])) and res.ungated.val_auc == max(aucs[1:])
    assert res.optimizer_steps > 0


def test_units_count_gated_runs_and_tidy_keeps_ungated_apart():
    from leaderboard import collect

    ex = pd.DataFrame([
        {"run_id": "a", "status": "FINISHED", "start_time": "2026-01-01T00:00:00.000000Z", "params.dataset": "b",
         "params.recipe": "ce", "params.objective": "ce", "params.model": "m", "params.aug": "off", "params.seed": "0",
         "params.protocol": "official", "params.fold": "", "params.epochs": "3", "params.init_from": "",
         "tags.bench_cell_id": "c1", "tags.bench_group_id": "g1", "tags.data_md5": "x", "tags.data_verified": "true",
         "metrics.test_auc": 0.8, "metrics.best_epoch": 2},
        {"run_id": "b", "status": "FINISHED", "start_time": "2026-01-01T00:00:01.000000Z", "params.dataset": "b",
         "params.recipe": "aucm_ft", "params.objective": "aucm", "params.model": "m", "params.aug": "off",
         "params.seed": "0", "params.protocol": "official", "params.fold": "", "params.epochs": "2",
         "params.init_from": "ce", "tags.bench_cell_id": "c2", "tags.bench_group_id": "g2", "tags.data_md5": "x",
         "tags.data_verified": "true", "tags.bench_init_run_id": "a", "metrics.test_auc": 0.8, "metrics.best_epoch": 0,
         "metrics.ungated_test_auc": 0.78},
    ])
    runs = collect.tidy(collect.roundtrip(collect.export_frame(ex)))
    r = runs.set_index("recipe")
    assert r.loc["ce", "ungated_test_auc"] == 0.8 and np.isnan(r.loc["ce", "gated"])
    assert r.loc["aucm_ft", "gated"] == 1.0 and r.loc["aucm_ft", "ungated_test_auc"] == 0.78
    assert set(A.source_check(runs)["status"]) == {"ok"}


# --------------------------------------------------------------------------- findings


def _runs(spec, dataset="b", aug="off", seeds=range(5)):
    """recipe -> (f(seed) test AUC, gated?(seed), ungated f(seed))."""
    rows = []
    for recipe, (f, gated, ungated) in spec.items():
        for s in seeds:
            ft = recipe != "ce"
            rows.append({"run_id": f"{dataset}-{aug}-{recipe}-{s}", "dataset": dataset, "size": 28, "recipe": recipe,
                         "objective": recipe, "init_from": "ce" if ft else "", "model": "resnet18_28", "aug": aug,
                         "protocol": "official", "seed": s, "fold": -1, "epochs": 5, "data_verified": True,
                         "code": "c0de", "commit": "abc", "dirty": False, "test_auc": f(s), "val_auc": f(s),
                         "best_epoch": 0 if ft and gated(s) else 3, "gated": float(gated(s)) if ft else np.nan,
                         "ungated_test_auc": ungated(s), "init_run_id": f"{dataset}-{aug}-ce-{s}" if ft else "",
                         **{m: f(s) for m in A.TEST_METRICS[1:]}})
    return pd.DataFrame(rows)


def _analysis(**over):
    from bench import analysis as AN

    return AN.parse({"controls": ["ce_ft", "ce"], "families": {"dam": ["aucm_ft"]},
                     "decompose": {"aucm_ft": {"adam": "ce_ft", "sampler": "ce_ft_dual", "optimizer": "ce_ft_pesg"}},
                     **over})


def test_findings_keep_two_augs_of_one_recipe_apart():
    """Old code keyed rows by recipe: with aug off and on, the AUC came from one group and the Δ
    from the other, and n was the largest group's."""
    off = _runs({"ce": (lambda s: 0.80, lambda s: False, lambda s: 0.80),
                 "ce_ft": (lambda s: 0.80, lambda s: False, lambda s: 0.80),
                 "aucm_ft": (lambda s: 0.81, lambda s: False, lambda s: 0.81)}, aug="off")
    on = _runs({"ce": (lambda s: 0.90, lambda s: False, lambda s: 0.90),
                "ce_ft": (lambda s: 0.90, lambda s: False, lambda s: 0.90),
                "aucm_ft": (lambda s: 0.85, lambda s: False, lambda s: 0.85)}, aug="on", seeds=range(3))
    runs = pd.concat([off, on], ignore_index=True)
    text = findings.findings("x", runs, A.aggregate(runs), _analysis(), catalog.load_reference())
    rows = [line for line in text.splitlines() if "`aucm_ft` − `ce_ft`" in line]
    assert len(rows) == 2
    assert any("| off |" in r and "| 5 |" in r and "0.010 ± 0.000" in r for r in rows)
    assert any("| on |" in r and "| 3 |" in r and "-0.050 ± 0.000" in r for r in rows)
    arms = [line for line in text.splitlines() if "`aucm_ft` | DAM" in line]
    assert any("| off |" in r and "0.810" in r for r in arms) and any("| on |" in r and "0.850" in r for r in arms)
    assert "top recipe" not in text


def test_findings_report_gate_share_ungated_delta_effective_n_and_decomposition():
    gated = lambda s: s < 3  # noqa: E731  (3 of 5 DAM runs keep epoch 0)
    runs = _runs({"ce": (lambda s: 0.80, lambda s: False, lambda s: 0.80),
                  "ce_ft": (lambda s: 0.80 + 0.001 * s, lambda s: False, lambda s: 0.80 + 0.001 * s),
                  "ce_ft_dual": (lambda s: 0.802 + 0.001 * s, lambda s: False, lambda s: 0.802 + 0.001 * s),
                  "ce_ft_pesg": (lambda s: 0.805 + 0.001 * s, lambda s: False, lambda s: 0.805 + 0.001 * s),
                  "aucm_ft": (lambda s: 0.80 if gated(s) else 0.82, gated, lambda s: 0.79 + 0.01 * s)})
    a = _analysis(primary={"control": "matched", "selection": "ungated"})
    text = findings.findings("x", runs, A.aggregate(runs), a, catalog.load_reference())
    assert "| `aucm_ft` | DAM | 5 | 0.808 ± 0.011 | 3/5 |" in text
    assert "| `ce_ft_dual` | sampler-matched control |" in text
    row = next(line for line in text.splitlines() if "`aucm_ft` − `ce` |" in line)
    assert "0/0/3" not in row and ", 2/0/3, eff. n 2," in row  # 3 exact ties: the Wilcoxon uses n = 2
    assert "sampler: `ce_ft_dual` − `ce_ft` 0.002 ± 0.000" in text
    assert "optimizer: `ce_ft_pesg` − `ce_ft_dual` 0.003 ± 0.000" in text
    assert "loss: `aucm_ft` − `ce_ft_pesg`" in text
    # the primary endpoint: ungated aucm_ft − its matched control ce_ft_pesg, pooled
    expected = np.mean([0.79 + 0.01 * s - (0.805 + 0.001 * s) for s in range(5)])
    assert f"**{expected:.3f} ± " in text and "effective n = 5" in text and "bootstrap 95% CI over seeds [" in text


def test_secondary_endpoints_read_the_primary_pairs_the_other_declared_ways():
    """Study v3 declared its secondaries (the gated Δ, the other DAM recipe's loss effect, the sampler
    and optimizer effects, each DAM recipe − each control, the same pairs on AUPRC): the findings pool
    each one like the primary, from the runs."""
    gated = lambda s: s < 3  # noqa: E731
    flat = lambda v: (lambda s: v + 0.001 * s, lambda s: False, lambda s: v + 0.001 * s)  # noqa: E731
    runs = _runs({"ce": flat(0.80), "ce_ft": flat(0.80), "ce_ft_dual": flat(0.802), "ce_ft_pesg": flat(0.805),
                  "ce_ft_pdsca": flat(0.81), "compauc_ft": (lambda s: 0.83, lambda s: False, lambda s: 0.815 + 0.001 * s),
                  "aucm_ft": (lambda s: 0.80 if gated(s) else 0.82, gated, lambda s: 0.79 + 0.01 * s)})
    runs["ungated_test_auprc"] = np.where(runs["recipe"] == "aucm_ft", 0.53, 0.50)
    a = _analysis(primary={"treatment": "aucm_ft", "control": "matched", "selection": "ungated"},
                  secondary_metrics=["test_auprc"],
                  families={"dam": ["aucm_ft", "compauc_ft"]},
                  decompose={"aucm_ft": {"adam": "ce_ft", "sampler": "ce_ft_dual", "optimizer": "ce_ft_pesg"},
                             "compauc_ft": {"adam": "ce_ft", "sampler": "ce_ft_dual", "optimizer": "ce_ft_pdsca"}})
    text = findings.findings("x", runs, A.aggregate(runs), a, catalog.load_reference())
    line = next(x for x in text.splitlines() if x.startswith("Secondary endpoints"))
    gated_d = np.mean([(0.80 if gated(s) else 0.82) - (0.805 + 0.001 * s) for s in range(5)])
    assert f"the primary, gated (`aucm_ft` − `ce_ft_pesg`): {gated_d:.3f} ± " in line
    assert "`compauc_ft` − its matched control, ungated (`compauc_ft` − `ce_ft_pdsca`): 0.005 ± 0.000" in line
    assert "the sampler effect, ungated (`ce_ft_dual` − `ce_ft`): 0.002 ± 0.000" in line
    assert "the optimizer effect, ungated (`ce_ft_pesg` − `ce_ft_dual`): 0.003 ± 0.000" in line
    assert "DAM − control, ungated (`compauc_ft` − `ce`): 0.015 ± 0.000 [0.015, 0.015], 5/0/0, eff. n 5" in line
    assert "the primary on test AUPRC, ungated (`aucm_ft` − `ce_ft_pesg`): 0.030 ± 0.000" in line
    # runs that predate the ungated AUPRC: said, not computed from something else
    old = findings.findings("x", runs.drop(columns="ungated_test_auprc"), A.aggregate(runs), a,
                            catalog.load_reference())
    assert "the primary on test AUPRC, ungated (`aucm_ft` − `ce_ft_pesg`): not recorded for 5 of 5 pairs" in old
    # a pooled DAM treatment (study v2) keeps its findings as they were: its "Pooled" line reads it
    v2 = a.model_copy(update={"primary": a.primary.model_copy(update={"treatment": "dam"})})
    assert "Secondary endpoints" not in findings.findings("x", runs, A.aggregate(runs), v2, catalog.load_reference())


def test_paper_verdicts_use_the_ci_and_carry_the_marks():
    runs = _runs({"ce": (lambda s: 0.89 + 0.01 * s, lambda s: False, lambda s: 0.0)}, dataset="breastmnist")
    runs.loc[0, "data_verified"] = False
    agg = A.aggregate(runs)
    text = findings._paper(catalog.load_reference(), agg.iloc[0], 28)
    assert text.startswith("CI includes 0.901 (ResNet-18 (28)), 95% CI [") and text.endswith("‡")
    light = agg.assign(model="resnet18_3d_tiny", dataset="vesselmnist3d").iloc[0]
    assert findings._paper(catalog.load_reference(), light, 28).startswith("above 0.874") or "†" in \
        findings._paper(catalog.load_reference(), light, 28)


# --------------------------------------------------------------------------- sources


def test_a_stale_pair_is_refused_and_flagged_when_allowed(tmp_path):
    from leaderboard.build import check_sources

    runs = _runs({"ce": (lambda s: 0.8, lambda s: False, lambda s: 0.8),
                  "aucm_ft": (lambda s: 0.81, lambda s: False, lambda s: 0.81)}, seeds=range(3))
    runs.loc[(runs.recipe == "aucm_ft") & (runs.seed == 1), "init_run_id"] = "an-older-ce-run"
    with pytest.raises(BenchError, match=r"1 fine-tune run\(s\) would be paired with a source run they did not start "
                                         r"from: aucm_ft seed 1 .*--allow-mismatched-sources"):
        check_sources(runs, allow_mismatched=False)
    flagged = check_sources(runs, allow_mismatched=True)
    assert list(flagged["status"]) == ["ok", "mismatch", "ok"]
    text = findings.findings("x", runs, A.aggregate(runs), _analysis(controls=["ce"]), catalog.load_reference(),
                             sources=flagged)
    assert "⚠ 1 started from another run than the one they are paired with" in text


# --------------------------------------------------------------------------- analysis schema




# --------------------------------------------------------------------------- power


def test_minimum_detectable_delta_matches_the_noncentral_t():
    from leaderboard.power import min_detectable, power_paired_t

    mdd = min_detectable(1.0, 20)
    assert power_paired_t(mdd, 1.0, 20) == pytest.approx(0.8, abs=1e-6)
    assert mdd == pytest.approx(0.66, abs=0.01)  # Cohen's d for n = 20 pairs, 80 % power, α = .05
    assert min_detectable(0.027, 20) < min_detectable(0.027, 10)


def test_the_power_line_of_one_pair_says_it_is_not_defined():
    # make run on a slow CPU keeps one seed of quick (bench.budget): its power line must not print "nan"
    from leaderboard.power import PowerLine

    line = PowerLine(n=1, sd=0.027, pilot="confirm", pilot_pairs=20, alpha=0.05, power=0.8, endpoint="x").text()
    assert "not defined with n = 1" in line and "nan" not in line
    assert "0.0871 AUC" in PowerLine(3, 0.0267, "confirm", 20, 0.05, 0.8, "x").text()


def test_dry_run_states_power_from_the_pilot(suites, tmp_path, monkeypatch):
    from bench.driver import run_suite

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    suites("confirm", (__import__("pathlib").Path(__file__).parents[1] / "suites" / "confirm.yaml").read_text())
    out = run_suite("confirm", dry=True, pilot="confirm")
    line = out.splitlines()[-1]
    assert line.startswith("power: primary endpoint") and "n = 20 pairs" in line and "0.0267" in line
    assert "minimum detectable Δ at 80% power" in line
    with pytest.raises(ConfigError, match="no run export"):
        run_suite("confirm", dry=True, pilot="smoke")


# --------------------------------------------------------------------------- provenance


def test_the_digest_covers_shift_and_ensembles_and_runs_record_versions():
    from bench import provenance as P

    assert "bench.ensemble" in P.NUMERIC_MODULES
    names = {f.name for f in P._package_files("bench.corrupt")}
    assert {"corruptions.py", "medmnistc_compat.py", "corruptions3d.yaml"} <= names
    assert {"cache.py", "scoring.py"} <= {f.name for f in P._package_files("bench.shift")}
    assert P.versions().startswith("torch=") and "libauc=" in P.versions() and "numpy=" in P.versions()
    assert "bench_versions" in P.run_tags()


def test_a_group_mixing_threads_or_versions_is_flagged():
    runs = _runs({"ce": (lambda s: 0.8, lambda s: False, lambda s: 0.8)}, seeds=range(3))
    runs["threads"], runs["versions"], runs["precision"] = ["2", "2", "1"], "torch=1", "bf16"
    agg = A.aggregate(runs)
    assert agg.iloc[0]["mixed_other"] == "mixed CPU thread counts"
    table = render.dataset_table(agg, catalog.load_reference(), "b", 28, "official")
    assert "⚠ mixed CPU thread counts" in table


def test_deterministic_flag_is_recorded_and_enters_the_id_only_when_set(suites):
    suites("t", BASE)
    plain = load_suite("t").cells()[0]
    suites("t", BASE.replace("train: {epochs: 3}", "train: {epochs: 3, deterministic: true}"))
    det = load_suite("t").cells()[0]
    assert det.train.deterministic and det.cell_id != plain.cell_id
    assert "deterministic" not in plain.identity()["train"] and det.flat_params()["deterministic"] is True


# --------------------------------------------------------------------------- one model loader


@pytest.mark.parametrize("name", [m for m in __import__("bench.models", fromlist=["MODELS"]).MODELS.names()
                                  if m.endswith("_tiny") or m == "resnet18_28"])
def test_load_model_gives_every_registered_model_its_bf16_layout(name):
    from bench.catalog import model_info
    from bench.models import create_model, load_model

    dims = model_info(name).dims
    state = create_model(name, 1, 1).state_dict()
    model = load_model(name, 1, 1, dims=dims, device=torch.device("cpu"), channels_last=True, state=state)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.randn(2, 1, *([28] * dims))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).shape == (2, 1)


def test_posthoc_scoring_uses_the_recorded_precision():
    from bench.shift.posthoc import run_bf16

    cpu = torch.device("cpu")
    assert run_bf16("fp32", "bf16", cpu, 2) is False  # tested in fp32: re-scored in fp32
    assert run_bf16("bf16", "fp32", cpu, 3) is False  # never bf16 where it is unreliable (3D on CPU)


def test_deterministic_mode_switches_torch_and_back():
    from bench.train import set_deterministic

    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
