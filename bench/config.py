"""Suite YAML -> validated, frozen cells.

A suite file may ``include:`` others (``_base.yaml`` holds every default once); included
files are merged first, the including file overrides (dicts merge key by key, lists and
scalars replace). The merged document is validated against :class:`SuiteSchema` (pydantic)
and the registries: an unknown key, dataset, objective, recipe or model, or a wrong type,
is a one-line :class:`ConfigError` naming the file, the key path and a did-you-mean.

A *cell* is one (dataset, recipe, model, aug, seed, protocol, fold) with everything
resolved. Its id is a short sha256 of its canonical JSON plus the data fingerprint and
the package version, so the same suite with the same code and data always gives the same
ids, and any change of hyperparameters gives new ones.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, create_model

from bench import __version__
from bench import analysis as AN
from bench import datasets as DS
from bench import schema as S
from bench import techniques as TQ
from bench.augment import aug_name
from bench.data import N_FOLDS, PROTOCOLS
from bench.errors import ConfigError
from bench.catalog import model_info
from bench.models import MODELS
from bench.objectives import OBJECTIVES
from bench.registry import did_you_mean, unknown
from bench.search import SearchSpec, expand_search
from bench.suitefile import load_merged, suite_path, suites_dir

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "bf16", "fp32")


# --------------------------------------------------------------------------- resolved config


@dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by every objective (defaults: ``suites/_base.yaml: train``)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    precision: str  # auto | bf16 | fp32
    patience: int  # early stopping on val AUC; 0 = off
    split_seed: int  # cv5 fold assignment; independent of the training seed
    voxel_scale: bool  # 3D shape masks: MedMNIST's x*U(0,1) in training, x*0.5 at eval
    ema: float  # EMA decay of weights evaluated/selected instead of the raw ones; 0 = off
    swa: float  # SWA: average the weights of the last `swa` share of epochs (0 = off; bench.train)
    tta: str  # test-time augmentation, applied identically to validation and test (bench.evaluate)
    deterministic: bool = False  # torch deterministic algorithms (+ cuBLAS workspace on GPU; bench.train)
    # How the arithmetic is laid out (bench.device.PATHS: fast | plain). Not part of the id: a path
    # changes only the order of floating-point sums, like the device; the run records the path it took.
    path: str = "fast"


@dataclass(frozen=True)
class Cell:
    """One benchmark cell, fully resolved. Picklable; nothing depends on the driver."""

    dataset: str
    recipe: str  # the name in the grid: an objective or a key of ``recipes``
    objective: str  # the objective family in ``bench.objectives``
    params: tuple  # sorted (name, value) pairs of the objective hyperparameters
    model: str
    aug: str  # a name in bench.augment.AUGMENTATIONS: off | on | medmnistc
    seed: int
    protocol: str
    fold: int | None
    train: TrainConfig
    init_from: str | None = None  # recipe whose finished cell initializes this one
    data_fingerprint: str = ""  # md5 of the data file (expected md5 when absent)
    size: int = DS.DEFAULT_SIZE  # image size in px (MedMNIST+ ships 28, 64, 128, 224)
    # A two-stage cell is a function of its source cell: the source's cell id (which holds *its*
    # source's id, recursively) and group id are part of this cell's identity (bench.config.with_source).
    source_id: str = ""
    source_group_id: str = ""
    # generalization techniques (bench.techniques): sorted (name, canonical value) pairs
    techniques: tuple = ()

    @property
    def params_dict(self) -> dict:
        return dict(self.params)

    def identity(self, with_seed_fold: bool = True) -> dict:
        d = dataclasses.asdict(self)
        d["params"] = [list(p) for p in self.params]
        d["version"] = __version__
        # Settings added after runs existed enter the id only when set, so the ids of cells that
        # do not use them stay what they were.
        if not self.train.deterministic:
            d["train"].pop("deterministic")
        d["train"].pop("path")
        if not self.techniques:
            d.pop("techniques")
        else:
            d["techniques"] = [[k, list(v) if isinstance(v, tuple) else v] for k, v in self.techniques]
        d.pop("source_id"), d.pop("source_group_id")
        if self.init_from:
            # fine-tuning cells also score their init checkpoint as a candidate ("epoch 0");
            # cells that ran before that rule have different results, hence a different id
            d["selection"] = "init-and-epochs"
            # Which checkpoint it starts from: change the source's epochs or LR and every
            # dependent cell gets a new id (and retrains) instead of being skipped as FINISHED.
            d["source"] = self.source_id if with_seed_fold else self.source_group_id
            if not self.source_id:
                raise ValueError(f"{self.run_name}: a two-stage cell needs its source's id (bench.config.with_source)")
        if not with_seed_fold:
            d.pop("seed")
            d.pop("fold")
        return d

    @property
    def cell_id(self) -> str:
        return digest(self.identity())

    @property
    def group_id(self) -> str:
        return digest(self.identity(with_seed_fold=False))

    @property
    def run_name(self) -> str:
        fold = f"f{self.fold}" if self.fold is not None else ""
        size = "" if self.size == DS.DEFAULT_SIZE else f"-{self.size}px"
        return f"{self.dataset}{size}-{self.recipe}-{AUG_TAG.get(self.aug, self.aug)}-s{self.seed}-{self.protocol}{fold}"

    def flat_params(self) -> dict:
        """MLflow params: flat names, strings."""
        out = {
            "dataset": self.dataset, "recipe": self.recipe, "objective": self.objective, "model": self.model,
            "aug": self.aug, "size": self.size, "seed": self.seed, "protocol": self.protocol,
            "fold": "" if self.fold is None else self.fold, "init_from": self.init_from or "",
        }
        out.update({k: v for k, v in dataclasses.asdict(self.train).items()})
        out.update({f"{self.objective}.{k}": v for k, v in self.params})
        out.update({f"technique.{k}": v for k, v in self.techniques})
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


AUG_TAG = {"off": "noaug", "on": "aug", "medmnistc": "medmnistc"}


def digest(obj) -> str:
    """Short sha256 of ``obj``'s canonical JSON: cell, group and ensemble ids."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResolvedRecipe:
    name: str
    objective: str
    params: tuple
    init_from: str | None
    train: tuple = ()  # (key, value) overrides of the train settings, e.g. fewer fine-tuning epochs
    model: str | None = None  # overrides the dataset's model (e.g. a CE recipe on ResNet-18+ACS)
    techniques: tuple = ()  # sorted (name, value) pairs (bench.techniques)


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    experiment: str
    runtime: str
    doc: dict = field(repr=False, hash=False, compare=False)
    reuse: tuple = ()  # experiments whose finished identical cells this suite counts as its own
    analysis: AN.Analysis = field(default_factory=AN.Analysis, repr=False, hash=False, compare=False)

    def cells(self, data_fingerprint=lambda flag, size=None: "") -> list[Cell]:
        return expand(self.doc, self.path, data_fingerprint)


