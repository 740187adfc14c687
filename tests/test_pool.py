"""`--jobs N`: cells at once in worker processes on one machine, packed by their resource requests."""
import pytest
import torch

from bench.errors import ConfigError
from bench.executors.pool import Slots
from bench.executors.resources import Resources

SUITE = """
include: _base.yaml
suite: t
train: {epochs: 1, batch_size: 16, precision: fp32}
finetune: {epochs: 1}
grid: {dataset: [breastmnist], recipe: [ce, ce_ft], aug: [false], seed: [0, 1], protocol: [official]}
"""


def test_slots_pack_gpu_fractions_and_respect_cpus():
    s = Slots(cpus=8, gpus=2)
    quarter = Resources(cpus=1, gpus=0.25)
    placed = [s.place(quarter) for _ in range(8)]
    assert placed.count((0,)) == 4 and placed.count((1,)) == 4  # four 2D cells per GPU
    assert s.place(quarter) is None  # a ninth waits
    s.release(quarter, (1,))
    assert s.place(Resources(cpus=1, gpus=1.0)) is None and s.place(quarter) == (1,)
    cpu = Slots(cpus=2, gpus=0)
    assert cpu.place(Resources(cpus=2)) == () and cpu.place(Resources(cpus=1)) is None
    lone = Slots(cpus=2, gpus=0)
    assert lone.place(Resources(cpus=4)) == ()  # one cell may always run, whatever it asks
    whole = Slots(cpus=8, gpus=4)
    assert whole.place(Resources(cpus=4, gpus=2)) == (0, 1) and whole.place(Resources(cpus=4, gpus=2)) == (2, 3)


def test_jobs_is_only_for_the_local_executor():
    from bench.driver import make_executor

    with pytest.raises(ConfigError, match="--jobs: only for --executor local"):
        make_executor("ray", None, None, False, jobs=2)
    with pytest.raises(ConfigError, match="--jobs must be >= 1"):
        make_executor("local", None, None, False, jobs=0)
    assert type(make_executor("local", None, None, False, jobs=2)).__name__ == "PoolExecutor"
    assert type(make_executor("local", None, None, False, jobs=1)).__name__ == "LocalExecutor"


def _aucs(summary):
    return {r.run_name: round(r.test_auc, 10) for r in summary.results if r.status == "finished"}


def test_two_cells_at_once_give_the_sequential_numbers_at_equal_threads(suites, synth_dir, tmp_path, monkeypatch):
    """--jobs 2 runs the two seeds' CE cells side by side (one thread each: a 2D cell asks 1 CPU),
    then their fine-tunes after their own sources; every number equals the sequential run's with
    one thread."""
    from bench.driver import run_suite

    suites("t", SUITE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = run_suite("t", progress=False, leaderboard=False)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'jobs.db'}")
    par = run_suite("t", progress=False, leaderboard=False, jobs=2)
    assert par.counts()["finished"] == 4 and seq.counts()["finished"] == 4
    assert _aucs(par) == _aucs(seq)
    from mlflow.tracking import MlflowClient

    c = MlflowClient()
    runs = c.search_runs([c.get_experiment_by_name("medauc-bench/t").experiment_id],
                         "tags.bench_role = 'cell'")
    ce = {r.data.params["seed"]: r.info.run_id for r in runs if r.data.params["recipe"] == "ce"}
    ft = [r for r in runs if r.data.params["recipe"] == "ce_ft"]
    assert {r.data.tags["bench_torch_threads"] for r in runs} == {"1"}
    assert all(r.data.tags["bench_init_run_id"] == ce[r.data.params["seed"]] for r in ft)  # the graph held
