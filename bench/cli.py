"""``bench`` command line: cell, suite, leaderboard, list, doctor.

User errors (:class:`bench.errors.BenchError`) end as one line on stderr and a non-zero
exit code; tracebacks are for bugs (``--debug`` shows them for everything).
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from pathlib import Path

import click

from bench.errors import BenchError

log = logging.getLogger("bench")


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("alembic", "mlflow", "matplotlib", "PIL", "urllib3", "git", "torch_geometric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def user_errors(fn):
    """Turn BenchError into a one-line message and exit code; keep tracebacks for bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BenchError as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished runs are kept; run the same command again to resume", err=True)
            sys.exit(130)

    return wrapper


data_dir_opt = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                            help="folder with <flag>.npz (default: $BENCH_DATA_DIR, else ~/.medmnist)")
unverified_opt = click.option("--allow-unverified-data", is_flag=True, default=None,
                              help="accept data whose MD5 differs from the official one (runs are tagged)")
progress_opt = click.option("--progress/--no-progress", default=None, help="progress bars (default: on a terminal)")
system_metrics_opt = click.option("--system-metrics", is_flag=True,
                                  help="log CPU, memory (and GPU) utilisation into each cell run (MLflow system metrics)")


def _default_none(ctx, param, value):
    """MLproject passes 'default' for "use the default of suites/_base.yaml"."""
    return None if value in (None, "", "default") else value


def _optional_int(lo, hi):
    def convert(ctx, param, value):
        if value in (None, "", "none", "default"):
            return None
        return click.IntRange(lo, hi).convert(value, param, ctx)

    return convert


def _progress(value):
    on = sys.stderr.isatty() if value is None else value
    if not on:  # MLflow's own artifact-download bars would otherwise fill logs and CI output
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return on


def contradiction(condition: bool, message: str) -> None:
    """Options that contradict each other are an error, never silently resolved one way."""
    if condition:
        from bench.errors import ConfigError

        raise ConfigError(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="debug logging and full tracebacks")
def main(debug: bool) -> None:
    """medauc-bench: Deep AUC Maximization on MedMNIST, tracked in MLflow."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    setup_logging(debug)
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame):
    """SIGTERM (a scheduler's stop, `kill`) ends like Ctrl-C: the running cell is marked KILLED."""
    raise KeyboardInterrupt


@main.command()
@click.option("--dataset", required=True, help="a MedMNIST flag, e.g. breastmnist")
@click.option("--objective", required=True, help="ce, aucm, ap, pauc, pauc_dro, compauc")
@click.option("--model", default=None, callback=_default_none,
              help="default: models.2d / models.3d of suites/_base.yaml")
@click.option("--aug/--no-aug", default=False, show_default=True)
@click.option("--aug-value", type=click.BOOL, default=None, hidden=True, help="--aug as a value (MLproject)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--protocol", type=click.Choice(["official", "cv5"]), default="official", show_default=True)
@click.option("--fold", default=None, callback=_optional_int(0, 4), help="cv5 fold 0-4")
@click.option("--epochs", default=None, callback=_optional_int(1, None), help="default: train.epochs of _base.yaml")
@click.option("--batch-size", default=None, callback=_optional_int(2, None), help="default: train.batch_size")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None)
@click.option("--path", "exec_path", type=click.Choice(["fast", "plain"]), default=None,
              help="execution path (bench/device.py): fast = channels-last + fused optimizer (default), plain = reference")
@click.option("--experiment", default="medauc-bench/cells", show_default=True)
@data_dir_opt
@unverified_opt
@progress_opt
@system_metrics_opt
@user_errors
def cell(dataset, objective, model, aug, aug_value, seed, protocol, fold, epochs, batch_size, precision, exec_path, experiment,
         data_dir, allow_unverified_data, progress, system_metrics):
    """Train and evaluate one cell as one MLflow run."""
    src = click.get_current_context().get_parameter_source
    contradiction(aug_value is not None and src("aug").name == "COMMANDLINE",
                  "--aug/--no-aug and --aug-value both given; use one of them")
    contradiction(protocol == "official" and fold is not None,
                  f"--fold {fold} contradicts --protocol official (the official split has no folds); "
                  f"use --protocol cv5 --fold {fold}, or drop --fold")
    if aug_value is not None:
        aug = aug_value
    import tempfile

    import yaml

    from bench.driver import RunOptions, run_suite
    from bench.errors import ConfigError

    if protocol == "cv5" and fold is None:
        raise ConfigError("--protocol cv5 needs --fold 0-4")
    # One cell is a one-cell suite: the same validation, claims, tracking and executor as `bench suite`.
    doc: dict = {"suite": "cells", "include": "_base.yaml", "description": "a single cell run with `bench cell`",
                 "grid": {"dataset": [dataset], "recipe": [objective], "aug": [aug], "seed": [seed],
                          "protocol": [protocol]}}
    given = (("epochs", epochs), ("batch_size", batch_size), ("precision", precision), ("path", exec_path))
    train = {k: v for k, v in given if v is not None}
    if train:
        doc["train"] = train
    if model is not None:
        doc["datasets"] = {dataset: {"model": model}}
    options = RunOptions(rerun=True, only=(f"fold={fold}",) if protocol == "cv5" else (), data_root=data_dir,
                         allow_unverified=allow_unverified_data, experiment=experiment, progress=_progress(progress),
                         leaderboard=False, system_metrics=system_metrics)
    with tempfile.TemporaryDirectory(prefix="bench-cell-") as tmp:
        path = Path(tmp) / "cells.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out = run_suite(str(path), options)
    for res in out.results:
        ok = res.status in ("finished", "skipped")
        click.echo(res.line() if ok or res.status != "failed" else f"error: {res.error}", err=not ok)
    if out.failed:
        sys.exit(1)
    if any(r.status == "not_applicable" for r in out.results):
        sys.exit(3)