def load_suite(name: str) -> Suite:
    path = suite_path(name)
    doc = load_merged(path)
    from bench.plugins import load_plugins  # before validation: plugins add names to the registries

    load_plugins(doc.get("plugins") or [], path)
    doc = expand_search(doc, path)  # search: -> one recipe per trial in the grid (bench.search)
    validate(doc, path)
    suite_name = doc.get("suite") or path.stem
    cells = expand(doc, path, lambda flag, size=None: "")  # validates names and the grid now, not mid-run
    if not cells:
        raise ConfigError(f"{path}: the grid expands to no cells; give every axis under 'grid' at least one value")
    analysis = check_analysis(doc, path, {c.protocol for c in cells})
    return Suite(
        name=suite_name,
        path=path,
        description=str(doc.get("description", "")).strip(),
        experiment=doc.get("experiment") or f"medauc-bench/{suite_name}",
        runtime=str(doc.get("runtime", "")).strip(),
        doc=doc,
        reuse=tuple(_reused_experiment(doc, path, name) for name in doc.get("reuse") or []),
        analysis=analysis,
    )


def check_analysis(doc: dict, path: Path, protocols: set[str]) -> AN.Analysis:
    """The validated ``analysis:`` block (bench.analysis): structure, then every name it uses."""
    analysis = AN.parse(doc.get("analysis"), str(path))
    AN.check_names(analysis, recipes=set(doc.get("recipes") or {}) | set(OBJECTIVES.names()), protocols=protocols,
                   where=str(path))
    return analysis


