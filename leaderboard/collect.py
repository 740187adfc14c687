"""Read a suite's runs back: from MLflow, or from the CSV export that ships with a leaderboard.

Both paths go through the same export format (``<suite>-runs.csv``: params, tags and
metrics columns exactly as ``mlflow.search_runs`` names them; no artifacts), so a
leaderboard rebuilt from the CSV is identical to one built from the tracking store.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from bench import datafiles, datasets
from bench.catalog import METRIC_NAMES, UNGATED_SCORES
from bench.errors import BenchError

KEEP_PARAMS = ("dataset", "size", "recipe", "objective", "model", "aug", "seed", "protocol", "fold", "epochs",
               "batch_size", "init_from", "precision", "ema", "swa", "tta", "seeds")
KEEP_TAGS = ("bench_cell_id", "bench_group_id", "bench_suite", "bench_status", "bench_git_commit", "bench_git_dirty",
             "bench_code_digest", "data_md5", "data_verified", "positive_label", "sampler_label", "precision",
             "bench_version", "bench_role", "bench_members", "shift_status", "bench_init_run_id",
             "bench_torch_threads", "bench_versions", "bench_budget")
# gate_kept_init and ungated_*: the fine-tune's two validation-chosen candidates (bench.runner)
KEEP_METRICS = tuple(f"{s}_{m}" for s in ("val", "test") for m in METRIC_NAMES) + (
    "best_epoch", "train_seconds", "gate_kept_init", "ungated_best_epoch", "ungated_val_auc", "ungated_test_auc",
    "ungated_test_auprc", "optimizer_steps", "steps_per_epoch")
ENSEMBLE_METRICS = ("test_auc_lo", "test_auc_hi", "n_models")
SHIFT_PREFIX = "metrics.shift_"  # per-corruption names are dynamic (bench.catalog)


def export_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``mlflow.search_runs`` that the leaderboard needs, in a fixed order."""
    cols = ["run_id", "status", "start_time"]
    cols += [f"params.{p}" for p in KEEP_PARAMS]
    cols += [f"tags.{t}" for t in KEEP_TAGS]
    cols += [f"metrics.{m}" for m in KEEP_METRICS + ENSEMBLE_METRICS]
    cols += sorted(c for c in raw.columns if c.startswith(SHIFT_PREFIX) and c != "metrics.shift_seconds")
    # hyperparameters (params.<objective>.<name>) and techniques (params.technique.<name>): what a
    # search varied, so the trials table can show the values of the trial validation selected
    cols += sorted(c for c in raw.columns if c.startswith("params.") and "." in c[len("params."):])
    out = pd.DataFrame({c: (raw[c] if c in raw.columns else np.nan) for c in cols})
    out["start_time"] = pd.to_datetime(out["start_time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out.sort_values(["start_time", "run_id"]).reset_index(drop=True)


def declared_cell_ids(declared, raw: pd.DataFrame) -> set[str]:
    """Ids of the suite's cells -- and of their groups -- for every data file its runs used
    (or the official one).

    Cell ids include the data file's md5; taking the md5s from the runs themselves keeps the
    leaderboard independent of which data files happen to be on this machine now.
    """
    md5s: dict[str, set] = {}
    for flag, md5 in zip(raw.get("params.dataset", []), raw.get("tags.data_md5", [])):
        md5s.setdefault(flag, set()).add(md5)
    ids: set[str] = set()
    flags = {c.dataset for c in declared.cells()}
    for flag in flags:
        for md5 in md5s.get(flag, set()) | {datasets.get_spec(flag).md5}:
            cells = declared.cells(lambda f, size=None, m=md5: m)
            ids |= {i for c in cells if c.dataset == flag for i in (c.cell_id, c.group_id)}
    return ids


def from_mlflow(suite: str, experiment: str, declared=None) -> pd.DataFrame:
    """FINISHED cell runs of ``suite`` as the export frame.

    With ``declared`` (a loaded suite): the runs of its cells in ``experiment`` and in the
    experiments it reuses. Without: the runs tagged ``bench_suite = suite`` in ``experiment``.
    """
    from bench.tracking import search_runs_frame

    experiments = [experiment, *(declared.reuse if declared else ())]
    query = "attributes.status = 'FINISHED' and tags.bench_role = 'cell'"
    try:
        raw = search_runs_frame(experiments, query if declared else f"{query} and tags.bench_suite = '{suite}'")
    except Exception as exc:
        raise BenchError(f"cannot read runs of experiment '{experiment}': {str(exc).splitlines()[0]}") from None
    ids = declared_cell_ids(declared, raw) if declared is not None and not raw.empty else None
    if ids is not None:
        raw = raw[raw["tags.bench_cell_id"].isin(ids)]
    try:  # the suite's seed ensembles (bench.ensemble): its own runs, in its own experiment
        ens = search_runs_frame([experiment], f"attributes.status = 'FINISHED' and tags.bench_role = 'ensemble' "
                                              f"and tags.bench_suite = '{suite}'")
    except Exception:
        ens = pd.DataFrame()
    if ids is not None and not ens.empty:  # only groups the suite still declares
        ens = ens[ens["tags.bench_group_id"].isin(ids)]
    if not raw.empty and not ens.empty:
        raw = pd.concat([raw, ens], ignore_index=True)
    if raw.empty:
        raise BenchError(
            f"no finished runs of suite '{suite}' in experiment '{experiment}'; run `bench suite {suite}` first "
            f"or pass --from-csv leaderboard/{suite}-runs.csv"
        )
    return roundtrip(export_frame(raw))


def roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    """Pass a frame through CSV text so both sources have identical dtypes."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    buf.seek(0)
    return read_csv(buf)


def read_csv(path_or_buf) -> pd.DataFrame:
    try:
        df = pd.read_csv(path_or_buf, dtype={"params.fold": str, "params.init_from": str, "tags.bench_status": str,
                                              "params.aug": str, "tags.bench_code_digest": str,
                                              "tags.bench_git_commit": str, "tags.bench_git_dirty": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BenchError(f"cannot read runs CSV {path_or_buf}: {exc}") from None
    missing = {"run_id", "params.dataset", "tags.bench_cell_id", "metrics.test_auc"} - set(df.columns)
    if missing:
        raise BenchError(f"runs CSV {path_or_buf} lacks columns {sorted(missing)}; export it with `bench leaderboard`")
    return df


def _bool(s: pd.Series) -> pd.Series:
    return s.astype(str).str.lower().isin(["true", "1", "yes"])


def _aug(s: pd.Series) -> pd.Series:
    """Augmentation names (off/on/medmnistc); runs logged before names existed say True/False."""
    s = s.astype(str)
    return s.str.lower().map({"true": "on", "false": "off"}).fillna(s)


def _text(s: pd.Series) -> pd.Series:
    return s.fillna("").astype(str).replace("nan", "")


def _col(df: pd.DataFrame, name: str, default="") -> pd.Series:
    return df[name] if name in df.columns else pd.Series(default, index=df.index)


def _size(df: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(_col(df, "params.size", np.nan), errors="coerce").fillna(28).astype(int)


def _is_ensemble(export: pd.DataFrame) -> pd.Series:
    if "tags.bench_role" not in export.columns:  # exports made before ensembles existed
        return pd.Series(False, index=export.index)
    return export["tags.bench_role"].astype(str) == "ensemble"


def ensembles(export: pd.DataFrame) -> pd.DataFrame:
    """Typed table of seed-ensemble runs: the newest per group (dataset, recipe, model, aug)."""
    df = export[_is_ensemble(export)].sort_values("start_time").drop_duplicates("tags.bench_group_id", keep="last")
    if df.empty:
        return pd.DataFrame(columns=["dataset", "size", "recipe", "model", "aug", "seeds", "data_verified"])
    out = pd.DataFrame({
        "dataset": df["params.dataset"].astype(str), "size": _size(df), "recipe": df["params.recipe"].astype(str),
        "model": df["params.model"].astype(str), "aug": _aug(df["params.aug"]),
        "seeds": df["params.seeds"].astype(str), "data_verified": _bool(df["tags.data_verified"]),
    })
    for m in KEEP_METRICS + ENSEMBLE_METRICS:
        out[m] = pd.to_numeric(df[f"metrics.{m}"], errors="coerce") if f"metrics.{m}" in df else np.nan
    return out.sort_values(["dataset", "recipe", "aug", "model"]).reset_index(drop=True)


def tidy(export: pd.DataFrame) -> pd.DataFrame:
    """Typed table, one row per cell: the newest FINISHED run per ``bench_cell_id``."""
    df = export[~_is_ensemble(export)].copy()
    df = df[df["tags.bench_status"].fillna("finished") != "not_applicable"]
    df = df.sort_values("start_time").drop_duplicates("tags.bench_cell_id", keep="last")
    commit = _col(df, "tags.bench_git_commit").fillna("").astype(str)
    out = pd.DataFrame({
        "run_id": df["run_id"],
        "start_time": df["start_time"],
        "cell_id": df["tags.bench_cell_id"],
        "group_id": df["tags.bench_group_id"],
        "dataset": df["params.dataset"].astype(str),
        "size": _size(df),
        "recipe": df["params.recipe"].astype(str),
        "objective": df["params.objective"].astype(str),
        "init_from": _col(df, "params.init_from").fillna("").astype(str),
        "model": df["params.model"].astype(str),
        "aug": _aug(df["params.aug"]),
        "seed": pd.to_numeric(df["params.seed"]).astype(int),
        "protocol": df["params.protocol"].astype(str),
        "fold": pd.to_numeric(df["params.fold"], errors="coerce").fillna(-1).astype(int),
        "epochs": pd.to_numeric(df["params.epochs"]).astype(int),
        "data_verified": _bool(df["tags.data_verified"]),
        "data_md5": df["tags.data_md5"].astype(str),
        # which code produced the run (bench.provenance); runs before digests existed have none
        "code": _col(df, "tags.bench_code_digest").fillna("").astype(str).replace("nan", ""),
        "commit": commit.str.replace("-dirty", "", regex=False),
        "dirty": _bool(_col(df, "tags.bench_git_dirty", "false")) | commit.str.endswith("-dirty"),
        # what else moves a number: libraries, CPU threads, precision ("" = not recorded: older runs)
        "versions": _text(_col(df, "tags.bench_versions")),
        "threads": _text(_col(df, "tags.bench_torch_threads")).str.replace(r"\.0$", "", regex=True),
        "precision": _text(_col(df, "tags.precision")),
        "init_run_id": _text(_col(df, "tags.bench_init_run_id")),
    })
    # all metric columns at once: one insert per column fragments the frame (pandas warns, per column)
    metrics = {m: pd.to_numeric(_col(df, f"metrics.{m}", np.nan), errors="coerce") for m in KEEP_METRICS}
    metrics.update({c[len("metrics."):]: pd.to_numeric(df[c], errors="coerce")
                    for c in sorted(c for c in df.columns if c.startswith(SHIFT_PREFIX))})
    out = pd.concat([out, pd.DataFrame(metrics, index=df.index)], axis=1)
    # A one-stage run has one candidate: its ungated numbers are its numbers. A fine-tune that
    # predates ungated scoring keeps NaN there (reported as not recorded, never filled in).
    one_stage = out["init_from"] == ""
    for m in ("test_auc", "test_auprc"):
        out.loc[one_stage, f"ungated_{m}"] = out.loc[one_stage, m]
    out["gated"] = np.where(one_stage, np.nan, (out["best_epoch"] == 0).astype(float))
    return out.sort_values(["dataset", "recipe", "aug", "protocol", "seed", "fold"]).reset_index(drop=True)


# --------------------------------------------------------------------------- test scores
# The primary endpoint's hierarchical bootstrap resamples test images, so it needs each run's
# per-image test scores. They ship beside the run export as ``<suite>-test-scores.csv`` (one row
# per run and candidate, plus one row of test labels per dataset), so a leaderboard rebuilt from
# the CSVs computes the same interval without the tracking store or the data files.

def scores_frame(export: pd.DataFrame, protocol: str = "official") -> pd.DataFrame:
    """Download the test scores of the export's cell runs on ``protocol`` (binary datasets)."""
    from bench.tracking import run_csv

    rows, labelled = [], set()
    runs = export[~_is_ensemble(export) & (export["params.protocol"].astype(str) == protocol)]
    for r in runs.itertuples():
        dataset = str(runs.at[r.Index, "params.dataset"])
        files = run_csv(r.run_id, (f"{dataset}_test_", UNGATED_SCORES))
        for name, frame in files.items():
            if frame.shape[1] != 1:  # multi-label: no single AUC to resample
                continue
            key = f"{r.run_id}:ungated" if name == UNGATED_SCORES else r.run_id
            rows.append({"key": key, "dataset": dataset, "scores": " ".join(f"{x:.6g}" for x in frame.iloc[:, 0])})
        if dataset not in labelled and files:
            y = datafiles.labels(dataset, "test")[:, 0]
            rows.append({"key": f"labels:{dataset}", "dataset": dataset, "scores": " ".join(map(str, y.tolist()))})
            labelled.add(dataset)
    return pd.DataFrame(rows, columns=["key", "dataset", "scores"])


def read_scores(frame: pd.DataFrame, selection: str = "gated") -> tuple[dict, dict]:
    """(run id -> test scores of the ``selection`` candidate, dataset -> test labels)."""
    scores, labels = {}, {}
    for r in frame.itertuples():
        values = np.array(str(r.scores).split(), dtype=float)
        if r.key.startswith("labels:"):
            labels[r.dataset] = values.astype(int)
        elif r.key.endswith(":ungated"):
            if selection == "ungated":
                scores[r.key[: -len(":ungated")]] = values
        else:
            scores.setdefault(r.key, values)
    return scores, labels
