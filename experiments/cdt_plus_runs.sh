#!/usr/bin/env bash
# The CDT+ recipe at 200 epochs, one run after another, outside the checkout: both stages of
# flags/cifar10_lt100_cdt_plus.cfg for each seed (seed 0 in cifar10_lt100_cdt_plus, seed N in
# cifar10_lt100_cdt_plus_seedN), then the same recipe with a VAL_PER_CLASS-a-class validation split
# carved out (cifar10_lt100_cdt_plus_val<K>, seed 0: the selection run that tells, at the full length,
# whether its second stage beats its argmax on validation and which tau N_c^tau and logit adjustment
# take; VAL_PER_CLASS=0 skips it).
#
#   nohup bash experiments/cdt_plus_runs.sh > ~/cdt-runs/cdt_plus_runs.log 2>&1 &
#
# Start it again after a session ends (or a run is killed): a finished run (and its second stage)
# returns at once, an unfinished one resumes from its last finished epoch. One run at a time is the
# fastest use of 2 cores. Then, for each: python tools/collect_run.py --run=~/cdt-runs/<name>
# (seed 0 with --export --classifier=crt_las: the SavedModel serves the retrained classifier).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
RUNS_DIR="${RUNS_DIR:-$HOME/cdt-runs}"
# Absolute: a resumed run must be given the same --data_dir it started with (config.json records it).
DATA_DIR="$(realpath "${DATA_DIR:-../shared/data/cifar10-jpeg}")"
VAL_PER_CLASS="${VAL_PER_CLASS:-250}"
mkdir -p "$RUNS_DIR"
train() {  # train <name> <flags...>
  local name="$1"
  shift
  echo "== $(date -u +%FT%TZ) $name ($*)"
  "$PYTHON" -m cdt_tf.main --flagfile=flags/cifar10_lt100_cdt_plus.cfg --data_dir="$DATA_DIR" "$@" \
    --model_dir="$RUNS_DIR/$name" || echo "== $name failed ($?)"
}
for seed in ${SEEDS:-0 1}; do
  name=cifar10_lt100_cdt_plus
  [ "$seed" = 0 ] || name="${name}_seed$seed"
  train "$name" --seed="$seed"
done
if [ "$VAL_PER_CLASS" != 0 ]; then
  train "cifar10_lt100_cdt_plus_val$VAL_PER_CLASS" --seed=0 --val_per_class="$VAL_PER_CLASS"
fi
echo "== $(date -u +%FT%TZ) done"
