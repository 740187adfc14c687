import numpy as np
import pytest
import torch

from bench.config import base_config
from bench.errors import ConfigError, NotApplicable
from bench.objectives import OBJECTIVES, TrainContext, milestones


class Tiny(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, out))

    def forward(self, x):
        return self.net(x)


def _ctx(multilabel: bool, n=64):
    rng = np.random.default_rng(0)
    labels = (rng.random((n, 3)) < 0.3).astype(np.int64) if multilabel else (rng.random(n) < 0.3).astype(np.int64)
    if multilabel:
        labels[:2] = [[1, 1, 1], [0, 0, 0]]
    return TrainContext(labels, epochs=4, batch_size=16, seed=0, device=torch.device("cpu"))


@pytest.mark.parametrize("multilabel", [False, True], ids=["binary", "multilabel"])
@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_builds_and_takes_a_step(name, multilabel):
    cls = OBJECTIVES.get(name)
    params = cls.params(base_config()["objectives"][name])
    if multilabel and cls.multilabel is not None:
        with pytest.raises(NotApplicable, match="no multi-label form"):
            cls.check_task(True)
        return
    ctx = _ctx(multilabel)
    torch.manual_seed(0)
    model = Tiny(3 if multilabel else 1)
    recipe = cls.build(model, params, ctx)
    x = torch.randn(ctx.n, 16)
    y = torch.as_tensor(ctx.labels, dtype=torch.float32).reshape(ctx.n, -1)
    before = [p.detach().clone() for p in model.parameters()]
    idx, task = next(iter(recipe.batches(1)))
    assert idx.min() >= 0 and idx.max() < ctx.n
    if name != "ce":  # samplers guarantee a positive in every batch (index-based losses need one)
        assert y[idx].sum() > 0
    loss = recipe.loss(model(x[idx]).float(), y[idx], idx, task)
    assert torch.isfinite(loss)
    recipe.optimizer.zero_grad()
    loss.backward()
    recipe.optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    lr = recipe.optimizer.param_groups[0]["lr"]
    assert 2 in milestones(ctx.epochs, params.decay_epochs)
    recipe.end_epoch(2)  # a decay epoch: exercises update_regularizer / LR division
    assert recipe.optimizer.param_groups[0]["lr"] == pytest.approx(lr / params.decay_factor)


def test_lr_decays_at_milestones():
    cls = OBJECTIVES.get("ce")
    params = cls.params(base_config()["objectives"]["ce"])
    ctx = _ctx(False)
    recipe = cls.build(Tiny(1), params, ctx)
    lrs = []
    for e in range(1, 5):
        recipe.end_epoch(e)
        lrs.append(recipe.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-3, 1e-4, 1e-5, 1e-5])
    assert milestones(100, (0.5, 0.75)) == {50, 75}


def test_unknown_hyperparameter_did_you_mean():
    cls = OBJECTIVES.get("aucm")
    values = dict(base_config()["objectives"]["aucm"], epoch_decy=1)
    with pytest.raises(ConfigError, match="did you mean 'epoch_decay'"):
        cls.params(values)


def test_wrong_hyperparameter_type():
    cls = OBJECTIVES.get("ce")
    with pytest.raises(ConfigError, match="expected a number"):
        cls.params(dict(base_config()["objectives"]["ce"], lr="fast"))


@pytest.mark.parametrize("name, value, match", [
    ("lr", True, r"ce\.lr in s\.yaml: expected a number, got True"),  # a bool is not a number
    ("lr", "1e-3", r"ce\.lr in s\.yaml: expected a number, got '1e-3'"),
    ("lr", float("nan"), r"ce\.lr in s\.yaml: expected a finite number, got nan"),
    ("weight_decay", float("inf"), r"ce\.weight_decay in s\.yaml: expected a finite number, got inf"),
    ("decay_epochs", 0.5, r"ce\.decay_epochs in s\.yaml: expected a list of numbers, got 0\.5"),
    ("decay_epochs", [0.5, True], r"ce\.decay_epochs in s\.yaml: expected a list of numbers, got \[0\.5, True\]"),
    ("decay_epochs", {0.5, 0.75}, r"ce\.decay_epochs in s\.yaml: expected a list of numbers"),
    ("decay_epochs", [0.5, float("inf")], r"ce\.decay_epochs in s\.yaml: expected a list of finite numbers"),
])
def test_bad_hyperparameter_values_are_one_line_errors(name, value, match):
    cls = OBJECTIVES.get("ce")
    with pytest.raises(ConfigError, match=match) as e:
        cls.params(dict(base_config()["objectives"]["ce"], **{name: value}), where="s.yaml")
    assert "\n" not in str(e.value)


def test_hyperparameter_types_ints_become_floats_and_int_fields_stay_strict():
    compauc = OBJECTIVES.get("compauc")
    base = base_config()["objectives"]["compauc"]
    p = compauc.params(dict(base, lr=1, decay_epochs=[1, 0.5], k=3))
    assert type(p.lr) is float and p.lr == 1.0 and p.decay_epochs == (1.0, 0.5) and type(p.decay_epochs) is tuple
    assert type(p.k) is int and p.k == 3
    for bad in (3.0, True, "3"):
        with pytest.raises(ConfigError, match=r"compauc\.k: expected an integer"):
            compauc.params(dict(base, k=bad))
    with pytest.raises(ConfigError, match=r"compauc\.version: expected a string, got 2"):
        compauc.params(dict(base, version=2))


