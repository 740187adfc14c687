import pytest

from bench.config import Cell, load_suite
from bench.suitefile import available_suites
from bench.errors import ConfigError

GOOD = """
include: _base.yaml
suite: t
train: {epochs: 1}
grid: {dataset: [breastmnist], recipe: [ce, aucm], aug: [false, true], seed: [0, 1], protocol: [official]}
"""


@pytest.mark.parametrize("name", available_suites())
def test_shipped_suites_load(name):
    s = load_suite(name)
    assert s.runtime and s.description
    assert s.cells()


def test_shipped_suite_names():
    assert {"smoke", "quick", "full"} <= set(available_suites())


def test_grid_expansion_counts():
    assert len(load_suite("smoke").cells()) == 2
    assert len(load_suite("quick").cells()) == 15
    assert len(load_suite("objectives").cells()) == 30
    # 7 datasets x (5 objectives + 2 two-stage DAM recipes + the ce_ft control) x 2 aug x 3 seeds x (official + 5 folds)
    assert len(load_suite("full").cells()) == 7 * 8 * 2 * 3 * 6


def test_full_suite_uses_paper_models():
    cells = load_suite("full").cells()
    assert {c.model for c in cells if c.dataset.endswith("3d")} == {"resnet18_3d"}
    assert {c.model for c in cells if not c.dataset.endswith("3d")} == {"resnet18_28"}
    assert {c.train.batch_size for c in cells if c.dataset.endswith("3d")} == {32}
    assert {c.train.epochs for c in cells if not c.init_from} == {100}


def test_cell_ids_are_stable_and_distinct(suites):
    suites("t", GOOD)
    a, b = load_suite("t").cells(), load_suite("t").cells()
    assert [c.cell_id for c in a] == [c.cell_id for c in b]
    assert len({c.cell_id for c in a}) == len(a) == 8
    # seeds of one configuration share a group id
    assert len({c.group_id for c in a}) == 4


def test_cell_id_changes_with_hyperparameters(suites):
    suites("t", GOOD)
    suites("t2", GOOD + "objectives: {aucm: {lr: 0.05}}\n")
    ids1 = {c.run_name: c.cell_id for c in load_suite("t").cells()}
    ids2 = {c.run_name: c.cell_id for c in load_suite("t2").cells()}
    same = [k for k in ids1 if ids1[k] == ids2[k]]
    assert same and all(k.split("-")[1] == "ce" for k in same)


def test_cell_id_changes_with_data(suites):
    suites("t", GOOD)
    a = load_suite("t").cells(lambda f: "aaa")
    b = load_suite("t").cells(lambda f: "bbb")
    assert a[0].cell_id != b[0].cell_id


def test_cells_are_frozen_and_picklable(suites):
    import pickle

    suites("t", GOOD)
    c = load_suite("t").cells()[0]
    assert pickle.loads(pickle.dumps(c)) == c
    with pytest.raises(Exception):
        c.seed = 3  # type: ignore[misc]


def test_cv5_expands_to_five_folds(suites):
    suites("t", GOOD.replace("protocol: [official]", "protocol: [official, cv5]"))
    cells = load_suite("t").cells()
    assert sorted({c.fold for c in cells if c.protocol == "cv5"}) == [0, 1, 2, 3, 4]
    assert len(cells) == 8 * 6


