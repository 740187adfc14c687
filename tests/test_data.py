import numpy as np
import pytest
import torch

from bench import data as D
from bench import datafiles as F
from bench.errors import ConfigError, DataError
from tests.conftest import make_npz


def test_real_breast_loads_verified(real_dir):
    d = D.load("breastmnist", real_dir)
    assert d.verified and d.md5 == "750601b1f35ba3300ea97c75c52ff8f6"
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 546, "val": 78, "test": 156}
    assert d.splits["train"].x.dtype == torch.uint8 and d.splits["train"].x.shape[1:] == (1, 28, 28)
    # label 1 ("normal, benign") is the majority: the positive (scored) class is label 0
    assert d.positive_label == 0


def test_md5_is_cached(real_dir, tmp_path):
    path = real_dir / "breastmnist.npz"
    assert F.file_md5(path) == F.file_md5(path)
    assert (tmp_path / "cache" / "md5.json").is_file()


def test_md5_mismatch_is_an_error_unless_opted_in(tmp_path):
    make_npz(tmp_path, "breastmnist")
    with pytest.raises(DataError, match=r"MD5 [0-9a-f]{32} does not match the official 750601b1"):
        D.load("breastmnist", tmp_path)
    d = D.load("breastmnist", tmp_path, allow_unverified=True)
    assert not d.verified


def test_env_opt_in(tmp_path, monkeypatch):
    make_npz(tmp_path, "breastmnist")
    monkeypatch.setenv(F.ALLOW_UNVERIFIED_ENV, "1")
    assert not D.load("breastmnist", tmp_path).verified


def test_missing_file_offline_names_file_and_folder(tmp_path, monkeypatch):
    import torchvision.datasets.utils as U

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(U, "download_url", offline)
    with pytest.raises(DataError) as e:
        D.load("nodulemnist3d", tmp_path / "nowhere")
    msg = str(e.value)
    assert "nodulemnist3d.npz not found in" in msg and "nowhere" in msg and "BENCH_DATA_DIR" in msg


def test_truncated_npz(tmp_path):
    path = make_npz(tmp_path, "breastmnist")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or damaged"):
        D.load("breastmnist", tmp_path, allow_unverified=True)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.pop("val_labels"), "missing keys"),
        (lambda a: a.__setitem__("train_images", a["train_images"].astype(np.float32)), "dtype float32"),
        (lambda a: a.__setitem__("train_images", a["train_images"][:, :20]), "expected \\(N, 28, 28\\)"),
        (lambda a: a.__setitem__("test_labels", a["test_labels"] + 3), "expected 0/1"),
        (lambda a: a.__setitem__("val_labels", a["val_labels"][:-1]), "images but"),
    ],
)
def test_wrong_layout(tmp_path, mutate, match):
    path = make_npz(tmp_path, "breastmnist")
    arrays = dict(np.load(path))
    mutate(arrays)
    np.savez_compressed(path, **arrays)
    with pytest.raises(DataError, match=match):
        D.load("breastmnist", tmp_path, allow_unverified=True)


def test_unknown_dataset_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'breastmnist'"):
        D.get_spec("breastmnst")


def test_scaling():
    x = torch.tensor([[0, 255]], dtype=torch.uint8)
    assert D.scale(x, is_3d=False).tolist() == [[-1.0, 1.0]]
    assert D.scale(x, is_3d=True).tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("flag", ["breastmnist", "chestmnist"])
def test_cv5_folds_partition_and_renumber(tmp_path, flag):
    make_npz(tmp_path, flag, n=(60, 20, 10))
    d = D.load(flag, tmp_path, allow_unverified=True)
    pool = torch.cat([d.splits["train"].x, d.splits["val"].x]).flatten(1)
    seen = []
    for k in range(5):
        p = D.make_protocol(d, "cv5", k)
        assert len(p.train) + len(p.val) == 80
        assert p.test is d.splits["test"]
        seen.append(p.val.x.flatten(1))
        ds = D.IndexedDataset(p.train, d.spec.is_3d, d.positive_label)
        idx = [ds[i][2] for i in range(len(ds))]
        assert idx == list(range(len(p.train)))  # renumbered 0..n-1 for index-based losses
    # validation parts are disjoint and cover train ∪ val exactly once
    assert sorted(map(bytes, torch.cat(seen).numpy())) == sorted(map(bytes, pool.numpy()))
    # the split depends on split_seed only, not on any training seed
    torch.manual_seed(123)
    np.random.seed(123)
    again = D.make_protocol(d, "cv5", 2)
    assert torch.equal(again.val.x, D.make_protocol(d, "cv5", 2).val.x)


def test_cv5_is_stratified(real_dir):
    d = D.load("breastmnist", real_dir)
    rates = [float(D.make_protocol(d, "cv5", k).val.y.float().mean()) for k in range(5)]
    assert max(rates) - min(rates) < 0.03


def test_protocol_errors(tmp_path):
    make_npz(tmp_path, "breastmnist")
    d = D.load("breastmnist", tmp_path, allow_unverified=True)
    with pytest.raises(DataError, match="needs a fold"):
        D.make_protocol(d, "cv5", None)
    with pytest.raises(DataError, match="takes no fold"):
        D.make_protocol(d, "official", 1)
    with pytest.raises(ConfigError, match="did you mean 'cv5'"):
        D.make_protocol(d, "cv4", 0)


def test_stratify_key_multilabel():
    y = np.zeros((40, 3), dtype=np.uint8)
    y[:20, 0] = 1
    y[:12, 1] = 1  # rarer label wins the key
    y[:6, 2] = 1  # rarest
    key = D.stratify_key(y)
    assert (key[:6] == 2).all() and (key[6:12] == 1).all() and (key[12:20] == 0).all() and (key[20:] == 3).all()
    y[:4, 2] = 1
    y[4:6, 2] = 0  # a label with < 5 samples as its rarest is pooled into one "rare" key
    assert (D.stratify_key(y)[:4] == -1).all()


def test_3d_items_are_float32(tmp_path):
    make_npz(tmp_path, "adrenalmnist3d")
    d = D.load("adrenalmnist3d", tmp_path, allow_unverified=True)
    x, y, i = D.IndexedDataset(d.splits["train"], True, d.positive_label)[3]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28, 28) and i == 3
