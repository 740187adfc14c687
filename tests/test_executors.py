"""Executors without a cluster: registry, addresses, resources, the plan, planning, CLI errors.

The Ray executor against real clusters is in tests/integration/test_ray_executor.py.
"""
import dataclasses
import subprocess
import sys

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.config import load_suite
from bench.errors import ConfigError
from bench.executors import Cluster, get_executor
from bench.executors.graph import Plan, PlannedCell, Schedule, build_plan, checkpoint_policy
from bench.executors.simulate import Workers, checkpoint_bytes, simulate
from bench.executors.ray_executor import parse_address, resolve_auto
from bench.executors.resources import DEFAULTS, Resources, check_requests, parse_resources, size_class
from bench.executors.worker import CellTask
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, no_running_runs

FT = """
include: _base.yaml
suite: {name}
train: {{epochs: 1, batch_size: 16}}
finetune: {{epochs: 1}}
recipes: {{aucm_ft: {{objective: aucm, init_from: ce}}}}
grid: {{dataset: [breastmnist], recipe: {objectives}, aug: [false], seed: [0, 1], protocol: [official]}}
"""


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def ft_suite(suites, name="ft", objectives="[aucm_ft]", extra=""):
    suites(name, FT.format(name=name, objectives=objectives) + extra)
    suite = load_suite(name)
    return suite, suite.cells()


def plan_of(suite, cells, finished=(), **kw):
    opts = {"rerun": False, "policy": parse_resources(None), "cluster_has_gpus": False, **kw}
    return build_plan(suite, cells, dict.fromkeys(finished, "run"), **opts)


# ---------------------------------------------------------------------------- registry, addresses
def test_unknown_executor_has_a_did_you_mean():
    with pytest.raises(ConfigError, match="unknown executor 'rya'.*did you mean 'ray'"):
        get_executor("rya")


@pytest.mark.parametrize("text, kind, host, port, loopback", [
    (None, "local", "127.0.0.1", 0, True),
    ("auto", "auto", "127.0.0.1", 0, True),
    ("10.0.0.7:6379", "gcs", "10.0.0.7", 6379, False),
    ("127.0.0.1:40000", "gcs", "127.0.0.1", 40000, True),
    ("localhost:6379", "gcs", "localhost", 6379, True),
    ("[::1]:6379", "gcs", "::1", 6379, True),
    ("ray://head.example:10001", "client", "head.example", 10001, False),
    ("ray://head.example", "client", "head.example", 10001, False),
])
def test_addresses_parse(text, kind, host, port, loopback):
    a = parse_address(text)
    assert (a.kind, a.host, a.port, a.loopback) == (kind, host, port, loopback)


@pytest.mark.parametrize("text, why", [
    ("10.0.0.7", "the port is missing"), ("http://10.0.0.7:6379", "unsupported scheme 'http://'"),
    ("10.0.0.7:port", "Port could not be cast"), ("10.0.0.7:99999", "out of range"), ("h:1/x", "no path"),
    ("user@h:1", "expected HOST:PORT"),
])
def test_malformed_addresses_are_one_line(text, why):
    with pytest.raises(ConfigError, match=why) as err:
        parse_address(text)
    assert "\n" not in str(err.value) and "HOST:PORT" in str(err.value)


