"""The air-gapped installer refuses a bundle made for another Python/platform or with damaged data,
before it installs anything. (A real bundle is 3.3 GB: README's "Air-gapped hosts" shows `make bundle`
and an offline install in a network namespace, measured.)"""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("md5sum") is None, reason="needs coreutils md5sum")


def _bundle(tmp_path, python=None, tamper=False):
    b = tmp_path / "bundle"
    (b / "data").mkdir(parents=True)
    (b / "wheels").mkdir()
    shutil.copy(REPO / "scripts" / "bundle_install.sh", b / "install.sh")
    (b / "data" / "breastmnist.npz").write_bytes(b"fake npz")
    subprocess.run("md5sum breastmnist.npz > MD5SUMS", shell=True, cwd=b / "data", check=True)
    if tamper:
        (b / "data" / "breastmnist.npz").write_bytes(b"fake npz, damaged")
    v = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    (b / "PLATFORM").write_text(f"python {v}\nplatform {sysconfig.get_platform()}\ntag x\nextras shift\n")
    return b


def _install(b, tmp_path):
    return subprocess.run(["bash", str(b / "install.sh"), str(tmp_path / "target")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})


def test_a_bundle_for_another_python_is_refused(tmp_path):
    r = _install(_bundle(tmp_path, python="3.9"), tmp_path)
    assert r.returncode == 2 and "this bundle is for Python 3.9" in r.stderr
    assert not (tmp_path / "target").exists()


def test_damaged_data_is_refused_before_anything_installs(tmp_path):
    r = _install(_bundle(tmp_path, tamper=True), tmp_path)
    assert r.returncode == 2 and "data files do not match" in r.stderr and "MD5SUMS" in r.stderr
    assert not (tmp_path / "target").exists()
