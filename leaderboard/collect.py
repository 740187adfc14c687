"""Read a suite's runs back: from MLflow, or from the CSV export that ships with a leaderboard.

Both paths go through the same export format (``<suite>-runs.csv``: params, tags and
metrics columns exactly as ``mlflow.search_runs`` names them; no artifacts), so a
leaderboard rebuilt from the CSV is identical to one built from the tracking store.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.evaluate import METRICS as METRIC_NAMES  # one definition of the metric set
KEEP_PARAMS = ("dataset", "recipe", "objective", "model", "aug", "seed", "protocol", "fold", "epochs", "batch_size",
               "init_from", "precision", "ema")
KEEP_TAGS = ("bench_cell_id", "bench_group_id", "bench_suite", "bench_status", "bench_git_commit", "data_md5",
             "data_verified", "positive_label", "precision", "bench_version")
KEEP_METRICS = tuple(f"{s}_{m}" for s in ("val", "test") for m in METRIC_NAMES) + ("best_epoch", "train_seconds")


def export_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``mlflow.search_runs`` that the leaderboard needs, in a fixed order."""
    cols = ["run_id", "status", "start_time"]
    cols += [f"params.{p}" for p in KEEP_PARAMS]
    cols += [f"tags.{t}" for t in KEEP_TAGS]
    cols += [f"metrics.{m}" for m in KEEP_METRICS]
    out = pd.DataFrame({c: (raw[c] if c in raw.columns else np.nan) for c in cols})
    out["start_time"] = pd.to_datetime(out["start_time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out.sort_values(["start_time", "run_id"]).reset_index(drop=True)


def from_mlflow(suite: str, experiment: str) -> pd.DataFrame:
    """FINISHED cell runs of ``suite`` in ``experiment``, as the export frame."""
    from bench.tracking import search_runs_frame

    try:
        raw = search_runs_frame(
            [experiment], f"attributes.status = 'FINISHED' and tags.bench_role = 'cell' and tags.bench_suite = '{suite}'"
        )
    except Exception as exc:
        raise BenchError(f"cannot read runs of experiment '{experiment}': {str(exc).splitlines()[0]}") from None
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
        df = pd.read_csv(path_or_buf, dtype={"params.fold": str, "params.init_from": str, "tags.bench_status": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BenchError(f"cannot read runs CSV {path_or_buf}: {exc}") from None
    missing = {"run_id", "params.dataset", "tags.bench_cell_id", "metrics.test_auc"} - set(df.columns)
    if missing:
        raise BenchError(f"runs CSV {path_or_buf} lacks columns {sorted(missing)}; export it with `bench leaderboard`")
    return df


def _bool(s: pd.Series) -> pd.Series:
    return s.astype(str).str.lower().isin(["true", "1", "yes"])


def tidy(export: pd.DataFrame) -> pd.DataFrame:
    """Typed table, one row per cell: the newest FINISHED run per ``bench_cell_id``."""
    df = export.copy()
    df = df[df["tags.bench_status"].fillna("finished") != "not_applicable"]
    df = df.sort_values("start_time").drop_duplicates("tags.bench_cell_id", keep="last")
    out = pd.DataFrame({
        "run_id": df["run_id"],
        "start_time": df["start_time"],
        "cell_id": df["tags.bench_cell_id"],
        "group_id": df["tags.bench_group_id"],
        "dataset": df["params.dataset"].astype(str),
        "recipe": df["params.recipe"].astype(str),
        "objective": df["params.objective"].astype(str),
        "model": df["params.model"].astype(str),
        "aug": _bool(df["params.aug"]),
        "seed": pd.to_numeric(df["params.seed"]).astype(int),
        "protocol": df["params.protocol"].astype(str),
        "fold": pd.to_numeric(df["params.fold"], errors="coerce").fillna(-1).astype(int),
        "epochs": pd.to_numeric(df["params.epochs"]).astype(int),
        "data_verified": _bool(df["tags.data_verified"]),
        "data_md5": df["tags.data_md5"].astype(str),
        "commit": df["tags.bench_git_commit"].fillna("").astype(str),
    })
    for m in KEEP_METRICS:
        out[m] = pd.to_numeric(df[f"metrics.{m}"], errors="coerce")
    return out.sort_values(["dataset", "recipe", "aug", "protocol", "seed", "fold"]).reset_index(drop=True)
