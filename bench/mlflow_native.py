"""MLflow-native presentation of the benchmark: what a researcher sees in ``mlflow ui``.

Small helpers that the tracking code calls; they make runs look like what they are
(model-training runs with a dataset each) in MLflow's own UI, without a custom viewer.

Why each piece exists (verified against the mlflow 3.17.2 UI bundle and a real headless
Chromium, see ``tests/browser/test_mlflow_ui.py``):

* **Landing page.** MLflow 3.17's UI keeps one *global* "workflow type" (GenAI vs. machine
  learning), taken from the ``?workflowType=`` query of the page URL, else from the browser's
  localStorage key ``mlflow.workflowType_v1`` (written when the user clicks the "GenAI" /
  "Model training" switch at the top left), else ``genai``. Opening a bare experiment URL
  (``#/experiments/<id>``) redirects to the GenAI Overview (trace usage charts) in GenAI
  mode -- an empty page for a benchmark -- and to the Runs tab in machine-learning mode.
  The experiment tag ``mlflow.experimentKind`` no longer decides this in 3.17.2: the
  bundle's experiment-kind hook (``static/js/main.*.js``, the function that looks up
  ``"mlflow.experimentKind"``) returns the global workflow type whenever a feature flag
  that is hard-wired to ``()=>!0`` is on, and the landing redirect uses that hook. So every
  link we print carries ``?workflowType=machine_learning`` (:func:`runs_table_url`,
  :func:`experiment_url`). The tag is still set (:func:`experiment_tags`): it is what
  MLflow itself writes when a user picks "Machine learning" for an experiment, older 3.x UIs
  read it to pick the landing tab, and it costs nothing.
* **Columns.** The runs table shows no metric or param column by default; a saved view
  (an experiment tag, :func:`saved_view_tag`) that the links open adds ``val_auc``,
  ``test_auc`` and the cell's key params.
* **Dataset column.** ``MlflowClient.log_inputs`` with a :class:`DatasetInput` fills the
  runs table's "Dataset" column with ``name (digest)`` plus a pill for the
  ``mlflow.data.context`` input tag; the dataset drawer shows ``Path: <uri>`` for a
  ``local`` source whose JSON has ``uri``. The column is narrow: an 8-digit digest (MLflow's
  own convention) leaves room for the pill, a full MD5 pushes it out of sight.
* **System metrics.** MLflow's ``SystemMetricsMonitor`` takes a run id and a tracking URI,
  so it works for runs created through ``MlflowClient`` (the fluent ``log_system_metrics``
  switch only covers ``mlflow.start_run``). Opt-in, because it costs a thread and a DB
  write every sampling interval.

Like ``bench/tracking.py`` (its only caller), this is part of the tracking layer: the rest of
the package does not import MLflow.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import time
from collections.abc import Iterator, Sequence

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # as in bench/tracking.py, before mlflow loads
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

from mlflow.entities import Dataset, DatasetInput, InputTag  # noqa: E402

log = logging.getLogger(__name__)

NOTE_TAG = "mlflow.note.content"              # experiment/run description (markdown), shown in the UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow's per-experiment kind (see module docstring)
EXPERIMENT_KIND_ML = "custom_model_development"  # the value MLflow writes for "Machine learning"
DATASET_CONTEXT_TAG = "mlflow.data.context"    # = mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT
WORKFLOW_QUERY = "workflowType=machine_learning"  # makes the 3.17 UI open the Runs tab
SYSTEM_METRICS_PREFIX = "system/"
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the 3.17 UI's saved runs-table views
VIEW_QUERY = "viewStateShareKey"                 # URL query that opens a saved view
VIEW_ID = "medauc-bench"
VIEW_METRICS = ("val_auc", "test_auc")           # val AUC first: the only number a choice may use
VIEW_PARAMS = ("recipe", "aug", "seed")           # protocol/fold are in the Dataset column's pill


def experiment_tags(description: str, view: bool = True) -> dict[str, str]:
    """Tags for a suite's experiment: its description (shown above the runs table), the kind,
    and (``view``) the saved runs-table view :func:`runs_table_url` opens (see :func:`saved_view_tag`).

    Pass them to ``MlflowClient.create_experiment(..., tags=...)``, or set them one by one with
    ``set_experiment_tag`` on an existing experiment (setting a tag again overwrites it).
    """
    tags = {NOTE_TAG: description, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_ML}
    if view:
        tags.update(saved_view_tag())
    return tags


def saved_view_tag(
    metrics: Sequence[str] = VIEW_METRICS,
    params: Sequence[str] = VIEW_PARAMS,
    view_id: str = VIEW_ID,
    name: str = VIEW_ID,
    created_ms: int | None = None,
) -> dict[str, str]:
    """A saved runs-table view ("Views" menu of the 3.17 UI) that shows the benchmark's columns.

    Why: the 3.17 runs table shows no metric or param column until the user picks them under
    "Columns"; a researcher's first question (which recipe has the best val AUC?) needs them.
    The UI stores views as experiment tags ``mlflow.sharedViewState.<id>`` holding
    ``{"name", "createdAt", "updatedAt", "state"}``, ``state`` being the JSON of the page's
    search facets and column state (the UI compresses it when it saves; it reads plain JSON
    too). This is the UI's own, undocumented format, checked for mlflow 3.17.2 by
    ``tests/browser/test_mlflow_ui.py``; an unknown format only costs the columns (the link
    still opens the runs table). Opening ``...runs?viewStateShareKey=<id>`` shows the view with
    a "You're viewing a shared view" banner that the user can dismiss.
    """
    now = int(time.time() * 1000) if created_ms is None else int(created_ms)
    columns = ["attributes.`Dataset`", *(f"metrics.`{m}`" for m in metrics), *(f"params.`{p}`" for p in params)]
    state = {
        # search facets (the runs page's defaults)
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        # column state: which columns, in which order (the UI would sort metrics and params by
        # name), and widths (the UI applies widths only to columns named in columnOrder)
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", *columns],
        "columnWidths": {"attributes.`Run Name`": 250, "attributes.`Dataset`": 290},
        "runsHiddenMode": "FIRST_10_RUNS", "viewMaximized": False,
        "runListHidden": False, "isAccordionReordered": False, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return {f"{SAVED_VIEW_TAG_PREFIX}{view_id}": json.dumps(envelope)}


def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def _query(view_id: str | None) -> str:
    return WORKFLOW_QUERY + (f"&{VIEW_QUERY}={view_id}" if view_id else "")


def runs_table_url(base_url: str, experiment_id: str, view_id: str | None = VIEW_ID) -> str:
    """The experiment's runs table in machine-learning mode, with the saved view's columns.

    ``base_url`` is the UI's address, e.g. ``http://127.0.0.1:5000`` (a trailing slash is fine);
    ``view_id=None`` for the plain table (for experiments made without :func:`saved_view_tag`).
    """
    return f"{_base(base_url)}/#/experiments/{experiment_id}/runs?{_query(view_id)}"


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The experiment's bare page; with the workflow query the UI redirects to the runs table.

    That redirect drops other query parameters (a saved view's), so print
    :func:`runs_table_url` where the columns matter.
    """
    return f"{_base(base_url)}/#/experiments/{experiment_id}?{WORKFLOW_QUERY}"


