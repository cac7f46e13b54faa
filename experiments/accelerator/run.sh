#!/usr/bin/env bash
# The prepared accelerator run, in one call: install the carried wheels (no package index), then
# train, measure and evaluate with experiments/accelerator/run.py. Everything it prints goes to
# OUT_DIR/log.txt as well. See experiments/accelerator/README.md.
#
#   bash experiments/accelerator/run.sh OUT_DIR [--cpu] [run.py flags, e.g. --set=PATH=VALUE]
#
# $PYTHON names the interpreter (default python3); VIDEOGEN_SKIP_INSTALL=1 skips the install.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash experiments/accelerator/run.sh OUT_DIR [--cpu] [--set=PATH=VALUE ...]" >&2
  exit 2
fi
out="$1"; shift
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
mkdir -p "$out"
log="$out/log.txt"
: > "$log"
exec > >(tee -a "$log") 2>&1
start=$(date +%s)
echo "== $(date -u +%FT%TZ) accelerator run: $python, out $out, args: $*"
if [[ "${VIDEOGEN_SKIP_INSTALL:-0}" != 1 ]]; then
  if [[ ! -d "$here/wheels" ]]; then
    echo "error: $here/wheels is missing: run experiments/accelerator/fetch_wheels.sh first and" \
         "carry experiments/accelerator/wheels" >&2
    exit 1
  fi
  echo "== install the carried wheels ($(du -sh "$here/wheels" | cut -f1))"
  grep -v '^\s*#' "$here/wheels.txt" | grep -v '^\s*$' > "${TMPDIR:-/tmp}/videogen_wheels.txt"
  "$python" -m pip install -q --no-index --no-deps --find-links "$here/wheels" \
      -r "${TMPDIR:-/tmp}/videogen_wheels.txt"
  echo "== installed in $(( $(date +%s) - start )) s"
fi
cd "$root"
# JAX's compilation cache travels from call to call: on a fresh machine a call spends about 30 s
# on each of its ~10 programs (docs/accelerator.md). The run compiles into $here/compilation_cache
# and the cache is copied to OUT at the end; copy an earlier call's OUT/compilation_cache there and
# carry it with the wheels, and unchanged programs load instead of compiling.
cache="$here/compilation_cache"
export VIDEOGEN_COMPILATION_CACHE="${VIDEOGEN_COMPILATION_CACHE:-$cache}"
if [[ -d "$cache" ]]; then
  echo "== carried compilation cache: $(ls "$cache" | wc -l) programs, $(du -sh "$cache" | cut -f1)"
fi
# The hard stop: the driver's stage budgets keep it well inside this.
status=0
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" timeout -k 15 "${VIDEOGEN_RUN_SECONDS:-460}" \
    "$python" -m experiments.accelerator.run --out="$out" "$@" || status=$?
if [[ "$VIDEOGEN_COMPILATION_CACHE" == "$cache" && -d "$cache" ]]; then
  rm -rf "$out/compilation_cache" && cp -r "$cache" "$out/compilation_cache"
  echo "== compilation cache for the next call: $(du -sh "$cache" | cut -f1) in OUT/compilation_cache"
fi
echo "== $(date -u +%FT%TZ) done in $(( $(date +%s) - start )) s, exit code $status"
exit $status
