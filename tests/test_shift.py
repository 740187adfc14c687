"""bench.shift: deterministic corrupted test sets, their cache, applicability, augmentation."""
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.augment import medmnistc_augment
from bench.catalog import parse_shift_metric as parse_metric
from bench.catalog import shift_metric as metric_name
from bench.corrupt import (
    build_corrupted,
    corruption_names,
    has_shift,
    medmnistc_compat,
    not_applicable_reason,
    torchio3d,
    versions,
)
from bench.errors import (
    INSTALL_HINT,
    ConfigError,
    CorruptionFailed,
    DataError,
    MissingExtra,
    NotApplicable,
)
from bench.shift import corrupted_test_set
from bench.shift.cache import array_digest, cache_path, default_cache_dir
from bench.shift.scoring import summarize

REPO = Path(__file__).resolve().parent.parent
needs_medmnistc = pytest.mark.skipif(not has_shift("breastmnist"), reason=str(not_applicable_reason("breastmnist")))
needs_torchio = pytest.mark.skipif(not has_shift("adrenalmnist3d"), reason=str(not_applicable_reason("adrenalmnist3d")))

# sha256 of the array bytes, recorded with the versions below. Same versions -> same bytes.
GOLDEN = {
    ("breastmnist", "speckle_noise", 5, 156): "8755886b79f7c90d2250e295f7fea9eeab8441ea3f96c1aaa7ff850d64a6117b",
    ("breastmnist", "motion_blur", 3, 156): "0c699e1b2fa0723dcf36fe4d576a30a250a69f262ee4a6b28921b7e3f47495c4",
    ("adrenalmnist3d", "noise", 3, 298): "74e0b7f634423bc66614a254cb869c73ab7ece95863a4fe2d0756e1c2df218dc",
    ("adrenalmnist3d", "motion", 2, 40): "a4f3c9c666c7a1a8f49d2eb8749fdc1b9f17240be28fa8c51ebb184d6d4eaa11",
}
GOLDEN_VERSIONS = {
    "medmnistc": "0.1.0", "wand": "0.7.2", "imagemagick": "ImageMagick 6.9.11-60 Q16 x86_64 2021-01-25 https://imagemagick.org",
    "numpy": "2.4.6", "pillow": "13.0.0", "opencv-python": "5.0.0.93", "scikit-image": "0.26.0", "scipy": "1.17.1",
    "torch": "2.14.1", "torchvision": "0.29.1", "torchio": "1.2.1", "simpleitk": "2.5.7",
}


def split_images(real_dir: Path, flag: str, n: int | None = None) -> np.ndarray:
    path = real_dir / f"{flag}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with np.load(path) as npz:
        return npz["test_images"][:n]