def dataset_input(
    name: str,
    digest: str,
    source: str,
    context: str,
    schema: dict | str | None = None,
    profile: dict | str | None = None,
    source_type: str = "local",
    digest_chars: int | None = 8,
) -> DatasetInput:
    """One dataset input for ``MlflowClient.log_inputs(run_id, datasets=[...])``.

    ``name``: the dataset flag (``breastmnist``), shown in the runs table's Dataset column;
    ``digest``: the data file's MD5, shown next to it in brackets. It is cut to its first
    ``digest_chars`` (8) hex digits, MLflow's own digest convention (``mlflow.data.digest_utils``
    keeps ``md5[:8]``): a full 32-digit MD5 fills the column and hides the context pill. The
    full value goes into the profile as ``md5`` (the run's ``data_md5`` tag has it too); pass
    ``digest_chars=None`` to keep it whole. MLflow keeps one dataset record per experiment for
    each (name, digest), so every cell on the same file shares it;
    ``source``: the file path, stored as MLflow's ``local`` source JSON ``{"uri": path}`` so
    the dataset drawer prints ``Path: <source>``; ``context``: the split protocol / fold
    (``official``, ``cv5/fold2``), shown as a pill next to the name (input tag
    ``mlflow.data.context``). ``schema`` / ``profile``: optional dicts (stored as JSON,
    shown in the drawer), e.g. ``{"train": 546, "val": 78, "test": 156}`` as a profile.
    """
    if not name or not digest:
        raise ValueError("a dataset input needs a name and a digest")
    short = digest[:digest_chars] if digest_chars else digest
    if short != digest and (profile is None or isinstance(profile, dict)):
        profile = {**(profile or {}), "md5": digest}
    as_json = lambda v: v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True)  # noqa: E731
    src = source if source_type != "local" or source.lstrip().startswith("{") else json.dumps({"uri": str(source)})
    dataset = Dataset(name=name, digest=short, source_type=source_type, source=src,
                      schema=as_json(schema), profile=as_json(profile))
    return DatasetInput(dataset=dataset, tags=[InputTag(key=DATASET_CONTEXT_TAG, value=context)])


