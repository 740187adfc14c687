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
    recipe.end_epoch(2)  # a decay epoch: exercises update_regularizer / LR division


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


def test_sampler_batches_are_seeded():
    cls = OBJECTIVES.get("aucm")
    params = cls.params(base_config()["objectives"]["aucm"])
    a = [i.tolist() for i, _ in cls.build(Tiny(1), params, _ctx(False)).batches(1)]
    b = [i.tolist() for i, _ in cls.build(Tiny(1), params, _ctx(False)).batches(1)]
    assert a == b
