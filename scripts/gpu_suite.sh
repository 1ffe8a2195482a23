#!/usr/bin/env bash
# The GPU suite of issue 10: one command, budgeted for about 8 minutes on one H100/H200 (cut off at 555 s).
#
#   bash scripts/gpu_bundle.sh                    # on any machine with pip and internet (CPU is fine)
#   bash scripts/gpu_suite.sh OUT_DIR             # on the GPU machine, from the repository root
#   bash scripts/gpu_suite.sh OUT_DIR --cpu_smoke # the same steps with tiny models on CPU (CI)
#
# Needs Python with jax (+ CUDA), flax, optax, orbax-checkpoint, numpy. What the GPU image lacks
# (gin-config, grain, array-record, portpicker, cloudpickle) comes from the bundle's wheels
# (--bundle DIR, default build/gpu_bundle), unpacked into a temporary directory on PYTHONPATH: the
# image's own packages are never changed. Each step writes a JSON record and a markdown table to
# OUT_DIR; SUMMARY.md puts them together with the machine and the time each step took.
#   (a) ~1.1B Llama-style decoder, seq 2048, bf16: train-step MFU and tokens/s for the levers
#       (fused/chunked loss, cuDNN attention, remat, scan vs unroll, batch), a profiler trace of
#       the default's steps with a summary of where their time went, and (after (b)) the
#       best-guess variant again under XLA's GPU scheduler flags;
#   (b) mT5-base-like encoder-decoder, 1024/256;
#   (c) the cloned-language ablation end to end (clone_ablation_gpu.gin): 50/50, 90/10 and the
#       monolingual baseline trained from the data gpu_bundle.sh exported (BUNDLE/clone_data; in
#       --cpu_smoke a tiny export made on the spot from ../shared/data's Multi30k English), then
#       t5x_like.eval and t5x_like.report (launch/clone_suite.py), under a guard that makes
#       `import tensorflow` and `import seqio` fail as on the GPU image. The runs share the sweep's
#       compilation cache (c_ablation/compilation_cache): trained one after another, the second and
#       third load the train step the first compiled (c_ablation.json: train_step_compiles). It gets
#       what is left of the suite's 555 s (at most 300 s), and the benchmarks before it leave it
#       at least 210 s (they are cut short or skipped, keeping what they timed; GPU_SUITE_LIMIT_S
#       changes the 555): c_ablation.json, c_ablation.md, c_ablation/report.md and its plots.
set -euo pipefail

usage() { echo "usage: bash scripts/gpu_suite.sh OUT_DIR [--cpu_smoke] [--bundle DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
SMOKE=0
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=$REPO/build/gpu_bundle
while [ $# -gt 0 ]; do
  case $1 in
    --cpu_smoke) SMOKE=1 ;;
    --bundle) BUNDLE=$2; shift ;;
    *) usage ;;
  esac
  shift