def _reused_experiment(doc: dict, path: Path, name) -> str:
    """A ``reuse:`` entry (a suite name) -> that suite's experiment."""
    if not isinstance(name, str):
        raise ConfigError(f"{path}: reuse entries must be suite names, got {name!r}")
    if name == (doc.get("suite") or path.stem):
        raise ConfigError(f"{path}: reuse cannot name the suite itself")
    other = load_merged(suite_path(name))  # unknown suites fail here with a did-you-mean
    return other.get("experiment") or f"medauc-bench/{other.get('suite') or name}"


def base_config() -> dict:
    """The merged and validated ``_base.yaml`` (the one place defaults live)."""
    path = suites_dir() / "_base.yaml"
    doc = load_merged(path)
    validate(doc, path)
    return doc


# --------------------------------------------------------------------------- validation
# The structure of a suite file (keys and types) is these pydantic models; names (datasets,
# objectives, models, recipes) are checked against the registries after them, since plugins add
# names. Errors are one line each (bench.schema.one_line). The models only check: cells are built
# from the YAML values themselves, so validation never changes a cell id.

Train = S.dataclass_model(TrainConfig, "Train", optional=True)  # train, finetune and their overrides


class Grid(BaseModel):
    """``grid:`` (and each block of ``grids:``): the axes; their values are checked in expand."""

    model_config = S.STRICT
    dataset: list = None
    recipe: list = None
    aug: list = None
    seed: list = None
    protocol: list = None


class Match(BaseModel):
    """``recipes.<name>.match``: hyperparameters taken from another recipe (bench.config._matched)."""

    model_config = S.STRICT
    recipe: str = None  # required, with its own message in _matched
    params: Any = "all"  # "all" or a list of names: checked in _matched


class RecipeSpec(BaseModel):
    """``recipes.<name>`` and ``datasets.<flag>.recipes.<name>`` (merged key by key before use)."""

    model_config = S.STRICT
    objective: str = None  # required after the per-dataset merge: resolve_recipe says so
    init_from: str = None
    params: dict[str, Any] = None  # checked against the objective's Params in resolve_recipe
    train: Train = None
    description: str = None
    model: str = None
    match: Match = None
    techniques: dict[str, Any] = None  # technique name -> value: checked in bench.techniques.resolve


class DatasetSpec(BaseModel):
    """``datasets.<flag>``: per-dataset overrides."""

    model_config = S.STRICT
    model: str = None
    size: int = None
    train: Train = None
    finetune: Train = None
    objectives: dict[str, dict[str, Any]] | None = None
    recipes: dict[str, RecipeSpec] | None = None


Models = create_model("Models", __config__=S.STRICT, **{k: (str, None) for k in ("2d", "3d", "2d_large")})


class Budget(BaseModel):
    """``budget``: the floors ``--budget-minutes`` keeps when it scales epochs down (bench.budget)."""

    model_config = S.STRICT
    min_epochs: int = None
    min_finetune_epochs: int = None
    min_seeds: int = None


class SuiteSchema(BaseModel):
    """A whole (merged) suite file."""

    model_config = S.STRICT
    suite: str = None
    description: str = None
    experiment: str = None
    runtime: str = None
    reuse: list = None  # suite names whose experiments' identical finished cells count (entries: _reused_experiment)
    ensembles: bool = None  # also log a seed ensemble per official-split group (bench.ensemble)
    plugins: list = None  # modules or .py files that register objectives/models/datasets (bench.plugins)
    size: int = None  # image size in px for every dataset (default 28; MedMNIST+ has 64/128/224)
    shift: bool = None  # score each cell's selected model on corrupted test sets (bench.shift)
    grid: Grid = None
    grids: list[Grid] | None = None  # partial grids laid over ``grid`` (non-empty: expand)
    train: Train = None
    finetune: Train = None  # train overrides of every init_from recipe
    models: Models = None
    objectives: dict[str, dict[str, Any]] | None = None  # per objective: checked against its Params in resolve_recipe
    recipes: dict[str, RecipeSpec] | None = None
    datasets: dict[str, DatasetSpec] | None = None
    analysis: AN.Analysis | None = None  # roles, controls and endpoints (bench.analysis)
    resources: Any = None  # executor resources per cell (bench.executors.resources)
    checkpoints: str = None  # all | needed: which runs keep model.pt (bench.executors.graph)
    search: SearchSpec = None  # declared search spaces, expanded into trial recipes at load (bench.search)
    budget: Budget = None  # floors of --budget-minutes (bench.budget)


