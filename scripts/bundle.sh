#!/usr/bin/env bash
# make bundle: everything an air-gapped host needs, in one folder (or its .tar):
#   src.tar.gz     the repository at HEAD (suites/, leaderboard/, the package; `git archive`)
#   wheels/        every wheel the pinned stack needs, built for THIS Python and platform (PLATFORM says which)
#   data/          the MedMNIST files with MD5SUMS
#   install.sh     the offline installer: checks platform and data, installs with --no-index, runs `bench doctor`
# Usage: scripts/bundle.sh [OUT] (default dist/bundle). Wheels are built by pip from the same index the
# Makefile installs from; sdist-only packages (acsconv) are built into wheels here, so the target host
# needs no compiler and no network.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist/bundle}
PY=${PYTHON:-.venv/bin/python}
DATA=${BENCH_DATA_DIR:-../shared/data/medmnist}
EXTRAS=${BUNDLE_EXTRAS:-ray,postgres,shift}
MEDMNISTC=medmnistc==0.1.0   # installed with --no-deps, as the Makefile does (its pins exclude ours)

[ -x "$PY" ] || { echo "bundle: $PY not found; run 'make test' or 'make run' once to create the venv" >&2; exit 2; }
ls "$DATA"/*.npz >/dev/null 2>&1 || { echo "bundle: no .npz files in $DATA; set BENCH_DATA_DIR" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/data"

git archive --format=tar.gz -o "$OUT/src.tar.gz" HEAD
"$PY" -m pip wheel -q -w "$OUT/wheels" ".[$EXTRAS]" 2>&1 | grep -v "WARNING: Location" || true
"$PY" -m pip wheel -q --no-deps -w "$OUT/wheels" "$MEDMNISTC" 2>&1 | grep -v "WARNING: Location" || true
rm -f "$OUT"/wheels/medauc_bench-*.whl   # the package is installed from src (suites/ live beside it)
ls "$OUT"/wheels/torch-*.whl >/dev/null   # fail loudly if the stack did not build

cp "$DATA"/*.npz "$OUT/data/"
(cd "$OUT/data" && md5sum *.npz > MD5SUMS)
"$PY" - "$OUT/PLATFORM" "$EXTRAS" <<'PY'
import sys, sysconfig
from packaging import tags
tag = next(iter(tags.sys_tags()))
open(sys.argv[1], "w").write(
    f"python {sys.version_info.major}.{sys.version_info.minor}\nplatform {sysconfig.get_platform()}\n"
    f"tag {tag}\nextras {sys.argv[2]}\n")
PY

cp scripts/bundle_install.sh "$OUT/install.sh"
chmod +x "$OUT/install.sh"
echo "bundle: $OUT ($(du -sh "$OUT" | cut -f1)): $(ls "$OUT/wheels" | wc -l) wheels, $(ls "$OUT/data"/*.npz | wc -l) data files; $(tr '\n' ' ' < "$OUT/PLATFORM")"
