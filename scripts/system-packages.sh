#!/usr/bin/env bash
# Debian packages the tests use, installed when missing (`make test` and CI call this):
#   postgresql            integration tests: a real PostgreSQL cluster (initdb in a temp dir)
#   chromium, -driver     the MLflow UI browser test (headless, 127.0.0.1 only)
#   libmagickwand-6.q16-6 ImageMagick for medmnistc's corruptions (via Wand)
# Without root (or apt) it only says what is missing: those tests then skip with the reason.
set -uo pipefail
missing=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
ldconfig -p 2>/dev/null | grep -q 'libMagickWand-6.Q16' || missing+=(libmagickwand-6.q16-6)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: Debian packages missing (${missing[*]}); the tests that need them will skip." \
       "Install them with: sudo apt-get install ${missing[*]}" >&2
fi
exit 0