@main.command()
@click.argument("name")
@click.option("--rerun", is_flag=True, help="run cells again even when a FINISHED run exists")
@click.option("--only", multiple=True, metavar="KEY=VALUE", help="keep matching cells (dataset, objective, aug, seed, protocol, fold, model)")
@click.option("--max-cells", type=int, default=None, help="run at most N cells of the (filtered) grid")
@click.option("--dry-run", is_flag=True, help="list the cells, their status and a time estimate")
@click.option("--experiment", default=None, help="MLflow experiment (default medauc-bench/<suite>)")
@click.option("--no-leaderboard", is_flag=True, help="do not regenerate the leaderboard at the end")
@click.option("--executor", default="local", show_default=True,
              help="local (sequential, this process) or ray (a Ray cluster; pip install -e '.[ray]')")
@click.option("--address", default=None, callback=_default_none,
              help="ray: auto, HOST:PORT or ray://HOST:10001 (default: a Ray instance on this machine)")
@click.option("--max-concurrent", default=None, callback=_optional_int(1, None), help="ray: at most N cells at once")
@click.option("--jobs", default=None, callback=_optional_int(1, None),
              help="local: N cells at once in worker processes (packs GPU fractions as `resources:` declares)")
@click.option("--checkpoints", default=None, callback=_default_none,
              help="all (default) | needed: keep model.pt only for cells another cell starts from")
@click.option("--workers", default=None, callback=_optional_int(1, None), help="dry run: plan for N workers")
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=None, help="dry run: GPUs of each worker")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None,
              help="dry run: CPUs of each worker (default: this machine's)")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True), default=None, metavar="M",
              help="measure this machine's speed and scale the suite's epochs (never below its budget: floors) to fit M minutes")
@click.option("--pilot", default=None, metavar="SUITE",
              help="dry run: the suite whose committed runs give the SD for the power line (default: analysis.power.pilot)")
@data_dir_opt
@unverified_opt
@progress_opt
@system_metrics_opt
@user_errors
def suite(name, rerun, only, max_cells, dry_run, experiment, no_leaderboard, executor, address, max_concurrent, jobs,
          checkpoints, workers, gpus_per_worker, cpus_per_worker, budget_minutes, pilot, data_dir, allow_unverified_data,
          progress, system_metrics):
    """Run the declared suite NAME (suites/NAME.yaml), resuming where it stopped."""
    from bench.driver import run_suite

    contradiction(dry_run and rerun, "--dry-run and --rerun contradict each other: a dry run trains nothing")
    contradiction(pilot is not None and not dry_run, "--pilot states power in a dry run only; add --dry-run")
    for opt, value in (("--address", address), ("--max-concurrent", max_concurrent)):
        contradiction(executor == "local" and value is not None,
                      f"{opt} contradicts --executor local (it runs one cell at a time in this process); "
                      f"add --executor ray or drop {opt}")
    contradiction(dry_run and address is not None, "--dry-run and --address contradict each other: a dry run connects "
                  "to nothing; plan for a cluster with --workers N [--gpus-per-worker G]")
    for opt, value in (("--workers", workers), ("--gpus-per-worker", gpus_per_worker), ("--cpus-per-worker", cpus_per_worker)):
        contradiction(value is not None and not dry_run, f"{opt} plans a cluster in a dry run only; add --dry-run "
                      f"(to run on a cluster: --executor ray --address ...)")

    from bench.driver import RunOptions

    options = RunOptions(rerun=rerun, only=tuple(only), max_cells=max_cells, dry=dry_run, data_root=data_dir,
                         allow_unverified=allow_unverified_data, experiment=experiment, progress=_progress(progress),
                         leaderboard=not no_leaderboard, executor=executor, address=address,
                         max_concurrent=max_concurrent, jobs=jobs, checkpoints=checkpoints, workers=workers,
                         gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                         system_metrics=system_metrics, pilot=pilot, budget_minutes=budget_minutes)
    out = run_suite(name, options)
    if dry_run:
        click.echo(out)
        return
    for r in out.results:
        click.echo(r.line())
    click.echo(out.table())
    if out.failed:
        sys.exit(1)


