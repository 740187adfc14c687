"""Shared fixtures: a temporary MLflow store, cache and synthetic MedMNIST files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two pytest workers share the machine's cores: one torch/OpenMP thread each (and in the bench
    # processes they start), so that their OpenMP pools do not spin against each other
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data" / "medmnist").resolve()


def real_data_dir() -> Path | None:
    """Folder with the real BreastMNIST file: $BENCH_DATA_DIR, else ../shared/data/medmnist."""
    for cand in (os.environ.get("BENCH_DATA_DIR"), str(SHARED_DATA)):
        if cand and (Path(cand) / "breastmnist.npz").is_file():
            return Path(cand).resolve()
    return None


def make_npz(folder: Path, flag: str, n=(40, 16, 16), seed: int = 0, size: int = 28) -> Path:
    """A small file with the official layout (keys, dtypes, shapes, file name) of ``flag`` at
    ``size`` px; random content."""
    from bench.data import get_spec

    spec = get_spec(flag, size)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = (rng.random((count, spec.n_labels)) < 0.3).astype(np.uint8)
        labels[0, :], labels[1, :] = 1, 0  # both classes in every label
        images = rng.integers(0, 60, (count, *spec.image_shape), dtype=np.uint8)
        # make the task learnable: positives are brighter
        bright = labels[:, 0].astype(bool)
        images[bright] = np.minimum(images[bright].astype(int) + 120, 255).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec.file_name
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own tracking store, artifact root, lock dir and md5 cache."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_ARTIFACT_ROOT", raising=False)
    monkeypatch.delenv("BENCH_LOCK_DIR", raising=False)
    monkeypatch.delenv("BENCH_ALLOW_UNVERIFIED_DATA", raising=False)
    # A plugin loaded by an earlier test enters this process's code digest; a worker process
    # (--jobs, Ray) that never loaded it would then refuse the cell as "other code".
    from bench import provenance

    monkeypatch.setattr(provenance, "_extra_modules", [])
    provenance.code_digest.cache_clear()
    yield
    provenance.code_digest.cache_clear()


@pytest.fixture
def breast(tmp_path):
    """A small synthetic BreastMNIST file, loaded, with its official protocol: ``(data, protocol)``."""
    from bench import data as D

    make_npz(tmp_path, "breastmnist", n=(48, 16, 16))
    data = D.load("breastmnist", tmp_path, allow_unverified=True)
    return data, D.make_protocol(data, "official", None)


def fit_quietly(cell, data, proto, **kw):
    """``bench.train.fit`` of ``cell`` on loaded ``data`` without a progress bar."""
    from bench.train import fit

    return fit(cell, proto, data.spec, data.sampler_label, data.positive_label, progress=False, **kw)


@pytest.fixture
def real_dir():
    d = real_data_dir()
    if d is None:
        pytest.skip("real BreastMNIST file not found (set BENCH_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def real_smoke(tmp_path_factory):
    """The shipped ``smoke`` suite (BreastMNIST x {ce, aucm}, 2 epochs) run once per test session on
    the real file, into its own store: what a user has after ``bench suite smoke``. The real-data
    end-to-end, UI and rerun tests all read these runs instead of training their own; a test that
    writes copies the store first (:func:`copy_store`)."""
    from types import SimpleNamespace

    from bench import provenance
    from bench.driver import run_suite

    data = real_data_dir()
    if data is None:
        pytest.skip("real BreastMNIST file not found (set BENCH_DATA_DIR)")
    root = tmp_path_factory.mktemp("real-smoke")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "BENCH_ARTIFACT_ROOT": str(root / "artifacts"),
           "BENCH_DATA_DIR": str(data), "BENCH_CACHE_DIR": str(root / "cache"), "BENCH_SUITES_DIR": str(REPO / "suites")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("BENCH_LOCK_DIR", "BENCH_ALLOW_UNVERIFIED_DATA"):
            mp.delenv(k, raising=False)
        mp.setattr(provenance, "_extra_modules", [])
        provenance.code_digest.cache_clear()
        summary = run_suite("smoke", progress=False, leaderboard=False)
        provenance.code_digest.cache_clear()
    assert summary.failed == 0 and summary.counts()["finished"] == 2, [r.line() for r in summary.results]
    return SimpleNamespace(root=root, uri=env["MLFLOW_TRACKING_URI"], env=env, data_dir=data, summary=summary)


def copy_store(smoke, dest: Path) -> str:
    """A private copy of ``real_smoke``'s store (the database; artifacts stay where the runs recorded
    them) for a test that adds runs; returns its tracking URI."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(smoke.root / "mlflow.db", dest / "mlflow.db")
    return f"sqlite:///{dest / 'mlflow.db'}"


@pytest.fixture
def synth_dir(tmp_path, monkeypatch):
    """A data folder with small synthetic files of the official layout; unverified on purpose."""
    folder = tmp_path / "data"
    for flag in ("breastmnist", "chestmnist", "nodulemnist3d", "synapsemnist3d", "adrenalmnist3d"):
        make_npz(folder, flag)
    monkeypatch.setenv("BENCH_DATA_DIR", str(folder))
    monkeypatch.setenv("BENCH_ALLOW_UNVERIFIED_DATA", "1")
    return folder


@pytest.fixture
def suites(tmp_path, monkeypatch):
    """A suites folder with the real _base.yaml; write extra suite files into it."""
    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "_base.yaml").write_text((REPO / "suites" / "_base.yaml").read_text())
    monkeypatch.setenv("BENCH_SUITES_DIR", str(folder))

    def write(name: str, text: str) -> Path:
        p = folder / f"{name}.yaml"
        p.write_text(text)
        return p

    return write