def parent_description(argv: Sequence[str]) -> str:
    """Markdown note for a suite's parent run (tag ``mlflow.note.content``).

    Says which command made the run and how to read and resume it, because the parent run is
    the row a researcher expands first and its own metrics are empty.
    """
    args = list(argv)
    if args and os.path.basename(args[0]) in ("bench", "__main__.py", "cli.py"):
        args = ["bench", *args[1:]]
    elif not args or args[0] != "bench":
        args = ["bench", *args]
    command = shlex.join(args)
    return (
        f"Suite invocation: `{command}`\n\n"
        "Each nested run is one cell (dataset x objective x augmentation x seed x split); "
        "expand this row to list them. The Dataset column shows the data file (flag and the "
        "first 8 digits of its MD5) and the split protocol/fold.\n\n"
        "Run the same command again to resume: finished cells are skipped, `--rerun` forces them."
    )


@contextlib.contextmanager
def system_metrics(
    run_id: str,
    enabled: bool,
    tracking_uri: str | None = None,
    sampling_interval: float | None = None,
) -> Iterator[object | None]:
    """Log CPU / memory / disk / network (and NVIDIA GPU) metrics to ``run_id`` while the block runs.

    Opt-in (``--system-metrics``): a background thread samples every ``sampling_interval``
    seconds (default MLflow's 10 s, or ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) and logs
    ``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``, ... with
    ``step`` = sample index; GPU metrics (``system/gpu_0_utilization_percentage``) need
    ``nvidia-ml-py`` and a visible GPU, and are skipped quietly otherwise.

    Close this block **before** ending the run: MLflow's monitor stops by itself once the run
    is not RUNNING, dropping its last sample. A block shorter than one interval logs nothing.
    Yields the monitor (or None when disabled or unavailable); never raises for a monitoring
    problem, since losing system metrics must not fail a cell.
    """
    monitor = _start_monitor(run_id, tracking_uri, sampling_interval) if enabled else None
    try:
        yield monitor
    finally:
        if monitor is not None:
            try:
                monitor.finish()
            except Exception as exc:
                log.warning("stopping system metrics of run %s failed: %s", run_id, exc)


def _start_monitor(run_id: str, tracking_uri: str | None, sampling_interval: float | None):
    """A started ``SystemMetricsMonitor``, or None (with one warning) when it cannot run here."""
    try:
        import psutil  # noqa: F401  (MLflow's CPU monitor needs it; say so clearly)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        kwargs = {"tracking_uri": tracking_uri}
        if sampling_interval is not None:
            kwargs["sampling_interval"] = sampling_interval
        monitor = SystemMetricsMonitor(run_id, **kwargs)
        monitor.start()
        return monitor
    except ImportError as exc:
        log.warning("system metrics are off: %s (pip install psutil; nvidia-ml-py for GPUs)", exc)
    except Exception as exc:  # a monitor that cannot start must not stop the cell
        log.warning("system metrics are off for run %s: %s", run_id, exc)
    return None