@main.command()
@click.option("--suite", "suite_name", required=True, help="suite whose finished runs to score under shift")
@click.option("--experiment", default=None, help="MLflow experiment (default: the suite's)")
@click.option("--no-leaderboard", is_flag=True, help="do not regenerate the leaderboard at the end")
@data_dir_opt
@unverified_opt
@progress_opt
@user_errors
def shift(suite_name, experiment, no_leaderboard, data_dir, allow_unverified_data, progress):
    """Score a suite's FINISHED runs on corrupted test sets, from their checkpoints (no retraining)."""
    from bench.config import load_suite
    from bench.driver import data_fingerprint
    from bench.shift.posthoc import run_shift
    from bench.tracking import Tracker

    suite = load_suite(suite_name)
    tracker = Tracker(experiment or suite.experiment, reuse=suite.reuse)
    runs = tracker.latest_runs(c.cell_id for c in suite.cells(data_fingerprint(data_dir)))
    summary = run_shift(tracker, runs, data_dir, allow_unverified_data, _progress(progress))
    click.echo(summary.table())
    if not no_leaderboard and (summary.scored or summary.not_applicable):
        from leaderboard.build import build_leaderboard

        click.echo(f"wrote {build_leaderboard(suite.name, experiment=tracker.experiment_name, declared=suite)}")


@main.command()
@click.option("--suite", "suite_name", default=None, help="print only this suite's runs-table link")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--links-only", is_flag=True, help="print the links, do not start `mlflow ui`")
@user_errors
def ui(suite_name, port, links_only):
    """Start the MLflow UI on 127.0.0.1 for the tracking store and print each suite's runs-table link.

    MLflow 3.17 opens an experiment on an empty GenAI "Traces" page; the printed links open the
    runs table (model-training view, with the benchmark's columns) directly.
    """
    import subprocess

    from bench.mlflow_native import runs_table_url
    from bench.tracking import check_reachable, tracking_uri

    uri = tracking_uri()
    check_reachable(uri)
    from mlflow import MlflowClient

    served = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if served else f"http://127.0.0.1:{port}"
    exps = [e for e in MlflowClient(uri).search_experiments() if e.name.startswith("medauc-bench/")]
    if suite_name:
        from bench.config import load_suite

        wanted = load_suite(suite_name).experiment
        exps = [e for e in exps if e.name == wanted]
    for e in sorted(exps, key=lambda e: e.name):
        click.echo(f"{e.name}: {runs_table_url(base, e.experiment_id)}")
    if not exps:
        click.echo("no medauc-bench experiments yet: run `bench suite smoke` first")
    if links_only or served:
        return
    click.echo(f"starting mlflow ui on http://127.0.0.1:{port} (Ctrl-C stops it)")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    subprocess.run([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                    "--port", str(port)], env=env, check=False)


@main.command("list")
def list_() -> None:
    """Datasets, models and objectives."""
    from tabulate import tabulate

    from bench.catalog import model_info
    from bench.datasets import get_spec, names
    from bench.models import MODELS
    from bench.objectives import OBJECTIVES
    from bench.plugins import load_entry_points
    from bench.suitefile import available_suites

    load_entry_points()
    rows = []
    for flag in names():
        s = get_spec(flag)
        rows.append([flag, s.task, s.n_labels, f"{s.dims}D", "/".join(str(s.n_samples[k]) for k in ("train", "val", "test")),
                     s.positive_name, ",".join(map(str, s.sizes))])
    click.echo(tabulate(rows, ["dataset", "task", "labels", "dims", "train/val/test", "positive class", "sizes"]) + "\n")
    rows = [[m, f"{model_info(m).dims}D", "yes" if model_info(m).paper_faithful else "no", model_info(m).description] for m in MODELS]
    click.echo(tabulate(rows, ["model", "dims", "paper", "description"]) + "\n")
    rows = []
    for o in OBJECTIVES:
        cls = OBJECTIVES.get(o)
        rows.append([o, (cls.__doc__ or "").strip().splitlines()[0], "yes" if cls.multilabel is None else "no"])
    click.echo(tabulate(rows, ["objective", "what", "multi-label"]) + "\n")
    click.echo("suites: " + ", ".join(available_suites()))


@main.command()
@click.option("--suite", "suite_name", required=True, help="suite whose runs to aggregate")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="output folder (default leaderboard/)")
@click.option("--from-csv", "from_csv", type=click.Path(dir_okay=False, exists=True), default=None,
              help="rebuild from a <suite>-runs.csv export instead of MLflow")
