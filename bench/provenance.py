"""Which code produced a run: a digest of the training code, and the git state.

Why a digest and not the package version or the commit alone: the version is never bumped,
and a commit says nothing about uncommitted edits or about plugin modules outside the
repository. ``code_digest()`` hashes the *abstract syntax tree* of every module that decides a
number (data, augmentation, models, objectives, training, scoring, seed ensembles, every module
and data file of ``bench.corrupt`` and ``bench.shift``, and any loaded plugin module), with
docstrings removed. Comments and docstrings therefore never change it; any change of code does.

Decision: the digest does **not** enter the cell id. The id names *what* is computed (resolved
config + data file); the digest names *which code* computed it. Resume and ``reuse:`` count a
cell as done only when a FINISHED run has the same id **and** the same digest, so new code never
silently inherits old results (honesty), while the leaderboard can still find runs of older code,
show their digest per group and flag a group that mixes digests or came from a dirty tree
(history survives a code change instead of vanishing from the tables).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The modules whose code decides a run's numbers. Tracking, the driver, executors, the CLI and
# the leaderboard only move numbers around, so editing them keeps the digest (and resume) intact.
NUMERIC_MODULES = (
    "bench.datasets",
    "bench.datafiles",
    "bench.data",
    "bench.augment",
    "bench.models",
    "bench.objectives",
    "bench.techniques",
    "bench.pretrain",
    "bench.device",
    "bench.train",
    "bench.evaluate",
    "bench.runner",
    "bench.ensemble",  # seed ensembles: their averaging and thresholds are numbers of their own
)
# Packages whose every module and data file decides numbers: the corruptions (that ``aug: medmnistc``
# trains with) and the corrupted test sets shift builds from them.
NUMERIC_PACKAGES = ("bench.corrupt", "bench.shift")
# The libraries whose versions a run records (``bench_versions``): each can move a number.
VERSIONED = ("torch", "libauc", "numpy", "mlflow", "medmnist", "scikit-learn", "torchio", "medmnistc")
_extra_modules: list[str] = []  # plugin modules registered at run time (bench.plugins)


def add_module(name: str) -> None:
    """Make a plugin module part of the digest (its objectives, models or datasets decide numbers)."""
    if name not in _extra_modules:
        _extra_modules.append(name)
        code_digest.cache_clear()


def _normalized_source(path: Path) -> str:
    """The module's AST without docstrings: comments and docstrings never change the digest."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def _data_files(module) -> list[Path]:
    """Data files a module declares as part of its code (e.g. ``bench/datasets.yaml``)."""
    return [Path(module.__file__).with_name(f) for f in getattr(module, "DIGEST_FILES", ())]


def _package_files(package: str) -> list[Path]:
    """Every .py and .yaml file of a package, found without importing it (optional extras)."""
    spec = importlib.util.find_spec(package)
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(p for p in root.iterdir() if p.suffix in (".py", ".yaml"))


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Short sha256 over the numeric modules, packages (and plugins), in a fixed order."""
    h = hashlib.sha256()
    for name in (*NUMERIC_MODULES, *sorted(_extra_modules)):
        module = sys.modules.get(name) or importlib.import_module(name)
        h.update(name.encode())
        h.update(_normalized_source(Path(module.__file__)).encode())
        for f in _data_files(module):
            h.update(f.read_bytes())
    for package in NUMERIC_PACKAGES:
        for f in _package_files(package):
            h.update(f"{package}/{f.name}".encode())
            h.update(_normalized_source(f).encode() if f.suffix == ".py" else f.read_bytes())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def versions() -> str:
    """``torch=2.14.1 libauc=2.0.1 ...`` of the installed libraries that can change a number
    (``-`` for one not installed): runs record it, and the leaderboard flags a group that mixes."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in VERSIONED:
        try:
            out.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist}=-")
    return " ".join(out)


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str, bool]:
    """(commit sha or '', dirty): dirty means tracked files differ from the commit."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return "", False
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "", False


def git_commit() -> str:
    """The commit, with ``-dirty`` appended when tracked files were modified."""
    sha, dirty = git_state()
    return sha + ("-dirty" if sha and dirty else "")


def run_tags() -> dict:
    """Tags every run carries to say which code produced it."""
    sha, dirty = git_state()
    return {"bench_code_digest": code_digest(), "bench_git_commit": git_commit(),
            "bench_git_dirty": str(bool(dirty)).lower(), "bench_versions": versions()}
