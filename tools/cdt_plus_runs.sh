#!/usr/bin/env bash
# The CDT+ recipe at 200 epochs (issue 13), one seed after another, outside the checkout: both stages of
# flags/cifar10_lt100_cdt_plus.cfg for each seed (seed 0 in cifar10_lt100_cdt_plus, seed N in
# cifar10_lt100_cdt_plus_seedN).
#
#   nohup bash tools/cdt_plus_runs.sh > ~/cdt-runs/cdt_plus_runs.log 2>&1 &
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
mkdir -p "$RUNS_DIR"
for seed in ${SEEDS:-0 1}; do
  name=cifar10_lt100_cdt_plus
  [ "$seed" = 0 ] || name="${name}_seed$seed"
  echo "== $(date -u +%FT%TZ) $name (seed $seed)"
  "$PYTHON" -m cdt_tf.main --flagfile=flags/cifar10_lt100_cdt_plus.cfg --data_dir="$DATA_DIR" \
    --seed="$seed" --model_dir="$RUNS_DIR/$name" || echo "== $name failed ($?)"
done
echo "== $(date -u +%FT%TZ) done"