def _no_family(doc: dict, path: Path) -> None:
    """``recipes.<name>.family`` was how roles were declared once; point to their one place now."""
    datasets = doc.get("datasets") if isinstance(doc.get("datasets"), dict) else {}
    specs = [("recipes", doc.get("recipes"))]
    specs += [(f"datasets.{flag}.recipes", over.get("recipes")) for flag, over in datasets.items() if isinstance(over, dict)]
    for where, recipes in specs:
        for name, spec in (recipes.items() if isinstance(recipes, dict) else ()):
            if isinstance(spec, dict) and "family" in spec:
                raise ConfigError(f"{path}: {where}.{name}.family: a recipe's role is declared once, in "
                                  f"analysis.families (e.g. analysis: {{families: {{dam: [{name}]}}}}); remove it here")


def validate(doc: dict, path: Path) -> SuiteSchema:
    """The structure of a merged suite file (:class:`SuiteSchema`), then the names it uses."""
    _no_family(doc, path)
    checked = S.check(SuiteSchema, doc, str(path))
    for flag, over in (doc.get("datasets") or {}).items():
        if flag not in DS.DATASETS:
            raise unknown("dataset", flag, DS.names(), where=f"{path}: datasets")
        if "model" in over:
            MODELS.get(over["model"], where=f"{path}: datasets.{flag}.model")
    for name in (doc.get("objectives") or {}):
        OBJECTIVES.get(name, where=f"{path}: objectives")
    for dim, name in (doc.get("models") or {}).items():
        MODELS.get(name, where=f"{path}: models.{dim}")
    for key in ("train", "finetune"):
        train = doc.get(key) or {}
        if "precision" in train and train["precision"] not in PRECISIONS:
            raise unknown("precision", train["precision"], PRECISIONS, where=f"{path}: {key}.precision")
        if "path" in train:
            from bench.device import PATHS

            PATHS.get(train["path"], where=f"{path}: {key}.path")
        if "tta" in train:
            from bench.evaluate import TTA

            TTA.get(train["tta"], where=f"{path}: {key}.tta")
    return checked


# --------------------------------------------------------------------------- resolution


def resolve_recipe(doc: dict, name: str, dataset: str, path: Path, _seen: tuple = ()) -> ResolvedRecipe:
    """A grid 'recipe' entry -> objective family + hyperparameters (+ init_from)."""
    recipes = doc.get("recipes") or {}
    per_dataset = ((doc.get("datasets") or {}).get(dataset) or {}).get("recipes") or {}
    for other in per_dataset:
        if other not in recipes:
            raise unknown("recipe", other, list(recipes), where=f"{path}: datasets.{dataset}.recipes")
    if name in recipes:
        spec = recipes[name]
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: recipes.{name} must be a mapping")
        if name in per_dataset:  # datasets.<flag>.recipes.<name>: params and train merge key by key
            over = per_dataset[name]
            if not isinstance(over, dict):
                raise ConfigError(f"{path}: datasets.{dataset}.recipes.{name} must be a mapping")
            spec = {**spec, **over, **{k: {**(spec.get(k) or {}), **(over.get(k) or {})}
                                       for k in ("params", "train") if k in over}}
        _no_family({"recipes": {name: spec}}, path)
        S.check(RecipeSpec, spec, str(path), ("recipes", name))
        if "model" in spec:
            MODELS.get(spec["model"], where=f"{path}: recipes.{name}.model")
        if "objective" not in spec:
            raise ConfigError(f"{path}: recipes.{name} needs 'objective' (one of {', '.join(OBJECTIVES.names())})")
        family, over, init_from = spec["objective"], spec.get("params", {}) or {}, spec.get("init_from")
        train, model = tuple(sorted((spec.get("train") or {}).items())), spec.get("model")
        techniques = spec.get("techniques")
    elif name in OBJECTIVES:
        family, over, init_from, train, model, techniques = name, {}, None, (), None, None
    else:
        raise unknown("objective or recipe", name, [*OBJECTIVES.names(), *recipes], where=f"{path}: grid.recipe")
    cls = OBJECTIVES.get(family, where=f"{path}: recipes.{name}.objective")
    techniques = TQ.resolve(techniques, TQ.Where(name, family, cls.bce, init_from, DS.dims_of(dataset), path))
    values = dict((doc.get("objectives") or {}).get(family, {}))
    values.update(((doc.get("datasets") or {}).get(dataset, {}).get("objectives") or {}).get(family, {}) or {})
    values.update(over)
    if name in recipes and "match" in spec:
        values.update(_matched(doc, name, spec, cls, dict(over), init_from, train, dataset, path, _seen, techniques))
    params = cls.params(values, where=f"{path} ({name} on {dataset})")
    if init_from is not None and init_from not in OBJECTIVES and init_from not in recipes:
        raise unknown("init_from recipe", init_from, [*OBJECTIVES.names(), *recipes], where=f"{path}: recipes.{name}")
    if init_from == name:
        raise ConfigError(f"{path}: recipes.{name}.init_from cannot name the recipe itself")
    return ResolvedRecipe(name, family, tuple(sorted(dataclasses.asdict(params).items())), init_from, train, model,
                          techniques)