@pytest.mark.parametrize(
    "text, match",
    [
        (GOOD + "trian: {epochs: 2}\n", r"t\.yaml: unknown key 'trian' \(did you mean 'train'\?\)"),
        (GOOD + "train: {epoch: 2}\n", r"unknown key 'train\.epoch' \(did you mean 'epochs'\?\)"),
        (GOOD.replace("breastmnist]", "breastmnst]"), r"unknown dataset 'breastmnst' in .*grid\.dataset \(did you mean 'breastmnist'\?\)"),
        (GOOD.replace("[ce, aucm]", "[ce, acum]"), r"unknown objective or recipe 'acum'.*\(did you mean 'aucm'\?\)"),
        (GOOD + "models: {2d: resnet18_82}\n", r"unknown model 'resnet18_82'.*models\.2d"),
        (GOOD + "train: {epochs: many}\n", r"'train\.epochs' must be an int, got 'many'"),
        (GOOD.replace("seed: [0, 1]", "seed: [zero]"), r"grid\.seed values must be integers"),
        (GOOD.replace("seed: [0, 1]", "seed: []"), r"grid\.seed is empty"),
        (GOOD + "objectives: {aucm: {margn: 1.0}}\n", r"unknown hyperparameter 'margn'.*did you mean 'margin'"),
        (GOOD.replace("protocol: [official]", "protocol: [cv10]"), r"unknown protocol 'cv10'"),
        (GOOD + "train: {precision: fp16}\n", r"unknown precision 'fp16'"),
        (GOOD.replace("include: _base.yaml", "include: _bse.yaml"), r"included file '_bse\.yaml' not found"),
    ],
)
def test_validation_errors_name_file_key_and_suggestion(suites, text, match):
    path = suites("t", text)
    with pytest.raises(ConfigError, match=match) as e:
        load_suite("t")
    assert str(path) in str(e.value) or "t.yaml" in str(e.value)
    assert "\n" not in str(e.value)


# The suite schema (bench.config.SuiteSchema, pydantic) reports its first problem as one line: the
# file, the key path, what is wrong and what to write instead (a did-you-mean, the keys known there).
@pytest.mark.parametrize("extra, key_path, hint", [
    ("descripton: a suite", "'descripton'", "did you mean 'description'?"),  # unknown top-level key
    ("train: {batch_sise: 8}", "'train.batch_sise'", "did you mean 'batch_size'?"),
    ("finetune: {epoch: 2}", "'finetune.epoch'", "did you mean 'epochs'?"),
    ("train: {epochs: 2.5}", "'train.epochs'", "must be an int, got 2.5"),  # wrong types
    ("train: {ema: fast}", "'train.ema'", "must be a number, got 'fast'"),
    ("train: {tta: 1}", "'train.tta'", "must be a str, got 1"),
    ("train: {voxel_scale: 1}", "'train.voxel_scale'", "must be a bool, got 1"),
    ("train: {epochs: true}", "'train.epochs'", "must be an int, got True"),  # a bool is not an int
    ("size: false", "'size'", "must be an int, got False"),
    ("train: {swa: .nan}", "'train.swa'", "must be a finite number, got nan"),
    ("models: {2D: resnet18_28}", "'models.2D'", "did you mean '2d'?"),
    ("grid: {seeds: [0]}", "'grid.seeds'", "did you mean 'seed'?"),
    ("recipes: {ft: {objective: aucm, init_from: ce, parms: {lr: 0.1}}}", "'recipes.ft.parms'",
     "did you mean 'params'?"),  # unknown key in recipes.X
    ("recipes: {ft: {objective: aucm, match: {recipe: ce, param: all}}}", "'recipes.ft.match.param'",
     "did you mean 'params'?"),
    ("recipes: {ft: [aucm]}", "'recipes.ft'", "must be a mapping, got ['aucm']"),
    ("datasets: {breastmnist: {modle: resnet18_28}}", "'datasets.breastmnist.modle'",
     "did you mean 'model'?"),  # unknown key in datasets.X
    ("datasets: {breastmnist: {train: {epochz: 3}}}", "'datasets.breastmnist.train.epochz'", "did you mean 'epochs'?"),
    ("datasets: {breastmnist: {recipes: {ce: {trian: {}}}}}\nrecipes: {ce: {objective: ce}}",
     "'datasets.breastmnist.recipes.ce.trian'", "did you mean 'train'?"),
    ("datasets: {breastmnist: {size: '28'}}", "'datasets.breastmnist.size'", "must be an int, got '28'"),
    ("objectives: {aucm: null}", "'objectives.aucm'", "must be a mapping, got None"),
    ("objectives: {aucm: {lr: .inf}}", "aucm.lr", "expected a finite number, got inf"),  # non-finite hyperparameter
    ("objectives: {aucm: {decay_epochs: [0.5, .nan]}}", "aucm.decay_epochs", "expected a list of finite numbers"),
    ("objectives: {aucm: {lr: true}}", "aucm.lr", "expected a number, got True"),
    ("objectives: {aucm: {margn: 1.0}}", "'margn' for objective 'aucm'", "did you mean 'margin'?"),
    ("analysis: {primay: {control: ce}}", "'analysis.primay'", "did you mean 'primary'?"),  # analysis: is in the schema
    ("analysis: {decompose: {aucm: {adm: ce}}}", "'analysis.decompose.aucm.adm'", "did you mean 'adam'?"),
    ("analysis: {controls: ce}", "'analysis.controls'", "must be a list, got 'ce'"),
    ("analysis: {primary: {control: ce, selection: best}}", "'analysis.primary.selection'", "'gated' or 'ungated'"),
    ("analysis: {power: {alpha: 0.1}}", "'analysis.power.pilot'", "is required"),
    ("grids: [{dataset: [breastmnist], recip: [ce]}]", "'grids[0].recip'", "did you mean 'recipe'?"),
])
def test_schema_errors_are_one_line_with_key_path_and_suggestion(suites, extra, key_path, hint):
    path = suites("t", GOOD + extra + "\n")
    with pytest.raises(ConfigError) as e:
        load_suite("t")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg  # never pydantic's multi-line dump
    assert str(path) in msg and key_path in msg and hint in msg, msg
    assert "validation error" not in msg and "errors.pydantic.dev" not in msg