def test_unknown_and_missing_hyperparameters():
    cls = OBJECTIVES.get("aucm")
    values = dict(base_config()["objectives"]["aucm"])
    with pytest.raises(ConfigError, match=r"unknown hyperparameter 'margn' for objective 'aucm' in x "
                                          r"\(did you mean 'margin'\?\); known: lr, weight_decay, decay_epochs"):
        cls.params({**values, "margn": 1.0}, where="x")
    del values["margin"], values["momentum"]
    with pytest.raises(ConfigError, match=r"objective 'aucm' lacks hyperparameters \['margin', 'momentum'\] "
                                          r"\(set them in suites/_base\.yaml\)"):
        cls.params(values)


def test_sampler_batches_are_seeded():
    cls = OBJECTIVES.get("aucm")
    params = cls.params(base_config()["objectives"]["aucm"])
    a = [i.tolist() for i, _ in cls.build(Tiny(1), params, _ctx(False)).batches(1)]
    b = [i.tolist() for i, _ in cls.build(Tiny(1), params, _ctx(False)).batches(1)]
    assert a == b


def _pdsca_branches(recipe, model, ctx, steps: int, clear_alpha: bool = True) -> list[str]:
    """Run ``steps`` optimizer steps and record the branch PDSCA takes at each: it decides by
    ``alpha.grad is None`` (CE branch) or not (AUC branch), so that is what we record."""
    opt = recipe.optimizer
    x = torch.randn(ctx.n, 16)
    y = torch.as_tensor(ctx.labels, dtype=torch.float32).reshape(ctx.n, -1)
    batches = iter(recipe.batches(1))
    branches = []
    for _ in range(steps):
        idx, task = next(batches, None) or next(iter(recipe.batches(2)))
        (recipe.zero_grad if clear_alpha else opt.zero_grad)()
        recipe.loss(model(x[idx]).float(), y[idx], idx, task).backward()
        branches.append("ce" if opt.param_groups[0]["alpha"].grad is None else "auc")
        opt.step()
    return branches


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pdsca_alternates_k_ce_and_k_auc_steps(k):
    cls = OBJECTIVES.get("compauc")
    params = cls.params({**base_config()["objectives"]["compauc"], "k": k})
    ctx = _ctx(False, n=256)
    torch.manual_seed(0)
    model = Tiny(1)
    recipe = cls.build(model, params, ctx)
    got = _pdsca_branches(recipe, model, ctx, steps=4 * k)
    assert got == (["ce"] * k + ["auc"] * k) * 2


def test_libauc_pdsca_alone_stops_alternating():
    """The LibAUC quirk the objective works around: with the optimizer's own zero_grad, every
    step after the first AUC step takes the AUC branch (if this fails, LibAUC fixed it)."""
    cls = OBJECTIVES.get("compauc")
    params = cls.params(base_config()["objectives"]["compauc"])
    ctx = _ctx(False, n=256)
    torch.manual_seed(0)
    model = Tiny(1)
    recipe = cls.build(model, params, ctx)
    assert _pdsca_branches(recipe, model, ctx, steps=6, clear_alpha=False) == ["ce"] + ["auc"] * 5


def test_pdsca_decays_both_learning_rates():
    cls = OBJECTIVES.get("compauc")
    params = cls.params(base_config()["objectives"]["compauc"])
    recipe = cls.build(Tiny(1), params, _ctx(False))  # 4 epochs: decays after epochs 2 and 3
    group = recipe.optimizer.param_groups[0]
    lr, lr0 = group["lr"], group["lr0"]
    for e in range(1, 5):
        recipe.end_epoch(e)
    assert group["lr"] == pytest.approx(lr / 100) and group["lr0"] == pytest.approx(lr0 / 100)


@pytest.mark.parametrize("name", ["aucm", "compauc"])
def test_auc_losses_see_the_sampler_rate_as_class_prior(name):
    """version v1: p is the share of positives DualSampler puts in a batch (fixed), not the
    data's imbalance and not re-estimated per batch."""
    from bench.objectives import batch_positive_rate

    cls = OBJECTIVES.get(name)
    params = cls.params(base_config()["objectives"][name])
    ctx = _ctx(False, n=200)  # ~30% positives in the data; the sampler rate is 0.2
    recipe = cls.build(Tiny(1), params, ctx)
    fn = recipe.optimizer.loss_fn
    x = torch.randn(ctx.n, 16)
    y = torch.as_tensor(ctx.labels, dtype=torch.float32).reshape(ctx.n, -1)
    expected = int(0.2 * ctx.batch_size) / ctx.batch_size
    assert batch_positive_rate(params.sampling_rate, ctx.batch_size) == expected
    seen = set()
    for idx, task in recipe.batches(1):
        recipe.zero_grad()
        recipe.loss(Tiny(1)(x[idx]).float(), y[idx], idx, task)
        seen.add(float(fn.p))
        # a batch with another positive share must not move p (LibAUC's default would)
        recipe.loss(torch.zeros(len(idx), 1), torch.ones(len(idx), 1), idx, task)
        seen.add(float(fn.p))
    assert len(seen) == 1 and seen.pop() == pytest.approx(expected)
