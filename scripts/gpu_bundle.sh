#!/usr/bin/env bash
# Builds the bundle that scripts/gpu_suite.sh carries to a GPU machine whose image has jax + CUDA,
# flax, optax and orbax-checkpoint but not gin-config, grain, array-record (nor their small
# dependencies portpicker and cloudpickle). Runs on any machine with pip and access to PyPI; the
# wheels are for CPython 3.12 on x86_64 Linux (the GPU image), whatever Python runs this.
#
#   bash scripts/gpu_bundle.sh [OUT_DIR]      # default build/gpu_bundle (git-ignored)
#
# Fails if the bundle exceeds 60 MiB.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/build/gpu_bundle}
PY=${PYTHON:-python3}
LIMIT=$((60 * 1024 * 1024))
WHEELS=(gin-config==0.5.0 grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 cloudpickle==3.1.2)

rm -rf "$OUT"
mkdir -p "$OUT/wheels"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$OUT/wheels" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any "${WHEELS[@]}"
# (c) of the suite adds the exported training data here (TF-free input path, issue 9).
{
  echo "# wheels for CPython 3.12 x86_64, built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  (cd "$OUT" && sha256sum wheels/*)
} > "$OUT/MANIFEST"
size=$(du -sb "$OUT" | cut -f1)
echo "bundle: $OUT, $(ls "$OUT"/wheels | wc -l) wheels, $((size / 1024)) KiB"
if [ "$size" -gt "$LIMIT" ]; then
  echo "error: bundle is $size bytes, over the 60 MiB limit" >&2
  exit 1
fi
