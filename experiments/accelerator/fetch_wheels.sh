#!/usr/bin/env bash
# Fetches the wheels the accelerator run carries (CPython 3.12, manylinux x86_64) into
# experiments/accelerator/wheels/ (git-ignored): the packages of `wheels.txt`, which the target's
# own Python lacks. Needs PyPI; run it here, before the `run` tool call.
#
#   PIP=".venv/bin/python -m pip" bash experiments/accelerator/fetch_wheels.sh   # default: python3 -m pip
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
read -r -a pip_cmd <<< "${PIP:-python3 -m pip}"
dest="$here/wheels"
mkdir -p "$dest"
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3
          --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform any)
binary=(); source_only=()
while read -r requirement _; do
  case "$requirement" in ""|\#*) continue ;; esac
  # imageio-ffmpeg's own wheel holds a 170 MB ffmpeg: its source builds a wheel without one.
  if [[ "$requirement" == imageio-ffmpeg* ]]; then source_only+=("$requirement")
  else binary+=("$requirement"); fi
done < "$here/wheels.txt"
"${pip_cmd[@]}" download -q --no-deps "${platform[@]}" -d "$dest" "${binary[@]}"
if (( ${#source_only[@]} )); then
  "${pip_cmd[@]}" wheel -q --no-deps --no-binary :all: -w "$dest" "${source_only[@]}"
fi
du -sh "$dest"