def synthetic(shape, n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


# ------------------------------------------------------------------ determinism


@needs_medmnistc
@needs_torchio
def test_golden_bytes(real_dir):
    """The exact bytes every machine with these versions builds."""
    now = {k: versions().get(k) for k in GOLDEN_VERSIONS}
    if now != GOLDEN_VERSIONS:
        pytest.skip(f"golden digests were recorded with other versions: "
                    f"{ {k: (GOLDEN_VERSIONS[k], v) for k, v in now.items() if v != GOLDEN_VERSIONS[k]} }")
    for (flag, corruption, severity, n), digest in GOLDEN.items():
        images = split_images(real_dir, flag, n)
        assert len(images) == n
        assert array_digest(build_corrupted(flag, images, corruption, severity)) == digest, (flag, corruption)


@needs_medmnistc
def test_same_bytes_twice_and_no_global_state_touched(real_dir):
    images = split_images(real_dir, "breastmnist")
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    np_state, py_state, torch_state = np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state()
    first = build_corrupted("breastmnist", images, "motion_blur", 3)
    second = build_corrupted("breastmnist", images, "motion_blur", 3)
    assert first.tobytes() == second.tobytes()
    assert first.shape == images.shape == (156, 28, 28) and first.dtype == np.uint8
    assert not np.array_equal(first, images)
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    # numpy and medmnistc's modules are as they were: the compatibility views were unbound
    import medmnistc.corruptions.filter as mfilter

    assert mfilter.np is np
    with pytest.raises(ValueError):
        np.fromstring(b"ab", np.uint8)


@needs_torchio
def test_3d_same_bytes_twice_and_torch_state_kept(real_dir):
    volumes = split_images(real_dir, "adrenalmnist3d", 20)
    torch.manual_seed(7)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a = build_corrupted("adrenalmnist3d", volumes, "bias_field", 5)
    b = build_corrupted("adrenalmnist3d", volumes, "bias_field", 5)
    assert a.tobytes() == b.tobytes() and a.shape == volumes.shape and a.dtype == np.uint8
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    # the per-image seed depends on the index: the same volume twice is corrupted differently
    twice = np.stack([volumes[0], volumes[0]])
    noisy = build_corrupted("adrenalmnist3d", twice, "noise", 3)
    assert not np.array_equal(noisy[0], noisy[1])


_CHILD = """
import json, sys, hashlib
import numpy as np
from bench.shift import corrupted_test_set
from bench.shift.cache import array_digest
data, cache = sys.argv[1], sys.argv[2]
out = {}
for flag, n, corruption, severity in [("breastmnist", 156, "speckle_noise", 5), ("breastmnist", 156, "motion_blur", 3),
                                      ("adrenalmnist3d", 40, "noise", 3), ("adrenalmnist3d", 40, "motion", 2)]:
    x = np.load(f"{data}/{flag}.npz")["test_images"][:n]
    md5 = hashlib.md5(x.tobytes()).hexdigest()
    out[f"{flag}/{corruption}/{severity}"] = array_digest(corrupted_test_set(flag, md5, x, corruption, severity, cache))
print(json.dumps(out))
"""


@needs_medmnistc
@needs_torchio
def test_same_bytes_across_processes_writing_one_cache(real_dir, tmp_path):
    """Two fresh processes (different thread counts and hash salts) build into one cache at once."""
    if not (real_dir / "adrenalmnist3d.npz").is_file():
        pytest.skip("adrenalmnist3d.npz not found")
    cache = tmp_path / "shared-cache"
    procs = []
    for threads, salt in (("1", "1"), ("2", "99")):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONHASHSEED": salt}
        procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, str(real_dir), str(cache)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    assert results[0]["breastmnist/motion_blur/3"] == array_digest(
        build_corrupted("breastmnist", split_images(real_dir, "breastmnist"), "motion_blur", 3))
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert len(files) == 8 and all(f.endswith((".npy", ".npy.sha256")) for f in files)  # no temp file left


# ------------------------------------------------------------------ every declared corruption runs


@needs_medmnistc
@pytest.mark.parametrize("flag", ["breastmnist", "pneumoniamnist", "chestmnist"])
def test_every_2d_corruption_and_severity_keeps_shape(flag):
    images = synthetic((28, 28), n=3)
    for name in corruption_names(flag):
        dist = []
        for severity in range(1, 6):
            out = build_corrupted(flag, images, name, severity)
            assert out.shape == images.shape and out.dtype == np.uint8, (name, severity)
            dist.append(np.abs(out.astype(float) - images).mean())
        # an identity "corruption" would pass the checks above: the image must move, more at 5 than at 1
        assert dist[0] > 0 and dist[4] > dist[0], (name, dist)


@needs_torchio
def test_every_3d_corruption_and_severity_keeps_shape():
    # smooth intensity blobs: on uniform noise, motion's ghosts move a volume less at severity 5 than at 1
    g = np.mgrid[:28, :28, :28].astype(float) - 13.5
    volumes = np.stack([(255 * np.exp(-(g ** 2).sum(0) / (2 * s ** 2))).astype(np.uint8) for s in (5, 7)])
    assert corruption_names("nodulemnist3d") == list(torchio3d.specs())
    for name in corruption_names("nodulemnist3d"):
        dist = []
        for severity in range(1, 6):
            out = build_corrupted("nodulemnist3d", volumes, name, severity)
            assert out.shape == volumes.shape and out.dtype == np.uint8, (name, severity)
            dist.append(np.abs(out.astype(float) - volumes).mean())
        assert dist[0] > 0 and dist[4] > dist[0], (name, dist)


@needs_torchio
def test_gamma_is_excluded_only_for_binary_masks():
    assert "gamma" not in corruption_names("adrenalmnist3d") and "gamma" not in corruption_names("vesselmnist3d")
    assert "gamma" in corruption_names("synapsemnist3d")
    mask = (synthetic((28, 28, 28), n=1) > 128).astype(np.uint8) * 255
    # why it is excluded: a gamma curve leaves a 0/255 mask exactly as it was
    from bench.corrupt.seeds import image_seed

    with torchio3d.corruptor("gamma", 5) as fn:
        assert np.array_equal(fn(mask[0], image_seed("x", "gamma", 5, 0)), mask[0])


def test_3d_yaml_gives_a_reason_for_every_choice():
    for name, spec in torchio3d.specs().items():
        assert spec["why"].strip() and len(spec["severity"]) == 5, name


# ------------------------------------------------------------------ cache


@needs_medmnistc
def test_cache_miss_then_hit(real_dir, monkeypatch):
    images = split_images(real_dir, "breastmnist")
    md5 = "750601b1f35ba3300ea97c75c52ff8f6"
    built = corrupted_test_set("breastmnist", md5, images, "speckle_noise", 4)
    path = cache_path("breastmnist", md5, "speckle_noise", 4)
    assert path.is_relative_to(Path(os.environ["BENCH_CACHE_DIR"]) / "shift")
    assert path.parent == default_cache_dir() / "breastmnist" / md5
    assert path.with_name(path.name + ".sha256").read_text().strip() == array_digest(built)
    assert np.array_equal(built, build_corrupted("breastmnist", images, "speckle_noise", 4))

    def no_build(*args):
        raise AssertionError("a verified cache file must not be rebuilt")

    monkeypatch.setattr("bench.shift.cache.build_corrupted", no_build)
    assert corrupted_test_set("breastmnist", md5, images, "speckle_noise", 4).tobytes() == built.tobytes()


@needs_medmnistc
@pytest.mark.parametrize("damage", ["other array", "truncated", "edited digest", "missing digest"])
def test_damaged_cache_file_is_rebuilt_with_a_warning(real_dir, tmp_path, caplog, damage):
    images = split_images(real_dir, "breastmnist", 40)
    md5 = "ab" * 16
    good = corrupted_test_set("breastmnist", md5, images, "jpeg_compression", 5, tmp_path)
    path = cache_path("breastmnist", md5, "jpeg_compression", 5, tmp_path)
    digest = path.with_name(path.name + ".sha256")
    if damage == "other array":
        tampered = good.copy()
        tampered[0, 0, 0] ^= 1
        np.save(path, tampered)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "edited digest":
        digest.write_text("0" * 64 + "\n")
    else:
        digest.unlink()
    with caplog.at_level(logging.WARNING, logger="bench.shift.cache"):
        again = corrupted_test_set("breastmnist", md5, images, "jpeg_compression", 5, tmp_path)
    assert again.tobytes() == good.tobytes()
    if damage != "missing digest":  # a missing digest is a plain miss (e.g. a writer that died in between)
        assert str(path) in caplog.text and ("sha256" in caplog.text or "unreadable" in caplog.text)
    assert digest.read_text().strip() == array_digest(np.load(path)) == array_digest(good)


@needs_medmnistc
def test_cache_rejects_a_bad_data_md5(tmp_path):
    with pytest.raises(ConfigError, match="not a hex digest"):
        corrupted_test_set("breastmnist", "../../etc", synthetic((28, 28)), "pixelate", 1, tmp_path)


# ------------------------------------------------------------------ failures are named, never skipped


@needs_medmnistc
def test_failing_corruption_names_corruption_severity_and_index(monkeypatch, tmp_path):
    target = medmnistc_compat.registry()["breastmnist"]["speckle_noise"]
    original, calls = target.apply, {"n": 0}

    def flaky(img, severity=-1, augmentation=False):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return original(img, severity, augmentation)

    monkeypatch.setattr(target, "apply", flaky)
    with pytest.raises(CorruptionFailed) as err:
        corrupted_test_set("breastmnist", "cd" * 16, synthetic((28, 28), n=6), "speckle_noise", 2, tmp_path)
    assert isinstance(err.value, DataError)
    assert str(err.value) == ("breastmnist: corruption 'speckle_noise' at severity 2 failed on test image 3: "
                              "RuntimeError: boom")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing cached


@needs_medmnistc
def test_wrong_shape_from_the_library_is_an_error(monkeypatch):
    """What medmnistc's MotionBlur returns at 28 px without our cv2 view: (28, 3)."""
    target = medmnistc_compat.registry()["breastmnist"]["pixelate"]
    monkeypatch.setattr(target, "apply", lambda img, severity=-1, augmentation=False: np.asarray(img)[0])
    expected = r"'pixelate' at severity 1 failed on test image 0: returned uint8 \(28, 3\), expected uint8 \(28, 28\)"
    with pytest.raises(CorruptionFailed, match=expected):
        build_corrupted("breastmnist", synthetic((28, 28)), "pixelate", 1)


@needs_medmnistc
def test_unknown_corruption_severity_and_dtype_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'speckle_noise'"):
        build_corrupted("breastmnist", synthetic((28, 28)), "speckle_nois", 1)
    with pytest.raises(ConfigError, match="severity 6"):
        build_corrupted("breastmnist", synthetic((28, 28)), "pixelate", 6)
    with pytest.raises(ConfigError, match="uint8"):
        build_corrupted("breastmnist", synthetic((28, 28)).astype(np.float32), "pixelate", 1)


# ------------------------------------------------------------------ not applicable / missing extra


def test_unknown_dataset_is_not_applicable():
    assert not has_shift("dermamnist")
    reason = not_applicable_reason("dermamnist")
    assert "no corruption set is declared" in reason and "\n" not in reason
    with pytest.raises(NotApplicable):
        corruption_names("dermamnist")
    with pytest.raises(NotApplicable):
        build_corrupted("dermamnist", synthetic((28, 28)), "pixelate", 1)


def test_3d_without_torchio_is_not_applicable(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchio", None)  # import torchio -> ImportError
    assert not has_shift("adrenalmnist3d")
    reason = not_applicable_reason("adrenalmnist3d")
    assert "'torchio'" in reason and "pip install -e '.[shift]'" in reason and "\n" not in reason
    with pytest.raises(MissingExtra):
        build_corrupted("adrenalmnist3d", synthetic((28, 28, 28), n=1), "noise", 1)


def test_missing_medmnistc_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnistc.corruptions.registry", None)
    with pytest.raises(ConfigError) as err:
        corruption_names("breastmnist")
    msg = str(err.value)
    assert "\n" not in msg and "'medmnistc'" in msg and INSTALL_HINT in msg
    assert not has_shift("breastmnist")
    with pytest.raises(MissingExtra):
        build_corrupted("breastmnist", synthetic((28, 28)), "pixelate", 1)
    with pytest.raises(MissingExtra):
        medmnistc_augment("breastmnist", synthetic((28, 28)), np.random.default_rng(0))


def test_missing_extra_keeps_only_the_first_line_of_the_cause():
    cause = ImportError("MagickWand shared library not found.\nYou probably had not installed ImageMagick library.")
    msg = str(MissingExtra("medmnistc", cause))
    assert "\n" not in msg and "MagickWand shared library not found." in msg


def test_importing_the_package_does_not_import_the_backends():
    code = "import sys, bench.shift, bench.augment; print(sorted(m for m in ('medmnistc', 'torchio', 'wand') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ augmentation


@needs_medmnistc
def test_medmnistc_augment_is_deterministic_under_the_generator(real_dir):
    batch = split_images(real_dir, "breastmnist", 64)
    state = np.random.get_state()[1].copy()
    a = medmnistc_augment("breastmnist", batch, np.random.default_rng(5))
    b = medmnistc_augment("breastmnist", batch, np.random.default_rng(5))
    c = medmnistc_augment("breastmnist", batch, np.random.default_rng(6))
    assert a.shape == batch.shape and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    changed = (a != batch).any(axis=(1, 2))
    assert 0 < changed.sum() < len(batch)  # the identity is one of AugMedMNISTC's eight choices
    assert np.array_equal(np.random.get_state()[1], state)


@needs_medmnistc
def test_medmnistc_augment_rejects_3d_and_float():
    with pytest.raises(ConfigError, match="needs a MedMNIST-C corruption set"):
        medmnistc_augment("adrenalmnist3d", synthetic((28, 28, 28), n=1), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="uint8"):
        medmnistc_augment("breastmnist", synthetic((28, 28)).astype(float), np.random.default_rng(0))


# ------------------------------------------------------------------ versions and metric names


@needs_medmnistc
@needs_torchio
def test_versions_name_the_corruption_packages():
    v = versions()
    assert v["medmnistc"] == "0.1.0" and v["torchio"] and v["imagemagick"].startswith("ImageMagick")


def test_metric_names_and_summary():
    assert metric_name("brightness_up", 3) == "shift_brightness_up_s3_auc"
    assert parse_metric("shift_brightness_up_s3_auc") == ("brightness_up", 3)
    assert parse_metric("shift_auc_mean") is None and parse_metric("test_auc") is None
    s = summarize(0.9, {("a", 1): 0.8, ("a", 2): 0.7, ("b", 1): 0.6, ("b", 2): 0.5})
    assert s["shift_a_s2_auc"] == 0.7 and s["shift_auc_mean"] == pytest.approx(0.65)
    assert s["shift_auc_drop"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        summarize(0.9, {})


@needs_medmnistc
def test_aug_medmnistc_cell_trains_on_corrupted_batches(synth_dir, suites):
    """`aug: medmnistc` end to end: the training loop hands channel-first uint8 batches to the
    corruption and trains on what comes back (standard augmentation on top)."""
    from bench.driver import run_suite

    suites("augc", "include: _base.yaml\nsuite: augc\ntrain: {epochs: 1, batch_size: 16}\n"
                   "grid: {dataset: [breastmnist], recipe: [ce], aug: [medmnistc], seed: [0], protocol: [official]}\n")
    s = run_suite("augc", progress=False, leaderboard=False)
    assert s.failed == 0 and s.results[0].run_name == "breastmnist-ce-medmnistc-s0-official"
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    a = medmnistc_augment("breastmnist", x, np.random.default_rng(0))
    b = medmnistc_augment("breastmnist", x[:, 0].numpy(), np.random.default_rng(0))
    assert a.shape == x.shape and a.dtype == torch.uint8 and np.array_equal(a[:, 0].numpy(), b)


def test_aug_medmnistc_is_refused_for_3d(suites):
    suites("aug3", "include: _base.yaml\nsuite: aug3\n"
                   "grid: {dataset: [adrenalmnist3d], recipe: [ce], aug: [medmnistc], seed: [0], protocol: [official]}\n")
    from bench.config import load_suite

    with pytest.raises(ConfigError, match="exists for 2D datasets only"):
        load_suite("aug3")
