#!/usr/bin/env bash
# The paper's 200-epoch CIFAR-10-LT rho=100 runs, one after another, in bf16, outside the checkout.
#
#   nohup bash experiments/long_runs.sh > ~/cdt-runs/long_runs.log 2>&1 &
#
# Start it again after a session ends (or a run is killed): a finished run returns at once, an
# unfinished one resumes from its last finished epoch, the rest start in order. One run at a time is
# the fastest use of 2 cores. Then: python tools/collect_run.py --run=~/cdt-runs/<name> [--export].
# --conv_padding=same: the CDT and ERM runs started before symmetric padding became the default (their
# config.json has no conv_padding, so they resume only with "same"); the rest of the row matches them.
cd "$(dirname "$0")/.."
source experiments/queue.sh
for name in ${RUNS:-cifar10_lt100_cdt cifar10_lt100_ce cifar10_lt100_ldam_drw cifar10_lt100_resample}; do
  train "$name" "$name" --precision=mixed_bfloat16 --conv_padding=same
done
echo "== $(date -u +%FT%TZ) done"
