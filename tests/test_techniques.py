"""Generalization techniques (bench.techniques, bench.pretrain): each is validated, enters the
cell id only when set, and changes training as its docstring claims."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from bench import data as D
from bench import techniques as TQ
from bench.config import base_config, expand, load_suite
from bench.errors import ConfigError, DataError
from bench.models import create_model
from bench.suitefile import deep_merge, suites_dir
from bench.train import fit
from tests.conftest import fit_quietly as _fit
from tests.conftest import make_npz


def _doc(recipes: dict, grid_recipes: list, flag="breastmnist", **extra):
    return deep_merge(base_config(), {
        "recipes": recipes, "train": {"epochs": 1, "batch_size": 16, "precision": "fp32"},
        "grid": {"dataset": [flag], "recipe": grid_recipes, "aug": [False], "seed": [0], "protocol": ["official"]},
        **extra})


def _cells(recipes: dict, grid_recipes: list, **kw):
    return expand(_doc(recipes, grid_recipes, **kw), suites_dir() / "_base.yaml", lambda f, s=None: "")




# ----------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", TQ.TECHNIQUES.names())
def test_every_technique_says_what_and_why(name):
    doc = TQ.TECHNIQUES.get(name).__doc__
    assert doc and len(doc.strip().splitlines()) >= 3, f"{name}: docstring says what, how and why"
    assert "Args" in doc or "Values" in doc


def test_unknown_technique_is_one_line_with_a_did_you_mean():
    with pytest.raises(ConfigError) as e:
        _cells({"ce_x": {"objective": "ce", "techniques": {"dropuot": 0.3}}}, ["ce_x"])
    msg = str(e.value)
    assert "\n" not in msg and "unknown technique 'dropuot'" in msg and "did you mean 'dropout'" in msg


@pytest.mark.parametrize("techniques, needle", [
    ({"dropout": 1.5}, "dropout must be a number in (0, 1)"),
    ({"dropout": True}, "dropout must be a number"),
    ({"label_smoothing": 0.5}, "label_smoothing must be a number in [0, 0.5)"),
    ({"mixup": 0}, "mixup must be a positive number"),
    ({"class_weight": "heavy"}, "class_weight must be 'balanced' or a positive number"),
    ({"mixup": 0.2, "cutmix": 1.0}, "mixup and cutmix both mix batches"),
    ({"init": "no/such/weights.pt"}, "no weights file"),
    ({"pretrain": ["adrenalmnist3d"]}, "is 3D"),
    ({"pretrain": ["breastmnsit"]}, "did you mean 'breastmnist'"),
    ({"pretrain": []}, "non-empty list of dataset names"),
])
def test_bad_values_are_one_line_errors(techniques, needle):
    with pytest.raises(ConfigError) as e:
        _cells({"ce_x": {"objective": "ce", "techniques": techniques}}, ["ce_x"])
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_loss_techniques_refuse_an_auc_loss_and_cutmix_refuses_3d():
    with pytest.raises(ConfigError, match="objective 'aucm' has no CE loss"):
        _cells({"a": {"objective": "aucm", "techniques": {"mixup": 0.2}}}, ["a"])
    with pytest.raises(ConfigError, match="cutmix pastes 2D boxes"):
        _cells({"c": {"objective": "ce", "techniques": {"cutmix": 1.0}}}, ["c"], flag="adrenalmnist3d")
    with pytest.raises(ConfigError, match="starts from its source's checkpoint"):
        _cells({"f": {"objective": "ce", "init_from": "ce", "techniques": {"init": "torchvision"}}}, ["f"])
    with pytest.raises(ConfigError, match="uses plain CE"):
        _cells({"p": {"objective": "ce_dual", "techniques": {"pretrain": ["chestmnist"]}}}, ["p"])


def test_techniques_enter_the_id_only_when_set():
    plain = _cells({}, ["ce"])[0]
    same = _cells({"ce2": {"objective": "ce", "techniques": {}}}, ["ce2"])[0]
    drop = _cells({"ce2": {"objective": "ce", "techniques": {"dropout": 0.3}}}, ["ce2"])[0]
    # {} is no technique: the identity is the plain CE cell's except for the recipe's name
    assert "techniques" not in plain.identity() and "techniques" not in same.identity()
    assert drop.identity()["techniques"] == [["dropout", 0.3]]
    assert drop.flat_params()["technique.dropout"] == 0.3
    other = _cells({"ce2": {"objective": "ce", "techniques": {"dropout": 0.5}}}, ["ce2"])[0]
    assert len({drop.cell_id, other.cell_id, same.cell_id}) == 3


def test_a_two_stage_cell_carries_its_sources_techniques_into_its_id():
    recipes = {"ce_d": {"objective": "ce", "techniques": {"dropout": 0.3}},
               "ft": {"objective": "ce", "init_from": "ce_d", "params": {"lr": 1e-4}}}
    a = _cells(recipes, ["ft"])[0]
    recipes["ce_d"]["techniques"]["dropout"] = 0.5
    b = _cells(recipes, ["ft"])[0]
    assert a.source_id != b.source_id and a.cell_id != b.cell_id


def test_matched_controls_must_share_techniques():
    recipes = {"aucm_d": {"objective": "aucm", "init_from": "ce", "techniques": {"dropout": 0.3}},
               "ctl": {"objective": "ce_pesg", "init_from": "ce", "match": {"recipe": "aucm_d", "params": "all"}}}
    with pytest.raises(ConfigError, match="must use the same techniques to be matched"):
        _cells(recipes, ["ctl"])


# ----------------------------------------------------------------------------- what they do


def test_plain_bce_is_exactly_torchs_and_the_ce_techniques_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 1, generator=g)
    y = (torch.rand(32, 1, generator=g) < 0.3).float()
    idx = torch.arange(32)
    assert torch.equal(TQ.bce_loss()(logits, y, idx, None), F.binary_cross_entropy_with_logits(logits, y))
    w = TQ.class_weights(y.numpy().astype(int)[:, 0], "balanced")
    n1, n0 = float(y.sum()), float(32 - y.sum())
    assert torch.allclose(w[:, 0], torch.tensor([32 / (2 * n0), 32 / (2 * n1)]))
    per = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    manual = (per * torch.where(y == 1, w[1, 0], w[0, 0])).mean()
    assert torch.allclose(TQ.bce_loss(weights=w)(logits, y, idx, None), manual)
    # balanced: each class carries half of the total weight
    wy = torch.where(y == 1, w[1, 0], w[0, 0])
    assert torch.isclose(wy[y == 1].sum(), wy[y == 0].sum())
    smooth = TQ.bce_loss(smoothing=0.1)(logits, y, idx, None)
    assert torch.allclose(smooth, F.binary_cross_entropy_with_logits(logits, y * 0.9 + 0.05))
    mask = torch.zeros(32, 3)
    mask[:, 1] = 1
    wide = torch.cat([torch.randn(32, 1), logits, torch.randn(32, 1)], 1)
    ywide = torch.cat([torch.ones(32, 1), y, torch.ones(32, 1)], 1)
    # a union's mask: only the sample's own block counts, averaged over the supervised logits
    assert torch.allclose(TQ.bce_loss(mask=mask)(wide, ywide, idx, None), F.binary_cross_entropy_with_logits(logits, y))


def test_dropout_acts_in_training_only_and_keeps_the_weights_names():
    torch.manual_seed(0)
    model = create_model("resnet18_28", 1, 1)
    keys = list(model.state_dict())
    TQ.add_dropout(model, 0.5)
    assert list(model.state_dict()) == keys
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.equal(a, b)  # BatchNorm in train mode is deterministic: the difference is dropout's


def test_mixup_mixes_images_and_targets_by_one_lambda_and_replays():
    x = torch.randn(16, 1, 28, 28)
    y = (torch.arange(16) % 2).float().reshape(16, 1)
    opts = TQ.Options(mixup=0.4)
    xm, ym = TQ.Mixer(opts, 3, "cpu")(x, y)
    xm2, ym2 = TQ.Mixer(opts, 3, "cpu")(x, y)
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)
    assert ((ym > 0) & (ym < 1)).any() and ym.min() >= 0 and ym.max() <= 1
    # recover lambda and the partner of sample 0 from the targets: the images obey the same mix
    mixer = TQ.Mixer(opts, 3, "cpu")
    lam = float(mixer.rng.beta(0.4, 0.4))
    perm = torch.randperm(16, generator=mixer.g)
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm]) and torch.allclose(ym, lam * y + (1 - lam) * y[perm])


def test_cutmix_pastes_a_box_and_mixes_targets_by_its_area():
    x = torch.zeros(8, 1, 28, 28)
    x[4:] = 1.0
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]).reshape(8, 1)
    xm, ym = TQ.Mixer(TQ.Options(cutmix=1.0), 0, "cpu")(x, y)
    pasted = (xm != x).float().mean(dim=(1, 2, 3))  # share of each image replaced by a different partner
    mixer = TQ.Mixer(TQ.Options(cutmix=1.0), 0, "cpu")
    mixer.rng.beta(1.0, 1.0)
    perm = torch.randperm(8, generator=mixer.g)
    for i in range(8):
        if y[perm[i]] != y[i]:  # a partner of the other class: the label moves by exactly the pasted area
            assert torch.isclose(ym[i, 0], y[i, 0] * (1 - pasted[i]) + y[perm[i], 0] * pasted[i], atol=1e-6)


def test_fit_with_each_technique_changes_training_and_replays(breast):
    data, proto = breast
    base = _cells({}, ["ce"])[0]
    plain = _fit(base, data, proto)
    for techniques in ({"dropout": 0.3}, {"class_weight": "balanced"}, {"label_smoothing": 0.2}, {"mixup": 0.4},
                       {"cutmix": 1.0}):
        cell = _cells({"t": {"objective": "ce", "techniques": techniques}}, ["t"])[0]
        a = _fit(cell, data, proto)
        assert a.history[0]["train_loss"] != plain.history[0]["train_loss"], techniques
        if "mixup" in techniques or "dropout" in techniques:  # draws of their own: the cell still replays
            assert _fit(cell, data, proto).history[0]["train_loss"] == a.history[0]["train_loss"], techniques


def test_init_from_a_saved_state_dict_starts_there(tmp_path, breast):
    data, proto = breast
    torch.manual_seed(123)
    donor = create_model("resnet18_28", 1, 1)
    path = tmp_path / "w.pt"
    torch.save(donor.state_dict(), path)
    cell = _cells({"p": {"objective": "ce", "techniques": {"init": str(path)}}}, ["p"])[0]
    model = create_model("resnet18_28", 1, 1)
    state = TQ.initial_state(TQ.Options.of(cell.techniques), "resnet18_28", model)
    assert all(torch.equal(state[k], v) for k, v in donor.state_dict().items())
    assert f"#md5={TQ.file_md5(path)}" in dict(cell.techniques)["init"]
    # fit starts from it: with a zero learning rate the convolutions end where they started
    still = _cells({"p": {"objective": "ce", "params": {"lr": 0.0}, "techniques": {"init": str(path)}}}, ["p"])[0]
    res = _fit(still, data, proto)
    assert torch.equal(res.model.state_dict()["layers.3.conv2.weight"], donor.state_dict()["layers.3.conv2.weight"])
    # a classifier for other labels is drawn fresh; other keys must fit exactly
    wide = create_model("resnet18_28", 1, 5).state_dict()
    fitted = TQ.fit_state(wide, create_model("resnet18_28", 1, 1), "wide")
    assert fitted["fc.weight"].shape == (1, 512) and torch.equal(fitted["stem.0.weight"], wide["stem.0.weight"])


def test_weights_that_do_not_fit_name_the_first_mismatching_key(tmp_path):
    bad = create_model("resnet18_28", 1, 1).state_dict()
    bad["layers.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(ConfigError) as e:
        _cells({"p": {"objective": "ce", "techniques": {"init": str(path)}}}, ["p"])
    assert "'layers.0.conv1.weight' has shape (64, 64, 5, 5)" in str(e.value) and "\n" not in str(e.value)
    short = {k: v for k, v in create_model("resnet18_28", 1, 1).state_dict().items() if k != "stem.1.weight"}
    torch.save(short, path)
    with pytest.raises(ConfigError, match="it has no key 'stem.1.weight'"):
        _cells({"q": {"objective": "ce", "techniques": {"init": str(path)}}}, ["q"])
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a loadable state dict"):
        _cells({"r": {"objective": "ce", "techniques": {"init": str(path)}}}, ["r"])


def test_torchvision_weights_offline_and_for_a_model_without_them_are_one_line(monkeypatch):
    with pytest.raises(ConfigError, match="model 'resnet18_28' has no torchvision weights .*resnet18"):
        _cells({"t": {"objective": "ce", "techniques": {"init": "torchvision"}}}, ["t"])
    import torchvision.models as tvm

    class Offline:
        def get_state_dict(self, progress=False):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvm, "get_weight", lambda name: Offline())
    model = create_model("resnet18", 1, 1)
    with pytest.raises(ConfigError) as e:
        TQ.initial_state(TQ.Options(init="torchvision"), "resnet18", model)
    assert "cannot get ResNet18_Weights.IMAGENET1K_V1" in str(e.value) and "hub cache" in str(e.value)
    # an RGB stem into a grayscale model is summed over its input channels (timm's adapt_input_conv)
    rgb = create_model("resnet18", 3, 1000).state_dict()
    fitted = TQ.fit_state(rgb, model, "rgb")
    assert torch.allclose(fitted["conv1.weight"], rgb["conv1.weight"].sum(1, keepdim=True))


# ----------------------------------------------------------------------------- pretraining union


@pytest.fixture
def two_sets(tmp_path, monkeypatch):
    make_npz(tmp_path, "breastmnist", n=(40, 16, 16), seed=0)
    make_npz(tmp_path, "pneumoniamnist", n=(60, 16, 16), seed=1)
    monkeypatch.setenv("BENCH_ALLOW_UNVERIFIED_DATA", "1")
    return tmp_path


def _pretrain_cell():
    return _cells({"pre": {"objective": "ce", "techniques": {"pretrain": ["pneumoniamnist"]}}}, ["pre"])[0]


def test_the_union_namespaces_labels_and_trains_a_plain_model_of_the_cells_dataset(two_sets):
    from bench import pretrain

    cell = _pretrain_cell()
    data = D.load("breastmnist", two_sets, allow_unverified=True)
    proto = D.make_protocol(data, "official", None)
    u = pretrain.build(cell, data, proto, data.sampler_label, data_root=two_sets, allow_unverified=True)
    assert u.parts == (("breastmnist", 40), ("pneumoniamnist", 60)) and u.n_outputs == 2 and u.block == (0, 1)
    assert torch.equal(u.mask[:40], torch.tensor([[1.0, 0.0]]).expand(40, 2))
    assert torch.equal(u.mask[40:], torch.tensor([[0.0, 1.0]]).expand(60, 2))
    assert (u.targets * (1 - u.mask)).abs().sum() == 0  # no label outside its own block
    res = fit(cell, proto, data.spec, data.sampler_label, data.positive_label, progress=False, union=u)
    assert res.model.fc.weight.shape == (1, 512)  # an ordinary BreastMNIST model: fine-tunes and scores as one
    assert res.val_scores.shape == (16, 1)


def test_a_union_with_a_validation_or_test_image_is_refused(two_sets):
    from bench import pretrain

    with np.load(two_sets / "breastmnist.npz") as f:
        breast = dict(f)
    with np.load(two_sets / "pneumoniamnist.npz") as f:
        pneu = dict(f)
    pneu["train_images"][7] = breast["test_images"][3]
    np.savez_compressed(two_sets / "pneumoniamnist.npz", **pneu)
    data = D.load("breastmnist", two_sets, allow_unverified=True)
    proto = D.make_protocol(data, "official", None)
    with pytest.raises(DataError) as e:
        pretrain.build(_pretrain_cell(), data, proto, data.sampler_label, data_root=two_sets, allow_unverified=True)
    assert "pneumoniamnist train #7 is identical to breastmnist test #3" in str(e.value)


def test_techniques_suite_declares_equal_budgets_and_is_exploratory():
    suite = load_suite("techniques")
    text = (suites_dir() / "techniques.yaml").read_text()
    assert "EXPLORATORY" in text and "EXPLORATORY" in suite.description
    doc = yaml.safe_load(text)
    assert set(doc["search"]["space"]) == {r for r in doc["grid"]["recipe"] if "_ft" in r}
    cells = suite.cells()
    trials = {c.recipe for c in cells if "@t" in c.recipe}
    per_family = {}
    for r in trials:
        per_family.setdefault(r.split("@")[0], set()).add(r)
    assert len(per_family) == 8 and {len(v) for v in per_family.values()} == {8}
    assert {c.seed for c in cells} == {0, 1, 2}
    by = {c.recipe: c for c in cells}
    assert dict(by["ce_mixup"].techniques) == {"mixup": 0.2} and by["aucm_ft_mixup@t00"].techniques == ()
