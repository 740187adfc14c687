"""The house's structure: imports run one way, down the data flow, and the leaderboard needs no torch.

suite YAML -> cells -> executor -> runner (data -> fit -> score) -> tracking -> leaderboard.
Every module of ``bench`` and ``leaderboard`` has a layer below; a module may import (at module
level or inside a function) only modules of its own layer or lower ones. A new module must be
placed here, so the test fails until someone decides where it belongs.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# lowest first; the number is the layer
LAYERS: dict[str, int] = {
    # 0: names, errors, declarations -- torch-free
    "bench": 0, "bench.__main__": 9, "bench.errors": 0, "bench.registry": 0, "bench.environ": 0,
    "bench.catalog": 0, "bench.datasets": 0, "bench.suitefile": 0, "bench.analysis": 0,
    "bench.datafiles": 0, "bench.provenance": 0, "bench.schema": 0, "bench.hardware": 0,
    # 1: data-level: tensors from files, devices, corruptions of uint8 images
    "bench.data": 1, "bench.device": 1, "bench.corrupt": 1, "bench.corrupt.corruptions": 1,
    "bench.corrupt.medmnistc_compat": 1, "bench.corrupt.torchio3d": 1, "bench.corrupt.seeds": 1,
    "bench.corrupt.threads": 1,
    # 2: the pieces a cell is made of
    "bench.augment": 2, "bench.models": 2, "bench.evaluate": 2, "bench.objectives": 2,
    "bench.techniques": 2, "bench.pretrain": 2,
    # 3: suite YAML -> cells (validates names against the registries below it)
    "bench.config": 3, "bench.plugins": 3, "bench.search": 3, "bench.tpe": 3,
    # 4: fit, and scoring on corrupted sets
    "bench.train": 4, "bench.shift": 4, "bench.shift.cache": 4, "bench.shift.scoring": 4, "bench.ensemble": 4,
    # 5: runner (data -> fit -> score)
    "bench.runner": 5,
    # 6: tracking (MLflow), claims -- torch-free
    "bench.tracking": 6, "bench.claims": 6, "bench.mlflow_native": 6,
    # 7: executors and the driver
    "bench.executors": 7, "bench.executors.graph": 7, "bench.executors.simulate": 7, "bench.executors.estimate": 7,
    "bench.executors.resources": 7, "bench.executors.raysafe": 7, "bench.executors.worker": 7,
    "bench.executors.local": 7, "bench.executors.pool": 7, "bench.executors.ray_executor": 7, "bench.driver": 7,
    "bench.scaling": 0,  # a suite document scaled to a time budget, and back from the runs' tag (pure dicts)
    "bench.budget": 7,  # scales a suite to a time budget from speeds measured here, before the executor runs it
    "bench.shift.posthoc": 7,  # re-scores finished runs of a store: drives models and tracking like an executor
    # 8: the leaderboard (reads tracking's runs or a -runs.csv)
    **{f"leaderboard.{m}": 8 for m in ("__init__", "aggregate", "build", "collect", "endpoint", "findings", "format",
                                       "power", "profiles", "render", "selection", "shift", "trials")},
    "leaderboard": 8,
    # 9: entry points
    "bench.cli": 9, "bench.doctor": 9,
}
# what the leaderboard may import from bench: torch-free modules only (checked below without torch)
LEADERBOARD_MAY_USE = {"bench", "bench.catalog", "bench.errors", "bench.analysis", "bench.suitefile", "bench.datasets",
                       "bench.datafiles", "bench.registry", "bench.tracking", "bench.scaling"}
# The driver builds the leaderboard at the end of a suite: the one call from a lower layer up,
# made inside a function, after every run has ended (the flow still ends at the leaderboard).
ALLOWED_UPWARD = {("bench.driver", "leaderboard.build"), ("bench.driver", "leaderboard.power")}


def _modules() -> dict[str, Path]:
    out = {}
    for root in ("bench", "leaderboard"):
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every bench/leaderboard module a file imports, anywhere in it (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    mods = _modules()
    return {m for m in found if m in mods and m.split(".")[0] in ("bench", "leaderboard")}


def _layer(name: str) -> int:
    if name not in LAYERS:
        pytest.fail(f"module {name} has no layer: add it to tests/test_layers.py LAYERS")
    return LAYERS[name]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_imports_run_down_the_layers(name):
    path = _modules()[name]
    mine = _layer(name)
    up = sorted(m for m in _imports(path) if _layer(m) > mine and (name, m) not in ALLOWED_UPWARD)
    assert not up, f"{name} (layer {mine}) imports a higher layer: {[(m, LAYERS[m]) for m in up]}"


def test_no_import_cycle_at_module_level():
    """Module-level imports form no cycle (function-level ones are checked by the layers)."""
    graph = {}
    for name, path in _modules().items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in graph or d in _modules()} - {name}
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for d in graph.get(n, ()):
            if d.startswith(n + "."):  # a package importing its own submodule
                continue
            if state.get(d) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*stack, n, d])}")
            if not state.get(d):
                visit(d, [*stack, n])
        state[n] = 2

    for n in graph:
        if not state.get(n):
            visit(n, [])


def test_leaderboard_reaches_bench_only_through_torch_free_modules():
    used = set()
    for name, path in _modules().items():
        if name.startswith("leaderboard"):
            used |= {m for m in _imports(path) if m.startswith("bench")}
    assert used <= LEADERBOARD_MAY_USE, sorted(used - LEADERBOARD_MAY_USE)


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name in ("torchvision", "libauc", "medmnist"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from pathlib import Path
import leaderboard, leaderboard.build, leaderboard.collect, leaderboard.findings, leaderboard.power
import leaderboard.render, leaderboard.shift, leaderboard.selection, leaderboard.endpoint
from leaderboard.build import build_leaderboard
out = Path(sys.argv[1])
md = build_leaderboard("quick", out_dir=out, from_csv=Path("leaderboard/quick-runs.csv"), charts=True,
                       generated_at="2026-01-01 00:00 UTC")
assert "torch" not in sys.modules, "torch was imported"
print(md.name, len(md.read_text()))
"""


def test_a_leaderboard_renders_from_its_runs_csv_without_torch(tmp_path):
    """No torch, torchvision, libauc or medmnist importable: the committed quick runs still render."""
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("quick.md ")
    assert (tmp_path / "quick.md").read_text().count("|") > 50 and (tmp_path / "quick-breastmnist.png").is_file()