def test_unknown_keys_list_the_known_ones(suites):
    suites("t", GOOD + "train: {epoch: 2}\n")
    with pytest.raises(ConfigError, match=r"known keys here: epochs, batch_size, eval_batch_size, precision, patience"):
        load_suite("t")


def test_the_train_schema_is_the_train_config_fields():
    import dataclasses

    from bench.config import SuiteSchema, Train, TrainConfig

    assert list(Train.model_fields) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert SuiteSchema.model_fields["train"].annotation is Train


def test_validation_leaves_the_values_cells_are_built_from(suites):
    """The schema checks; it does not convert: ``ema: 0`` stays the int 0 a cell id was computed from."""
    suites("t", GOOD + "train: {ema: 0}\n")
    s = load_suite("t")
    assert s.doc["train"]["ema"] == 0 and type(s.doc["train"]["ema"]) is int
    assert type(s.cells()[0].train.ema) is int


def test_invalid_yaml_names_line(suites):
    suites("t", GOOD + "grid: {dataset: [breastmnist\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: line \d+, column \d+: invalid YAML"):
        load_suite("t")


def test_unsafe_yaml_is_refused(suites):
    suites("t", GOOD + "description: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_suite("t")


def test_unknown_suite_lists_available():
    with pytest.raises(ConfigError, match=r"unknown suite 'quik'.*did you mean 'quick'.*smoke"):
        load_suite("quik")


def test_include_cycle(suites):
    suites("a", "include: b.yaml\n")
    suites("b", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_suite("a")


def test_recipes_and_init_from(suites):
    suites("t", GOOD.replace("[ce, aucm]", "[ce, aucm_ft]") + """
recipes:
  aucm_ft: {objective: aucm, init_from: ce, params: {lr: 0.05}}
""")
    cells = [c for c in load_suite("t").cells() if c.recipe == "aucm_ft"]
    assert cells and all(c.objective == "aucm" and c.init_from == "ce" and c.params_dict["lr"] == 0.05 for c in cells)


def test_recipe_train_overrides_and_source_cell(suites):
    from bench.config import source_cell

    suites("t", GOOD.replace("[ce, aucm]", "[ce, aucm_ft]") + """
recipes:
  aucm_ft: {objective: aucm, init_from: ce, train: {epochs: 7}}
""")
    s = load_suite("t")
    ft = [c for c in s.cells() if c.recipe == "aucm_ft"][0]
    assert ft.train.epochs == 7
    src = source_cell(s.doc, s.path, ft)
    ce = [c for c in s.cells() if c.recipe == "ce" and c.aug == ft.aug and c.seed == ft.seed][0]
    assert src == ce and src.train.epochs == 1  # the source keeps its own epochs


def test_model_dimension_mismatch(suites):
    suites("t", GOOD + "models: {2d: resnet18_3d}\n")
    with pytest.raises(ConfigError, match="3D but breastmnist needs a 2D model"):
        load_suite("t")


def test_flat_params_are_mlflow_friendly(suites):
    suites("t", GOOD)
    c: Cell = load_suite("t").cells()[1]
    p = c.flat_params()
    assert p["dataset"] == "breastmnist" and "aucm.epoch_decay" in p or "ce.lr" in p
    assert all("." not in k or k.split(".")[0] == c.objective for k in p)


STUDY = """
include: _base.yaml
suite: st
models: {3d: resnet18_3d_tiny}
recipes:
  ft: {objective: aucm, init_from: ce, params: {lr: 0.05}, train: {epochs: 20}}
  ft2: {objective: compauc, init_from: ce, train: {epochs: 20}}
datasets:
  adrenalmnist3d: {train: {epochs: 12}, recipes: {ft: {params: {margin: 0.6}, train: {epochs: 4}}}}
grid: {aug: [false], seed: [0, 1], protocol: [official]}
grids:
  - {dataset: [breastmnist], recipe: [ce, ft]}
  - {dataset: [adrenalmnist3d], recipe: [ce, ft2]}
  - {dataset: [adrenalmnist3d], recipe: [ce]}
"""


def test_grids_are_a_union_of_blocks_with_per_dataset_recipe_overrides(suites):
    suites("st", STUDY)
    cells = load_suite("st").cells()
    pairs = sorted({(c.dataset, c.recipe) for c in cells})
    assert pairs == [("adrenalmnist3d", "ce"), ("adrenalmnist3d", "ft2"), ("breastmnist", "ce"), ("breastmnist", "ft")]
    assert len(cells) == 4 * 2  # the repeated adrenal ce block adds no duplicate cell
    assert len({c.cell_id for c in cells}) == len(cells)
    suites("st2", STUDY.replace("ft2]", "ft]").replace("suite: st", "suite: st2"))
    ft = {c.dataset: c for c in load_suite("st2").cells() if c.recipe == "ft"}
    # datasets.<flag>.recipes.<name> merges params and train key by key, for that dataset only
    assert ft["adrenalmnist3d"].params_dict["margin"] == 0.6 and ft["adrenalmnist3d"].params_dict["lr"] == 0.05
    assert ft["adrenalmnist3d"].train.epochs == 4 and ft["breastmnist"].train.epochs == 20
    assert ft["breastmnist"].params_dict["margin"] == 1.0


@pytest.mark.parametrize("text,match", [
    ("grids: [{dataset: [breastmnist], recip: [ce]}]", r"grids\[0\]\.recip'.*did you mean 'recipe'"),
    ("grids: []", "non-empty list"),
    ("datasets: {breastmnist: {recipes: {fx: {train: {epochs: 2}}}}}", "unknown recipe 'fx'.*did you mean 'ft'"),
    ("reuse: [smok]", "did you mean 'smoke'"),
])
def test_study_keys_are_validated(suites, text, match):
    suites("smoke", "include: _base.yaml\nsuite: smoke\n")
    suites("v", GOOD.replace("suite: t", "suite: v") + "recipes: {ft: {objective: aucm, init_from: ce}}\n" + text + "\n")
    with pytest.raises(ConfigError, match=match):
        load_suite("v").cells()


def test_the_grid_axis_is_recipe_and_objective_is_a_deprecated_alias(suites, caplog):
    suites("new", GOOD)
    suites("old", GOOD.replace("suite: t", "suite: old").replace("recipe: [ce, aucm]", "objective: [ce, aucm]"))
    with caplog.at_level("WARNING"):
        old = load_suite("old")
    assert "grid.objective is deprecated: call the axis 'recipe'" in caplog.text
    assert [c.cell_id for c in old.cells()] == [c.cell_id for c in load_suite("new").cells()]
    suites("both", GOOD.replace("recipe: [ce, aucm]", "objective: [ce], recipe: [aucm]"))
    with pytest.raises(ConfigError, match=r"grid has both 'recipe' and 'objective'"):
        load_suite("both")