def _matched(doc: dict, name: str, spec: dict, cls, own: dict, init_from, train: tuple, dataset: str, path: Path,
             seen: tuple, techniques: tuple = ()) -> dict:
    """``recipes.<name>.match: {recipe: R, params: [..] | all}``: take those hyperparameters from
    recipe R *as resolved for this dataset* (after every override), so a control stays matched to
    its treatment when a suite or dataset retunes the treatment. A matched control must start from
    the same source with the same fine-tuning budget, and may not set a matched value itself."""
    match = spec["match"]
    where = f"{path}: recipes.{name}.match"
    if "recipe" not in match:
        raise ConfigError(f"{where} needs 'recipe' (the treatment it is matched to)")
    target_name = match["recipe"]
    if target_name == name or target_name in seen:
        raise ConfigError(f"{where}: a recipe cannot be matched to itself (cycle {' -> '.join((*seen, name, target_name))})")
    target = resolve_recipe(doc, target_name, dataset, path, _seen=(*seen, name))
    target_params = dict(target.params)
    mine = {f.name for f in dataclasses.fields(cls.Params)}
    shared = [k for k in target_params if k in mine]
    wanted = match.get("params", "all")
    if wanted == "all":
        wanted = shared
    if not isinstance(wanted, list) or not all(isinstance(k, str) for k in wanted):
        raise ConfigError(f"{where}.params must be 'all' or a list of hyperparameter names, got {wanted!r}")
    for k in wanted:
        if k not in shared:
            raise ConfigError(f"{where}.params: '{k}' is not a hyperparameter of both '{cls.name}' and "
                              f"'{target.objective}'{did_you_mean(k, shared)}; shared: {', '.join(shared)}")
        if k in own:
            raise ConfigError(f"{path}: recipes.{name}.params.{k} contradicts match: the value comes from "
                              f"'{target_name}' ({target_params[k]!r}); remove it")
    if target.init_from != init_from or tuple(target.train) != tuple(train):
        raise ConfigError(f"{where}: '{name}' and '{target_name}' must start from the same source (init_from) with the "
                          f"same train overrides to be matched ({init_from!r} vs {target.init_from!r})")
    if target.techniques != techniques:
        raise ConfigError(f"{where}: '{name}' and '{target_name}' must use the same techniques to be matched "
                          f"({dict(techniques)} vs {dict(target.techniques)})")
    return {k: target_params[k] for k in wanted}


