#!/usr/bin/env bash
# The CDT+ recipe at 200 epochs, one run after another, outside the checkout: first its baseline, the
# paper's CDT recipe for each seed (cifar10_lt100_cdt, cifar10_lt100_cdt_seedN), then the recipe with a
# VAL_PER_CLASS-a-class validation split carved out (cifar10_lt100_cdt_plus_val<K>, seed 0: the
# selection run, whose validation split chooses the tau of N_c^tau and of logit adjustment, the
# recipe's prediction), then flags/cifar10_lt100_cdt_plus.cfg for each seed (seed 0 in
# cifar10_lt100_cdt_plus, seed N in cifar10_lt100_cdt_plus_seedN) with --tau_from that selection run.
# VAL_PER_CLASS=0 skips the selection run: the seeds then read the committed one's taus (the
# flagfile's --tau_from=results/cifar10_lt100_cdt_plus_val250).
#
#   nohup bash experiments/cdt_plus_runs.sh > ~/cdt-runs/cdt_plus_runs.log 2>&1 &
#
# Start it again after a session ends (or a run is killed): a finished run (and its second stage)
# returns at once, an unfinished one resumes from its last finished epoch. One run at a time is the
# fastest use of 2 cores. Then, for each: python tools/collect_run.py --run=~/cdt-runs/<name>
# (seed 0 with --export: the SavedModel serves the logit-adjusted prediction).
cd "$(dirname "$0")/.."
source experiments/queue.sh
VAL_PER_CLASS="${VAL_PER_CLASS:-250}"
# The baseline CDT+ is measured against: the paper's CDT recipe at the same padding and precision, the
# same seeds (seed 0 is the reference-parity queue's cifar10_lt100_cdt; it returns at once if finished).
for seed in ${SEEDS:-0 1}; do
  train cifar10_lt100_cdt "$(seeded cifar10_lt100_cdt "$seed")" --seed="$seed"
done
taus_from=()
if [ "$VAL_PER_CLASS" != 0 ]; then
  selection="cifar10_lt100_cdt_plus_val$VAL_PER_CLASS"
  # --tau_from= (empty): the selection run chooses its own taus on its validation split.
  train cifar10_lt100_cdt_plus "$selection" --seed=0 --val_per_class="$VAL_PER_CLASS" --tau_from=
  taus_from=(--tau_from="$RUNS_DIR/$selection")
fi
for seed in ${SEEDS:-0 1}; do
  train cifar10_lt100_cdt_plus "$(seeded cifar10_lt100_cdt_plus "$seed")" --seed="$seed" "${taus_from[@]}"
done
echo "== $(date -u +%FT%TZ) done"