done
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$REPO"
SUITE_START=$(date +%s)
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import gin" 2>/dev/null; then
  if ! ls "$BUNDLE"/wheels/*.whl >/dev/null 2>&1; then
    echo "error: gin-config is not importable and $BUNDLE/wheels has no wheels: run 'bash scripts/gpu_bundle.sh' and carry build/gpu_bundle" >&2
    exit 2
  fi
  # A wheel is a zip of importable files: unpacking needs no pip and leaves the image untouched.
  for whl in "$BUNDLE"/wheels/*.whl; do "$PY" -m zipfile -e "$whl" "$SITE"; done
  export PYTHONPATH="$REPO:$SITE${PYTHONPATH#$REPO}"
fi
# Records name the commit (t5x_like/provenance.py): git's when the tree is a checkout, else this one.
if [ -f "$BUNDLE/MANIFEST" ] && [ ! -e "$REPO/.git" ]; then
  SOURCE_COMMIT="$(PYTHONPATH="$REPO" "$PY" -c 'import sys; from t5x_like import provenance; print(provenance.bundle_commit(sys.argv[1]) or "")' "$BUNDLE")"
  export SOURCE_COMMIT
  case "$SOURCE_COMMIT" in *"+ changes"*)
    echo "warning: this tree differs from the one $BUNDLE was built from (without .git, the records" \
         "say so instead of naming a commit): rebuild it with 'bash scripts/gpu_bundle.sh'" >&2 ;;
  esac
fi
"$PY" -c "import gin, jax, flax, optax, orbax.checkpoint" || {
  echo "error: the suite needs gin, jax, flax, optax and orbax-checkpoint importable with $PY" >&2; exit 2; }

if [ "$SMOKE" = 1 ]; then
  unset XLA_FLAGS
  export JAX_PLATFORMS=cpu
  A_PRESET=smoke_decoder; A_VARIANTS=default,remat_none; A_BEST=default
  B_PRESET=smoke_encdec; B_VARIANTS=default,plain_loss
  # (Budgets that build every variant even on a loaded CI machine: a tiny encoder-decoder took 35 s
  # to compile there, and at 60 s its second variant was skipped.)
  ROUNDS=1; BUDGET_A=300; BUDGET_B=300; GPU_FLAGS=""
  SUITE_LIMIT=${GPU_SUITE_LIMIT_S:-3600}; C_RESERVE=0
else
  A_PRESET=gpu_1b
  # cuDNN attention and the fused loss are the presets' defaults; each variant changes one lever.
  # Ordered by what they should tell (the budget may stop the last ones): compiled for an H200
  # without one (BENCHMARKS.md), every variant fits at batch 8 (no remat: 61 GiB of 141).
  # remat_dots: MaxText's 'minimal' (the cuDNN forward runs again in the backward pass);
  # segment_mask: packed rows' mask, a bias tensor for cuDNN, instead of its causal mask.
  A_VARIANTS=default,remat_none,batch_x2,remat_dots,segment_mask,no_scan,chunk_512,plain_loss
  A_BEST=default
  B_PRESET=gpu_mt5_base; B_VARIANTS=default,remat_none,chunk_64
  # Budgets stop new variants from starting (one starts only if, built as slowly as the slowest so
  # far, it is built within the budget; a 1B variant compiles in about a minute, so (a) builds two
  # at 70 s each): ~5 min for (a) and (b), leaving ~3 for (c).
  ROUNDS=2; BUDGET_A=150; BUDGET_B=60
  # The steps within 555 s (the lent machine runs a command for at most 600 s, which must also write
  # SUMMARY.md and pack the results), of which the benchmarks leave (c) at least C_RESERVE: (c) is
  # the one step whose result is lost if it is cut short (its checkpoints stay on the machine),
  # while a benchmark keeps every round it timed.
  SUITE_LIMIT=${GPU_SUITE_LIMIT_S:-555}; C_RESERVE=210
  GPU_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_highest_priority_async_stream=true"
  # JAX takes 75% of a GPU's memory by default; remat_none needs 61 GiB, over an H100's 59.7 GiB at
  # 75%. The suite has the GPU to itself, so 90% (unless the caller chose).
  if [ -z "${XLA_CLIENT_MEM_FRACTION:-}${XLA_PYTHON_CLIENT_MEM_FRACTION:-}" ]; then
    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
  fi
fi

declare -a STEP_LINES=()
step() {  # step NAME TIMEOUT_S CMD...: runs one step, records its time and exit status, never aborts
  local name=$1 limit=$2; shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name ($(date -u +%H:%M:%S))"
  set +e
  # (SIGTERM at the limit, as the benchmarks expect; SIGKILL 15 s later for whatever ignores it)
  timeout -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -E '^\{|error|Error' | cut -c1-400
  rc=${PIPESTATUS[0]}
  set -e
  STEP_LINES+=("| $name | $rc | $(( $(date +%s) - t0 )) s |")
}

bench() {  # bench NAME PRESET VARIANTS BUDGET_S [more flags]
  # Each bench ends before (c)'s reserve: its time limit is its budget + 120 s (timing and the trace
  # after the builds) or what is left, whichever is less, and with under 90 s left it is skipped.
  local name=$1 preset=$2 variants=$3 budget=$4; shift 4
  local left=$(( SUITE_LIMIT - C_RESERVE - ($(date +%s) - SUITE_START) ))
  local limit=$(( budget + 120 ))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 90 ]; then
    echo "== $name skipped: ${left} s left before (c)'s reserve of ${C_RESERVE} s"
    STEP_LINES+=("| $name | skipped: ${left} s left before (c)'s ${C_RESERVE} s | 0 s |")
    return
  fi
  [ "$budget" -le $(( limit - 120 )) ] || budget=$(( limit - 120 ))
  [ "$budget" -ge 1 ] || budget=1  # (the first variant is always built)
  step "$name" "$limit" "$PY" benchmarks/train_step_throughput.py --preset "$preset" \
    --variants "$variants" --rounds "$ROUNDS" --budget_s "$budget" --out "$OUT/$name.json" \
    --markdown "$OUT/$name.md" "$@"
}

# The default variant's steps traced (a_profile/plugins/profile: TensorBoard's Profile tab) and
# summarized in a_decoder.md: where the time goes, for the next MFU levers.
bench a_decoder "$A_PRESET" "$A_VARIANTS" "$BUDGET_A" --profile "$OUT/a_profile"
bench b_encdec "$B_PRESET" "$B_VARIANTS" "$BUDGET_B"
# Last of the benchmarks, the first to give way to (c): the default again under XLA's GPU flags.
FLAGS=$(echo ${XLA_FLAGS:-} $GPU_FLAGS)  # XLA reads a flag string that is not '--...' as a file name
if [ -n "$FLAGS" ]; then
  XLA_FLAGS="$FLAGS" bench a_decoder_xla_flags "$A_PRESET" "$A_BEST" 30
else
  bench a_decoder_xla_flags "$A_PRESET" "$A_BEST" 30
fi

# (c) The guard: a sitecustomize whose path finder does not see tensorflow or seqio, so the step
# behaves as on the GPU image even where they are installed (training runs in subprocesses that
# inherit PYTHONPATH).
mkdir -p "$SITE/_no_tf"
cat > "$SITE/_no_tf/sitecustomize.py" <<'PY'
import importlib.machinery
import sys


class _Hidden(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.partition('.')[0] in ('tensorflow', 'seqio'):
      return None
    return super().find_spec(name, path, target)


sys.meta_path[:] = [_Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
PY
NO_TF="$SITE/_no_tf:$PYTHONPATH"
C_SKIP=""
for m in tensorflow seqio; do
  if PYTHONPATH=$NO_TF "$PY" -c "import $m" 2>/dev/null; then
    echo "error: the guard did not hide $m from $PY" >&2; C_SKIP="guard failed"
  fi
done
if [ "$SMOKE" = 1 ]; then
  C_DATA=$SITE/clone_data  # exported on the spot (CI has seqio), tiny: 2 x 32 wide, 20 steps
  C_TEXT=$REPO/../shared/data/parallel/multi30k/train.en
  # The export needs seqio: C_PREPARE_PYTHON names a Python that has it when PYTHON lacks it (with
  # its own packages only: the bundle's unpacked wheels are built for the GPU image's Python).
  PREP=("$PY")
  [ -z "${C_PREPARE_PYTHON:-}" ] || PREP=(env PYTHONPATH="$REPO" "$C_PREPARE_PYTHON")
  step c_prepare 300 "${PREP[@]}" -m launch.clone_suite prepare "$C_DATA" --text "$C_TEXT" \
    --train_steps 20 --vocab_size 500 --eval_windows 64 --gin NUM_LAYERS=2 --gin EMBED_DIM=32 \
    --gin NUM_HEADS=2 --gin HEAD_DIM=16 --gin MLP_DIM=64 --gin SEQUENCE_LENGTH=64 --gin BATCH_SIZE=8 \
    --gin TrainerConfig.checkpoint_every=5 --gin OptimizerConfig.warmup_steps=5
  # One run at a time, as on the GPU: the runs after the first load the train step from the
  # sweep's compilation cache (side by side, each compiled it: three compiles on a 2-core machine).
  C_LIMIT=400; C_JOBS=1
else
  C_DATA=$BUNDLE/clone_data
  C_LIMIT=$(( SUITE_LIMIT - ($(date +%s) - SUITE_START) ))
  [ "$C_LIMIT" -le 300 ] || C_LIMIT=300
  [ "$C_LIMIT" -ge 30 ] || C_LIMIT=30  # (timeout 0 would mean no limit)
  C_JOBS=1  # one accelerator: one training process at a time
fi
if [ -z "$C_SKIP" ] && [ ! -f "$C_DATA/prepare.json" ]; then
  echo "error: $C_DATA/prepare.json missing: build the bundle with 'bash scripts/gpu_bundle.sh'" >&2
  C_SKIP="missing data"
fi
if [ -z "$C_SKIP" ]; then
  step c_ablation "$C_LIMIT" env PYTHONPATH="$NO_TF" "$PY" -m launch.clone_suite run "$C_DATA" \
    "$OUT/c_ablation" --jobs "$C_JOBS" --record "$OUT/c_ablation.json" --markdown "$OUT/c_ablation.md"
else
  STEP_LINES+=("| c_ablation | $C_SKIP | 0 s |")
fi

{
  echo "# GPU suite ($([ "$SMOKE" = 1 ] && echo 'CPU smoke' || echo 'accelerator'))"
  echo
  echo "- machine: $("$PY" -c 'import jax; d = jax.devices(); print(len(d), "x", d[0].device_kind, "| jax", jax.__version__)')"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  fi
  echo "- commit: $("$PY" -c 'from t5x_like import provenance; print(provenance.source_commit())'); $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- total: $(( $(date +%s) - SUITE_START )) s"
  echo
  echo "| step | exit | time |"
  echo "|---|---|---|"
  printf '%s\n' "${STEP_LINES[@]}"
  echo
  for f in "$OUT"/a_decoder.md "$OUT"/a_decoder_xla_flags.md "$OUT"/b_encdec.md "$OUT"/c_ablation.md; do
    [ -f "$f" ] && { cat "$f"; echo; }
  done
} > "$OUT/SUMMARY.md"
cat "$OUT/SUMMARY.md"
# Failed steps make the suite fail, after everything that could run has run and been written.
for line in "${STEP_LINES[@]}"; do
  case $line in *"| 0 |"*|*"| skipped: "*) ;; *) exit 1 ;; esac
done