def resolve_train(doc: dict, dataset: str, path: Path, recipe_train: tuple = (), finetune: bool = False) -> TrainConfig:
    """train <- datasets.<flag>.train [<- finetune <- datasets.<flag>.finetune] <- recipes.<name>.train.

    ``finetune`` settings apply to every ``init_from`` recipe alike, so the fine-tuning arms of a
    comparison (e.g. ``ce_ft`` and ``aucm_ft``) get the same budget by construction.
    """
    per_dataset = (doc.get("datasets") or {}).get(dataset, {})
    values = dict(doc.get("train") or {})
    values.update(per_dataset.get("train") or {})
    if finetune:
        values.update(doc.get("finetune") or {})
        values.update(per_dataset.get("finetune") or {})
    values.update(dict(recipe_train))
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in values]
    if missing:
        raise ConfigError(f"{path}: train settings {missing} missing (they belong in suites/_base.yaml)")
    cfg = TrainConfig(**values)
    if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.eval_batch_size < 1:
        raise ConfigError(f"{path}: train.epochs must be >= 1 and train.batch_size >= 2 (got {cfg.epochs}, {cfg.batch_size})")
    if not 0.0 <= cfg.ema < 1.0:
        raise ConfigError(f"{path}: train.ema must be in [0, 1), got {cfg.ema}")
    if not 0.0 <= cfg.swa < 1.0:
        raise ConfigError(f"{path}: train.swa must be in [0, 1) (the share of final epochs to average), got {cfg.swa}")
    if cfg.swa and cfg.ema:
        raise ConfigError(f"{path}: train.swa and train.ema both average weights; set one of them to 0")
    return cfg


def resolve_size(doc: dict, dataset: str, path: Path) -> int:
    size = ((doc.get("datasets") or {}).get(dataset, {})).get("size", doc.get("size", DS.DEFAULT_SIZE))
    sizes = DS.DATASETS.get(dataset).sizes
    if size not in sizes:
        raise ConfigError(f"{path}: {dataset} has no {size} px files; choose size from {', '.join(map(str, sizes))}")
    return size


def resolve_model(doc: dict, dataset: str, path: Path, size: int = DS.DEFAULT_SIZE) -> str:
    """datasets.<flag>.model, else models.3d for 3D, models.2d at 28 px and models.2d_large above
    (the ImageNet-style ResNet the paper uses for larger inputs)."""
    over = (doc.get("datasets") or {}).get(dataset, {})
    if "model" in over:
        return over["model"]
    dims = DS.dims_of(dataset)
    key = "3d" if dims == 3 else ("2d" if size == DS.DEFAULT_SIZE else "2d_large")
    name = (doc.get("models") or {}).get(key)
    if not name:
        raise ConfigError(f"{path}: no model for {dataset}; set models.{key} in suites/_base.yaml")
    return name


def _axis(doc: dict, key: str, path: Path, check) -> list:
    values = (doc.get("grid") or {}).get(key)
    if values is None:
        raise ConfigError(f"{path}: grid.{key} is missing; list at least one value")
    if not values:
        raise ConfigError(f"{path}: grid.{key} is empty, so the grid has no cells; list at least one value")
    for v in values:
        check(v)
    return list(dict.fromkeys(values))  # keep order, drop duplicates


def expand(doc: dict, path: Path, data_fingerprint) -> list[Cell]:
    """The grid's cells, in a stable order; ``cv5`` expands to folds 0-4.

    With ``grids:`` (a list of partial grids, each laid over ``grid``) the cells are the union
    of the blocks, in order: e.g. a study that pairs each dataset with its own selected recipe.
    """
    blocks = doc.get("grids")
    if blocks is None:
        return _expand_grid(doc, path, data_fingerprint)
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{path}: 'grids' must be a non-empty list of partial grids")
    cells: dict[str, Cell] = {}
    for i, block in enumerate(blocks):
        S.check(Grid, block, str(path), ("grids", i))
        for c in _expand_grid({**doc, "grid": {**(doc.get("grid") or {}), **block}}, path, data_fingerprint):
            cells.setdefault(c.cell_id, c)
    return list(cells.values())


