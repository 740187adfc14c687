#!/usr/bin/env bash
# Offline install from this bundle: ./install.sh [TARGET] (default ./medauc-bench). Needs no network.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=${1:-$PWD/medauc-bench}
PY=${PYTHON:-python3.11}
want=$(sed -n 's/^python //p' "$HERE/PLATFORM"); plat=$(sed -n 's/^platform //p' "$HERE/PLATFORM")
extras=$(sed -n 's/^extras //p' "$HERE/PLATFORM")
have=$("$PY" -c 'import sys, sysconfig; print(f"{sys.version_info.major}.{sys.version_info.minor} {sysconfig.get_platform()}")') \
  || { echo "install: $PY not found; set PYTHON to a Python $want" >&2; exit 2; }
[ "$have" = "$want $plat" ] || { echo "install: this bundle is for Python $want on $plat, not $have; make one on such a host" >&2; exit 2; }
(cd "$HERE/data" && md5sum --quiet -c MD5SUMS) || { echo "install: data files do not match $HERE/data/MD5SUMS (damaged copy)" >&2; exit 2; }
mkdir -p "$TARGET" && tar -xzf "$HERE/src.tar.gz" -C "$TARGET"
"$PY" -m venv "$TARGET/.venv"
"$TARGET/.venv/bin/pip" install -q --no-index --find-links "$HERE/wheels" --upgrade pip >/dev/null 2>&1 || true
"$TARGET/.venv/bin/pip" install -q --no-index --find-links "$HERE/wheels" -e "$TARGET[$extras]"
"$TARGET/.venv/bin/pip" install -q --no-index --find-links "$HERE/wheels" --no-deps medmnistc
echo "installed into $TARGET; checking it offline:"
cd "$TARGET" && BENCH_DATA_DIR="$HERE/data" MLFLOW_TRACKING_URI="sqlite:///$TARGET/mlflow.db" .venv/bin/bench doctor
echo "use it with: export BENCH_DATA_DIR=$HERE/data; $TARGET/.venv/bin/bench suite quick"
