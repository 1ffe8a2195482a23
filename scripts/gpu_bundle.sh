#!/usr/bin/env bash
# Builds the bundle that scripts/gpu_suite.sh carries to a GPU machine whose image has jax + CUDA,
# flax, optax and orbax-checkpoint but not gin-config, grain, array-record (nor their small
# dependencies portpicker and cloudpickle). Runs on any machine with pip and access to PyPI; the
# wheels are for CPython 3.12 on x86_64 Linux (the GPU image), whatever Python runs this.
#
#   PYTHON=.venv/bin/python bash scripts/gpu_bundle.sh [OUT_DIR] [--text FILE]
#                                             # default OUT_DIR build/gpu_bundle (git-ignored)
#
# Step (c)'s data is exported here (it needs seqio, so PYTHON must be the project's venv): the
# cloned-language ablation of clone_ablation_gpu.gin, 50/50, 90/10 and monolingual, from the World
# English Bible (apt package sword-text-web, installed when run as root, as launch/demo.py) or
# --text FILE (one verse or sentence a line), to OUT_DIR/clone_data (launch/clone_suite.py). 450
# steps of 64 x 256 tokens: the size limit sets the steps, not the GPU time (the export is ~37 KB a
# step, ~17 MB a run; at 10.4 ms/step on an H100 the 3 x 450 steps are ~14 s of compute).
# Fails if the bundle exceeds 60 MiB.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$REPO/build/gpu_bundle
TEXT=()
while [ $# -gt 0 ]; do
  case $1 in
    --text) [ -f "${2:-}" ] || { echo "error: --text ${2:-}: no such file" >&2; exit 2; }
      TEXT=(--text "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift ;;
    -*) echo "usage: bash scripts/gpu_bundle.sh [OUT_DIR] [--text FILE]" >&2; exit 2 ;;
    *) OUT=$1 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
if ! PYTHONPATH="$REPO" "$PY" -c "import seqio" 2>/dev/null; then
  echo "error: step (c)'s data export needs seqio: run with PYTHON=.venv/bin/python (the project's venv)" >&2
  exit 2
fi
LIMIT=$((60 * 1024 * 1024))
WHEELS=(gin-config==0.5.0 grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 cloudpickle==3.1.2)

rm -rf "$OUT"
mkdir -p "$OUT/wheels"
OUT=$(cd "$OUT" && pwd)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$OUT/wheels" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any "${WHEELS[@]}"
(cd "$REPO" && PYTHONPATH="$REPO" "$PY" -m launch.clone_suite prepare "$OUT/clone_data" \
  "${TEXT[@]}" --train_steps 450 --gin TrainerConfig.checkpoint_every=90)
{
  echo "# wheels for CPython 3.12 x86_64 and step (c)'s data, built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  # The GPU machine may receive the working tree without .git: the suite's records name this commit.
  echo "# source_commit $(PYTHONPATH="$REPO" "$PY" -c 'from t5x_like import provenance; print(provenance.source_commit())')"
  # ... and the tracked files' digest: a tree edited after the bundle was built is not given it.
  git -C "$REPO" ls-files > "$OUT/source_files.txt"
  echo "# source_tree $(PYTHONPATH="$REPO" "$PY" -c 'import sys; from t5x_like import provenance; print(provenance.tree_digest(sys.argv[1], open(sys.argv[2]).read().splitlines()))' "$REPO" "$OUT/source_files.txt")"
  (cd "$OUT" && find wheels clone_data -type f | sort | xargs sha256sum)
} > "$OUT/MANIFEST"
size=$(du -sb "$OUT" | cut -f1)
echo "bundle: $OUT, $(ls "$OUT"/wheels | wc -l) wheels + clone_data, $((size / 1024)) KiB"
if [ "$size" -gt "$LIMIT" ]; then
  echo "error: bundle is $size bytes, over the 60 MiB limit" >&2
  exit 1
fi