def test_auto_reads_what_ray_start_wrote(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(ConfigError, match="no running Ray cluster found"):
        resolve_auto()
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6380\n")
    a = resolve_auto()
    assert (a.host, a.port, a.loopback) == ("127.0.0.1", 6380, True)
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert resolve_auto().host == "10.1.2.3"


# ---------------------------------------------------------------------------- resources
def test_resource_defaults_per_model_size_and_cpu_only_without_gpus(suites):
    suite, cells = ft_suite(suites, extra="datasets: {breastmnist: {model: resnet18_28}}\n")
    policy = parse_resources(None)
    assert size_class(cells[0]) == "2d"
    assert policy.request(cells[0], cluster_has_gpus=True) == DEFAULTS["2d"] == Resources(1, 0.25)
    assert policy.request(cells[0], cluster_has_gpus=False) == Resources(1, 0.0)
    check_requests(cells, policy, Cluster(cpus=2, max_node_cpus=2))  # defaults never ask a CPU cluster for GPUs


def test_suite_resources_override_and_are_validated(suites):
    suite, cells = ft_suite(suites)
    policy = parse_resources({"cpus": 2, "2d": {"gpus": 0.5}, "3d": {"cpus": 8, "gpus": 2}})
    classes = dict(policy.classes)
    assert classes["2d"] == Resources(2, 0.5) and classes["3d"] == Resources(8, 2) and classes["3d_light"].cpus == 2
    with pytest.raises(ConfigError, match="has none"):
        check_requests(cells, policy, Cluster(cpus=4, max_node_cpus=4, address="127.0.0.1:1"))
    with pytest.raises(ConfigError, match="largest node"):
        check_requests(cells, parse_resources({"cpus": 4}), Cluster(cpus=4, max_node_cpus=2))
    for bad, needle in [({"cpu": 1}, "did you mean 'cpus'"), ({"2D": {}}, "did you mean '2d'"),
                        ({"3d": {"gpu": 1}}, "did you mean 'gpus'"), ({"gpus": 1.5}, "whole number"),
                        ({"cpus": 0}, "must be > 0"), ({"cpus": "two"}, "must be a number"), ([1], "must be a mapping")]:
        with pytest.raises(ConfigError, match=needle):
            parse_resources(bad)


def test_resources_key_in_a_suite_file_is_checked_before_anything_runs(suites, synth_dir, tmp_path):
    suites("r", FT.format(name="r", objectives="[ce]") + "resources: {2d: {cpu: 1}}\n")
    assert_one_line_error(invoke("suite", "r"), "resources.2d.cpu", "did you mean 'cpus'")
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------------- plan
def test_plan_puts_missing_sources_first_and_links_dependents(suites):
    suite, cells = ft_suite(suites)  # aucm_ft for seeds 0, 1; their ce sources are not in the grid
    plan = plan_of(suite, cells)
    names = [p.task.cell.recipe for p in plan.items]
    assert names == ["ce", "aucm_ft", "ce", "aucm_ft"]
    assert plan.items[1].depends_on == plan.items[0].cell_id and plan.items[0].depends_on is None
    assert plan.items[1].task.source.cell_id == plan.items[0].cell_id
    # a finished source is not retrained: the dependent starts from its run, without a dependency
    done = plan_of(suite, cells, finished=[plan.items[0].cell_id])
    assert [p.task.cell.recipe for p in done.items] == ["aucm_ft", "ce", "aucm_ft"]
    assert done.items[0].depends_on is None and done.items[0].task.source is not None
    seconds, chain = plan.critical_path(lambda p: 10.0 if p.task.cell.recipe == "ce" else 1.0)
    assert seconds == 11.0 and [p.task.cell.recipe for p in chain] == ["ce", "aucm_ft"]


def test_checkpoints_needed_keeps_only_sources(suites):
    suite, cells = ft_suite(suites, objectives="[ce, aucm_ft]")
    plan = plan_of(suite, cells, checkpoints="needed")
    assert {p.task.cell.recipe: p.task.save_checkpoint for p in plan.items} == {"ce": True, "aucm_ft": False}
    assert all(p.task.save_checkpoint for p in plan_of(suite, cells).items)
    with pytest.raises(ConfigError, match="did you mean 'needed'"):
        checkpoint_policy("neded")
    # the suite key works as the option does
    suite, _ = ft_suite(suites, name="ck", extra="checkpoints: needed\n")
    assert checkpoint_policy(suite.doc.get("checkpoints")) == "needed"


def test_schedule_releases_dependents_with_the_source_outcome(suites):
    suite, cells = ft_suite(suites)
    sched = Schedule(plan_of(suite, cells))
    first, second = sched.take(), sched.take()
    assert [first.task.cell.recipe, second.task.cell.recipe] == ["ce", "ce"] and sched.take() is None
    sched.done(first.cell_id, "failed", "loss became nan")
    sched.done(second.cell_id, "finished")
    a, b = sched.take(), sched.take()
    assert a.task.source_status == "failed: loss became nan" and b.task.source_status == ""
    sched.done(a.cell_id, "failed")
    sched.done(b.cell_id, "finished")
    assert not sched


# ---------------------------------------------------------------------------- planning
def independent_plan(n, res=Resources(1, 0.25)):
    fake = dataclasses.make_dataclass("FakeCell", ["cell_id"])  # the simulation reads ids and resources only
    return Plan(tuple(PlannedCell(CellTask(cell=fake(f"c{i}")), res) for i in range(n)))


def test_simulated_makespan_packs_gpu_fractions():
    plan = independent_plan(8)
    seconds = {p.cell_id: 10.0 for p in plan.items}
    assert simulate(plan, seconds, Workers(1, cpus=8, gpus=1)) == 20.0  # 4 per GPU, two waves
    assert simulate(plan, seconds, Workers(2, cpus=8, gpus=1)) == 10.0
    assert simulate(plan, seconds, Workers(2, cpus=8, gpus=1), max_concurrent=2) == 40.0
    assert simulate(plan, seconds, Workers(1, cpus=2, gpus=1)) == 40.0  # CPUs bound it


def test_checkpoint_size_of_resnet18_is_about_45_mb():
    assert 44e6 < checkpoint_bytes("resnet18_28", 1, 1) < 46e6


def test_dry_run_plans_makespan_and_storage(suites, synth_dir):
    suites("ft", FT.format(name="ft", objectives="[ce, aucm_ft]"))
    res = invoke("suite", "ft", "--dry-run", "--workers", "2", "--gpus-per-worker", "1")
    assert res.exit_code == 0, res.output
    out = res.output
    for needle in ("4 cells, 0 finished, 4 to run", "plan for 2 worker(s) x", "critical path: 2 cell(s)",
                   "estimated makespan", "ASSUMPTIONS (not measured on a GPU)", "4 per GPU",
                   "with --checkpoints all", "with --checkpoints needed", "bench shift"):
        assert needle in out, out
    res = invoke("suite", "ft", "--dry-run")
    assert res.exit_code == 0 and "storage for the 4 cells to run" in res.output and "makespan" not in res.output


def test_dry_run_names_requests_no_worker_can_hold(suites, synth_dir):
    suites("ft", FT.format(name="ft", objectives="[ce, aucm_ft]") + "resources: {cpus: 4}\n")
    res = invoke("suite", "ft", "--dry-run", "--workers", "2", "--gpus-per-worker", "1", "--cpus-per-worker", "2")
    assert res.exit_code == 0, res.output
    assert "NO MAKESPAN: cells asking 4 CPU + 0.25 GPU fit on no worker of 2 CPU + 1 GPU" in res.output, res.output
    assert "inf h" not in res.output


# ---------------------------------------------------------------------------- bad input on the command line
@pytest.mark.parametrize("args, needle", [
    (("--executor", "rya"), "did you mean 'ray'"),
    (("--address", "10.0.0.7:6379"), "--address contradicts --executor local"),
    (("--max-concurrent", "2"), "--max-concurrent contradicts --executor local"),
    (("--workers", "4"), "--workers plans a cluster in a dry run only"),
    (("--gpus-per-worker", "1"), "--gpus-per-worker plans a cluster in a dry run only"),
    (("--dry-run", "--executor", "ray", "--address", "auto"), "--dry-run and --address contradict"),
    (("--executor", "ray", "--address", "10.0.0.7"), "the port is missing"),
    (("--checkpoints", "some"), "unknown value 'some'"),
])
def test_bad_suite_options_are_one_line(args, needle, tmp_path):
    res = invoke("suite", "smoke", *args)
    assert_one_line_error(res, needle)
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was recorded


def test_missing_ray_extra_names_it(monkeypatch, synth_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra looks like
    assert_one_line_error(invoke("suite", "smoke", "--executor", "ray"), "pip install -e '.[ray]'")
    assert no_running_runs()


def test_mlproject_suite_entry_passes_executor_and_address():
    from mlflow.projects import _project_spec

    entry = _project_spec.load_project(str(REPO)).get_entry_point("suite")
    cmd = entry.compute_command({"name": "quick", "executor": "ray", "address": "10.0.0.7:6379"}, None)
    assert cmd == "python -m bench suite quick --executor ray --address 10.0.0.7:6379"
    res = invoke("suite", "smoke", "--dry-run", "--executor", "local", "--address", "default")  # the defaults
    assert res.exit_code == 0, res.output


def test_local_path_never_imports_ray(suites, synth_dir):
    """A whole suite through the local executor, in a fresh interpreter: Ray stays unimported."""
    suites("noray", FT.format(name="noray", objectives="[ce]").replace("seed: [0, 1]", "seed: [0]"))
    code = ("import sys; from bench.cli import main\n"
            "try:\n    main(['suite', 'noray', '--no-leaderboard', '--no-progress'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\nprint('NO-RAY-OK')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "NO-RAY-OK" in out.stdout, out.stderr[-2000:]


def test_dry_run_default_worker_cpus_hold_the_largest_request(suites, synth_dir, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    suites("ft", FT.format(name="ft", objectives="[ce, aucm_ft]") + "resources: {cpus: 4}\n")
    res = invoke("suite", "ft", "--dry-run", "--workers", "2", "--gpus-per-worker", "1")
    assert res.exit_code == 0, res.output
    assert "planning 4 CPUs per worker (the largest cell request; this machine has 2)" in res.output
    assert "plan for 2 worker(s) x (4 CPU, 1 GPU)" in res.output and "estimated makespan" in res.output


# ---------------------------------------------------------------------------- the local executor's ETA
def test_the_eta_scales_what_is_left_by_how_slow_the_finished_cells_ran():
    from bench.executors.estimate import Eta, estimate_seconds

    cells = [c for c in load_suite("quick").cells() if c.seed == 0]
    ce = next(c for c in cells if not c.init_from)  # 30 epochs; the fine-tunes 10 each
    fts = [c for c in cells if c.init_from]
    eta = Eta([ce, *fts])
    assert eta.start(ce.cell_id) == pytest.approx(sum(map(estimate_seconds, [ce, *fts])))
    eta.finished(ce.cell_id, 3 * estimate_seconds(ce))  # this machine runs 3x slower than the estimates
    left = eta.start(fts[0].cell_id)
    assert left == pytest.approx(3 * sum(map(estimate_seconds, fts)))
    # counting cells (elapsed per finished cell x cells left) would promise far more: CE is the long one
    assert left < 0.6 * 3 * estimate_seconds(ce) * len(fts)
    eta.finished(fts[0].cell_id, 3 * estimate_seconds(fts[0]))
    assert eta.start(fts[1].cell_id) == pytest.approx(3 * sum(map(estimate_seconds, fts[1:])))


def test_the_first_eta_uses_the_speeds_the_budget_measured_here():
    from bench.driver import make_executor
    from bench.executors.estimate import Eta

    cells = [c for c in load_suite("quick").cells() if c.seed == 0]
    slow = {"resnet18_28": (35.0, 128.0)}  # what bench.budget measured on one AVX2 core
    assert Eta(cells, slow).start(cells[0].cell_id) > 3 * Eta(cells).start(cells[0].cell_id)
    assert make_executor("local", None, None, False, None, slow).speeds == slow
    assert type(make_executor("local", None, None, False, 2, slow)).__name__ == "PoolExecutor"
