"""The dataset registry: one declaration per dataset, read by data, models, suites and the leaderboard."""
import medmnist
import numpy as np
import pytest

from bench import data as D
from bench.datasets import DATASETS, MINORITY, get_spec, register_dataset
from bench.errors import ConfigError
from tests.conftest import make_npz


@pytest.mark.parametrize("flag", DATASETS.names())
def test_every_dataset_declares_its_positive_class_with_a_source(flag):
    spec = get_spec(flag)
    assert spec.positive_source and spec.dims in (2, 3)
    if spec.task == "binary" and spec.positive != MINORITY:
        # the declared clinical class is the medmnist label it claims to be
        assert spec.label_names[spec.positive].split(",")[0] in spec.positive_source
    assert spec.md5 == medmnist.INFO[flag]["MD5"]
    for size in spec.sizes:
        assert get_spec(flag, size).md5 == medmnist.INFO[flag]["MD5" if size == 28 else f"MD5_{size}"]


def test_clinical_positive_classes():
    expected = {"breastmnist": 0, "pneumoniamnist": 1, "nodulemnist3d": 1, "adrenalmnist3d": 1, "vesselmnist3d": 1}
    assert {f: get_spec(f).positive for f in expected} == expected
    assert get_spec("synapsemnist3d").positive == MINORITY  # no disease class: the minority class, and it says so
    assert "no disease class" in get_spec("synapsemnist3d").positive_name


def test_sizes_name_the_medmnist_plus_files():
    assert get_spec("breastmnist").file_name == "breastmnist.npz"
    assert get_spec("breastmnist", 64).file_name == "breastmnist_64.npz"
    assert get_spec("vesselmnist3d", 64).image_shape == (64, 64, 64)
    with pytest.raises(ConfigError, match="no 128 px files"):
        get_spec("vesselmnist3d", 128)


def test_synthetic_64px_file_of_the_official_layout_loads(tmp_path):
    make_npz(tmp_path, "breastmnist", size=64)
    d = D.load("breastmnist", tmp_path, size=64, allow_unverified=True)
    assert d.splits["train"].x.shape[1:] == (1, 64, 64) and not d.verified


def test_a_plugin_dataset_needs_one_registration(tmp_path):
    info = {"task": "binary-class", "label": {"0": "healthy", "1": "lesion"}, "n_channels": 1,
            "n_samples": {"train": 40, "val": 16, "test": 16}, "MD5": "", "url": ""}
    register_dataset("toymnist", dims=2, positive={"label": 1, "name": "lesion", "source": "toy"}, info=info)
    try:
        spec = get_spec("toymnist")
        assert spec.positive == 1 and not spec.builtin
        rng = np.random.default_rng(0)
        arrays = {f"{s}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) for s, n in
                  (("train", 40), ("val", 16), ("test", 16))}
        arrays |= {f"{s}_labels": (np.arange(n) % 2).astype(np.uint8)[:, None] for s, n in
                   (("train", 40), ("val", 16), ("test", 16))}
        np.savez(tmp_path / "toymnist.npz", **arrays)
        assert D.load("toymnist", tmp_path, allow_unverified=True).positive_label == 1
        with pytest.raises(ConfigError, match="positive.label must be"):
            register_dataset("badmnist", dims=2, positive={"label": 7}, info=info)
    finally:
        DATASETS._items.pop("toymnist"), DATASETS.meta.pop("toymnist")
