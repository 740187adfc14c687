"""Execution paths (bench.device.PATHS): the fast path gives the plain path's numbers, and says it ran."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import data as D
from bench.config import base_config, expand
from bench.device import PATHS, resolve_path
from bench.errors import ConfigError
from bench.models import MODELS, as_input, create_model, is_channels_last, load_model
from bench.suitefile import deep_merge, suites_dir
from tests.conftest import fit_quietly, real_data_dir

# Stated tolerance: the paths differ only in the order of floating-point sums (layout) and in
# Adam's kernel; over a few real epochs that moves a validation AUC by a few thousandths
# (measured: at most 0.004 over 3 epochs of 192 real images, fp32, with AVX-512; training losses
# within 2.1% with oneDNN capped at AVX2). The test runs 2 epochs of 128 images. Decisions built on AUC differences smaller than this
# are not decisions this benchmark makes.
AUC_TOL = 0.02
LOSS_RTOL = 0.05


def _cell(path: str, epochs: int = 2, precision: str = "fp32", recipe: str = "ce"):
    over = {"grid": {"dataset": ["breastmnist"], "recipe": [recipe], "aug": [False], "seed": [0], "protocol": ["official"]},
            "train": {"epochs": epochs, "precision": precision, "path": path, "batch_size": 64}}
    return expand(deep_merge(base_config(), over), suites_dir() / "_base.yaml", lambda f, size=None: "")[0]


@pytest.fixture(scope="module")
def real_breast():
    folder = real_data_dir()
    if folder is None:
        pytest.skip("real BreastMNIST file not found (set BENCH_DATA_DIR)")
    data = D.load("breastmnist", folder)
    proto = D.make_protocol(data, "official", None)
    # the first 128 real training images: a short real run, seconds even in fp32 on AVX2
    return data, dataclasses.replace(proto, train=D.Split(proto.train.x[:128], proto.train.y[:128]))


def test_the_fast_path_gives_the_plain_paths_auc_on_a_short_real_run(real_breast):
    data, proto = real_breast
    runs = {p: fit_quietly(_cell(p), data, proto) for p in ("plain", "fast")}
    plain, fast = runs["plain"], runs["fast"]
    assert plain.path.startswith("plain: cpu fp32 contiguous") and "fused-optim" not in plain.path
    assert fast.path.startswith("fast: cpu fp32 channels_last fused-optim")
    for a, b in zip(plain.history, fast.history):
        assert b["val_auc"] == pytest.approx(a["val_auc"], abs=AUC_TOL), a["epoch"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=LOSS_RTOL), a["epoch"]
    assert fast.best_val_auc == pytest.approx(plain.best_val_auc, abs=AUC_TOL)
    # the same model is scored: its test AUC through the run's own scoring
    from bench.evaluate import auc, predict, to_label1

    y = proto.test.y.numpy().astype(int)
    test = {p: auc(y, to_label1(predict(r.model, proto.test, False, 512, torch.device("cpu"), r.bf16), data.sampler_label))
            for p, r in runs.items()}
    assert test["fast"] == pytest.approx(test["plain"], abs=AUC_TOL)
    assert is_channels_last(fast.model, 2) and not is_channels_last(plain.model, 2)


def test_the_path_is_not_part_of_the_cell_id_but_is_recorded_as_a_param():
    fast, plain = _cell("fast"), _cell("plain")
    assert fast.cell_id == plain.cell_id and fast.group_id == plain.group_id
    assert fast.flat_params()["path"] == "fast" and plain.flat_params()["path"] == "plain"


def test_an_unknown_path_is_one_line_with_a_suggestion(suites):
    from bench.config import load_suite

    suites("p", "include: _base.yaml\nsuite: p\ntrain: {path: fsat}\n"
                "grid: {dataset: [breastmnist], recipe: [ce], aug: [false], seed: [0], protocol: [official]}\n")
    with pytest.raises(ConfigError, match=r"unknown execution path 'fsat'.*did you mean 'fast'"):
        load_suite("p")


@pytest.mark.parametrize("name", [m for m in MODELS.names() if m.endswith("_tiny") or m == "resnet18_28"])
def test_every_light_model_trains_in_fp32_channels_last(name):
    """The fast path puts fp32 models channels-last too; ACS models keep their rank-4 kernels."""
    from bench.catalog import model_info

    dims = model_info(name).dims
    xp = resolve_path("fp32", "fast", torch.device("cpu"), dims)
    model = load_model(name, 1, 1, dims=dims, device=xp.device, channels_last=xp.channels_last)
    x = as_input(torch.randn(2, 1, *([28] * dims)), xp.channels_last)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_layout_detection_ignores_kernels_that_are_both_layouts():
    net = create_model("resnet18_28", 1, 1)  # its stem has one input channel: both layouts at once
    assert not is_channels_last(net, 2)
    assert is_channels_last(net.to(memory_format=torch.channels_last), 2)


def test_every_path_resolves_for_every_device_precision_and_dims():
    for name in PATHS.names():
        for precision in ("auto", "fp32", "bf16"):
            for dims in (2, 3):
                xp = resolve_path(precision, name, torch.device("cpu"), dims)
                assert xp.name == name and xp.label.startswith(f"{name}: cpu")
                assert not (dims == 3 and xp.bf16)  # 3D never trains in bf16 on CPU (bench.device.use_bf16)


def test_an_avx2_cap_turns_bf16_off(monkeypatch):
    from bench import device

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert device.cpu_has_bf16() is False
    assert resolve_path("auto", "fast", torch.device("cpu"), 2).bf16 is False