@click.option("--experiment", default=None)
@click.option("--generated-at", default=None, metavar="TEXT",
              help="timestamp to print instead of now (regenerating a committed leaderboard byte for byte)")
@click.option("--readme", is_flag=True, help="also refresh README.md's generated block of this suite's findings")
@click.option("--allow-mismatched-sources", is_flag=True,
              help="flag, instead of refusing, fine-tunes paired with another source run than they started from")
@user_errors
def leaderboard(suite_name, out_dir, from_csv, experiment, generated_at, readme, allow_mismatched_sources):
    """Aggregate a suite's runs into leaderboard/<suite>.md (+ CSVs and charts)."""
    contradiction(bool(from_csv and experiment), "--from-csv and --experiment contradict each other: "
                  "a CSV export is not read from an MLflow experiment")
    # it fetches small prediction files run by run: MLflow's per-download bar would print a line per
    # file (186 lines for study v3's 140 runs) and say nothing about how far the build is
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from bench.config import load_suite
    from bench.suitefile import available_suites
    from leaderboard.build import build_leaderboard

    # a declared suite is read back by its cell ids (including cells reused from other suites);
    # runs of a suite whose file is gone are found by their bench_suite tag
    # ... and an outside suite by its file (`--suite examples/focal_loss/suite.yaml`), named as the file says
    is_file = suite_name.endswith((".yaml", ".yml"))
    declared = load_suite(suite_name) if is_file or suite_name in available_suites() else None
    suite_name = declared.name if declared is not None else suite_name
    if declared is not None and not from_csv:
        declared = _as_last_run(declared, experiment or declared.experiment)
    path = build_leaderboard(suite_name, out_dir=out_dir, from_csv=from_csv, experiment=experiment, declared=declared,
                             generated_at=generated_at, allow_mismatched_sources=allow_mismatched_sources)
    click.echo(f"wrote {path}")
    if readme:
        from leaderboard.findings import GENERATED_SUFFIXES, readme_block, update_readme

        # the findings and (a search's) selection record, each where README has a block for it;
        # with no block at all, the findings' error names the two marker lines to add
        made = [path.with_name(suite_name + s) for s in GENERATED_SUFFIXES]
        shown = [f for f in made if f.exists() and readme_block(f) is not None] or made[:1]
        for f in shown:
            click.echo(f"updated {update_readme(f)} ({f.name})")


def _as_last_run(declared, experiment: str):
    """The suite as its newest parent run ran it: a `make run` on a slow machine scaled it (bench.budget),
    and its runs are cells of the scaled suite, not of the declared one."""
    from bench.scaling import TAG, reapply
    from bench.tracking import last_parent_tags

    value = last_parent_tags(experiment, declared.name).get(TAG)
    if not value:
        return declared
    log.info("%s: its last run was fitted to a time budget (%s): the leaderboard reads the cells that ran",
             declared.name, value)
    return reapply(declared, value)


@main.command("export-runs")
@click.option("--suite", "suite_name", required=True, help="suite whose experiment to export")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="zip to write (default runs/<suite>-runs.zip)")
@click.option("--with-checkpoints", is_flag=True, help="include model.pt (needed only to fine-tune from these runs elsewhere)")
@click.option("--experiment", default=None, help="MLflow experiment (default: the suite's)")
@user_errors
def export_runs_cmd(suite_name, out, with_checkpoints, experiment):
    """Write a suite's runs (params, tags, metric histories, prediction files) into one zip."""
    from bench.config import load_suite
    from bench.suitefile import available_suites
    from bench.tracking import export_runs

    is_file = suite_name.endswith((".yaml", ".yml"))
    declared = load_suite(suite_name) if is_file or suite_name in available_suites() else None
    name = declared.name if declared is not None else suite_name
    experiment = experiment or (declared.experiment if declared is not None else f"medauc-bench/{name}")
    path = Path(out or f"runs/{name}-runs.zip")
    n = export_runs(experiment, path, with_checkpoints)
    click.echo(f"wrote {path}: {n} runs of experiment '{experiment}'")


@main.command("import-runs")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--experiment", default=None, help="experiment to import into (default: the exported one's name)")
@user_errors
def import_runs_cmd(file, experiment):
    """Recreate exported runs in this tracking store (idempotent; ids, metrics, tags, artifacts kept)."""
    from bench.tracking import import_runs, tracking_uri

    imported, already = import_runs(Path(file), experiment)
    click.echo(f"imported {imported} run(s), {already} already there, into {tracking_uri()}")


@main.command()
@data_dir_opt
@user_errors
def doctor(data_dir):
    """Check data files, tracking store and hardware path; print a table."""
    from bench.doctor import run_doctor

    text, ok = run_doctor(data_dir)
    click.echo(text)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
