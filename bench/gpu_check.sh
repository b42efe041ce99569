#!/usr/bin/env bash
# The engine's GPU table in one call of the device machine (one H200; JAX and PyTorch, no
# TensorFlow, no internet): the naive Optuna/Keras loop vs hpo with 1 and 8 workers, hpo's
# per-epoch figures against a bare model.fit, and Boston searches with --batch-trials 1 and 8
# (the book's model with its rates searched, where every batch stacks; the built-in space,
# where a third search asks for each next trial ahead: HPO_ASK_AHEAD=1).
#
# Prepare on the project machine (the wheels and data are git-ignored, so they are carried):
#   ../shared/gpu/fetch-wheels.sh optuna-integration typer click shellingham annotated-doc
#   mkdir -p .data && cp ../shared/datasets/{imdb,reuters,boston_housing}.npz .data/
# Run there (device tool, carry [".whl", ".data"], timeout_s 600; the parts' timeouts add up to
# 560 s, about 9 minutes of the session's 15):
#   bash bench/gpu_check.sh
# On a CPU, to check the script itself: GPU_CHECK_SMALL=1 GPU_CHECK_NO_INSTALL=1 bash bench/gpu_check.sh
# Everything goes to stdout and to $OUT/gpu_check.txt; each bench's record (bench/run.py) to
# $OUT/results/NAME.jsonl, to append to bench/results/NAME.jsonl here.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.txt") 2>&1

if [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export HPO_DATA_DIR=${HPO_DATA_DIR:-$PWD/.data}
py=${PYTHON:-python3}
export BENCH_RESULTS="$out/results"  # bench/run.py's records come back with $OUT

if [ -n "${GPU_CHECK_SMALL:-}" ]; then  # a few seconds a part, to check the script on a CPU
  trials=2 workers=2 epochs=2 boston_trials=2 ahead_trials=2 overhead_epochs=2
else  # Boston: 30 (or 20) trials, so that the searches of a section fit in its 135 s
  trials=16 workers=8 epochs=20 boston_trials=30 ahead_trials=20 overhead_epochs=6
fi

section() { printf '\n== %s (%s)\n' "$1" "$(date -u +%T)"; }
section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "no nvidia-smi: CPU only"
$py -c "import jax, keras, optuna; print('jax', jax.__version__, jax.devices(), '| keras', keras.__version__, '| optuna', optuna.__version__)"

section "IMDB trials/min: naive loop, hpo 1 worker, hpo $workers workers"
timeout 200 $py bench/run.py throughput --trials "$trials" --workers "$workers" --epochs "$epochs" \
  --json "$out/throughput.json" | tail -6

section "IMDB and Reuters seconds per epoch: bare model.fit vs hpo (fit, fused dense, fused ids)"
ds=imdb; [ -f "$HPO_DATA_DIR/reuters.npz" ] && ds=imdb,reuters
timeout 90 $py bench/run.py imdb_overhead --backends jax --datasets "$ds" --epochs "$overhead_epochs" \
  --rss-trials 0 | tail -4

section "Boston, $boston_trials trials, --batch-trials 1 vs 8: the book's model, rates searched"
timeout 135 $py bench/run.py whole_search --target bench/boston_rates.toml --trials "$boston_trials" \
  --seeds 0 --variants "--batch-trials 1" "--batch-trials 8" | tail -3

# Asking ahead compiles the next trial's program while this one's epochs run on the GPU, which
# leaves the CPU idle: where it should pay (docs/lab/performance.md). Three searches share the
# section's 135 s, so each has two thirds of the trials.
section "Boston, $ahead_trials trials, --batch-trials 1 vs 8 vs asked ahead: the built-in study"
timeout 135 $py bench/run.py whole_search --target boston_housing --trials "$ahead_trials" \
  --seeds 0 --variants "--batch-trials 1" "--batch-trials 8" "HPO_ASK_AHEAD=1 --batch-trials 1" \
  | tail -4
section "done"