def _expand_grid(doc: dict, path: Path, data_fingerprint) -> list[Cell]:

    def is_aug(v):
        aug_name(v, where=f"{path}: grid.aug")

    def is_seed(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{path}: grid.seed values must be integers >= 0, got {v!r}")

    def is_dataset(v):
        if v not in DS.DATASETS:
            raise unknown("dataset", v, DS.names(), where=f"{path}: grid.dataset")

    def is_protocol(v):
        if v not in PROTOCOLS:
            raise unknown("protocol", v, PROTOCOLS, where=f"{path}: grid.protocol")

    datasets = _axis(doc, "dataset", path, is_dataset)
    recipes = _axis(doc, "recipe", path, lambda v: None)
    augs = list(dict.fromkeys(aug_name(a) for a in _axis(doc, "aug", path, is_aug)))
    seeds = _axis(doc, "seed", path, is_seed)
    protocols = _axis(doc, "protocol", path, is_protocol)
    folds = [(p, None) if p == "official" else (p, k) for p in protocols for k in (range(N_FOLDS) if p == "cv5" else [None])]
    cells = []
    for ds in datasets:
        size = resolve_size(doc, ds, path)
        dataset_model = resolve_model(doc, ds, path, size)
        dims = DS.dims_of(ds)
        if dims == 3 and "medmnistc" in augs:
            raise ConfigError(f"{path}: aug 'medmnistc' (MedMNIST-C corruptions) exists for 2D datasets only, not {ds}")
        fp = _fingerprint(data_fingerprint, ds, size)
        resolved = [(rec, resolve_train(doc, ds, path, rec.train, rec.init_from is not None))
                    for rec in (resolve_recipe(doc, r, ds, path) for r in recipes)]
        for (rec, train), aug, seed, (proto, fold) in itertools.product(resolved, augs, seeds, folds):
            model = _recipe_model(doc, rec, ds, path, dataset_model)
            if model_info(model).dims != dims:
                raise ConfigError(f"{path}: model '{model}' is {model_info(model).dims}D but {ds} needs a {dims}D model")
            if rec.techniques:
                TQ.check_cell(rec.techniques, model, ds, size, f"{path}: recipes.{rec.name}.techniques ({ds})")
            cell = Cell(ds, rec.name, rec.objective, rec.params, model, aug, seed, proto, fold, train,
                        rec.init_from, fp, size, techniques=rec.techniques)
            cells.append(with_source(doc, path, cell) if rec.init_from else cell)
    return cells


def _recipe_model(doc: dict, rec: ResolvedRecipe, dataset: str, path: Path, default: str) -> str:
    """A recipe's own model, else -- for a fine-tuning recipe -- its source's (a checkpoint only
    loads into the architecture it came from), else the dataset's."""
    seen = set()
    while rec.model is None and rec.init_from and rec.init_from not in seen:
        seen.add(rec.name)
        rec = resolve_recipe(doc, rec.init_from, dataset, path)
    return rec.model or default


def _fingerprint(data_fingerprint, flag: str, size: int) -> str:
    """``data_fingerprint(flag)`` for 28 px (the common case), ``(flag, size)`` otherwise."""
    return data_fingerprint(flag) if size == DS.DEFAULT_SIZE else data_fingerprint(flag, size)


def source_cell(doc: dict, path: Path, cell: Cell, _depth: int = 0) -> Cell:
    """The cell whose checkpoint initializes ``cell``: the ``init_from`` recipe on the same
    dataset, model, aug, seed, protocol and fold, with *its own* train settings (and, when it is
    itself a two-stage cell, its own source)."""
    if _depth > 16:
        raise ConfigError(f"{path}: init_from chain of '{cell.recipe}' is a cycle or deeper than 16 stages")
    rec = resolve_recipe(doc, cell.init_from, cell.dataset, path)
    src = dataclasses.replace(cell, recipe=rec.name, objective=rec.objective, params=rec.params,
                              init_from=rec.init_from, model=rec.model or cell.model,
                              train=resolve_train(doc, cell.dataset, path, rec.train, rec.init_from is not None),
                              source_id="", source_group_id="", techniques=rec.techniques)
    return with_source(doc, path, src, _depth + 1) if src.init_from else src


def with_source(doc: dict, path: Path, cell: Cell, _depth: int = 0) -> Cell:
    """``cell`` with its source's cell and group ids filled in (recursively, through the source's own source)."""
    src = source_cell(doc, path, cell, _depth)
    return dataclasses.replace(cell, source_id=src.cell_id, source_group_id=src.group_id)
