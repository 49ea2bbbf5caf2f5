#!/usr/bin/env bash
# The paper's CIFAR-10 block at 200 epochs with the reference code beside it, one run after another,
# outside the checkout: the parity pair (the project's ERM, then kaidic/LDAM-DRW's own training on the
# same subset), the project's CDT, then the reference's CDT and the rest of Table 2's CIFAR-10 cells with
# the project's defaults (in the order the CPU suits, below).
#
#   git -C <bare clone of kaidic/LDAM-DRW> archive HEAD | tar -x -C ~/ref/LDAM-DRW   # or git clone
#   .venv/bin/pip install -r requirements-parity.txt
#   nohup bash experiments/parity_runs.sh > ~/cdt-runs/parity_runs.log 2>&1 &
#
# Start it again after a session ends (or a run is killed): a run committed under results/ is skipped, a
# finished one returns at once, an unfinished one resumes from its last finished epoch, the rest start
# in order. One run at a time is the fastest use of 2 cores. The project's runs use --precision=auto
# (bf16 on a CPU with bf16, else float32); the reference trains in float32. Then, for each:
# python tools/collect_run.py --run=~/cdt-runs/<name> (the reference's: cp
# ~/cdt-runs/reference_<name>/{config,results}.json and metrics.jsonl to results/reference_<name>/).
cd "$(dirname "$0")/.."
source experiments/queue.sh
REFERENCE_DIR="${REFERENCE_DIR:-$HOME/ref/LDAM-DRW}"
RESULTS_DIR="${RESULTS_DIR:-results}"  # The committed runs (the tests point it elsewhere).
committed() {  # committed <run name>: true when $RESULTS_DIR/<run name>/ holds the run's results
  [ -f "$RESULTS_DIR/$1/results.json" ] && echo "== $1: committed under $RESULTS_DIR/$1, skipped"
}
project() {  # project <flagfile name>: the project's run of a flagfile, named after it
  committed "$1" || train "$1" "$1"
}
reference() {  # reference <flagfile name of the project run it pairs with> [--gamma=G]
  local name="$1" subset
  shift
  committed "reference_$name" && return
  # The project run's subset; on a machine that has lost its run directories, the committed copy of
  # the same images (every ρ = 100 run of the block draws the same 12,406: subset hash 51b8355…).
  subset="$RUNS_DIR/$name"
  [ -d "$subset" ] || subset="$RESULTS_DIR/reference_cifar10_lt100_ce/subset.json"
  echo "== $(date -u +%FT%TZ) reference_$name ($*)"
  "$PYTHON" tools/reference_parity.py --reference_dir="$REFERENCE_DIR" --data_dir="$DATA_DIR" \
    --subset_from="$subset" --model_dir="$RUNS_DIR/reference_$name" "$@" \
    || echo "== reference_$name failed ($?)"
}
ONE_SESSION_RUNS="cifar10_lt100_ldam_drw cifar10_lt100_resample"  # ~2 h each in float32 here
LONGER_RUNS="cifar10_lt200_ce cifar10_lt200_cdt cifar10_lt10_ce cifar10_lt10_cdt"  # ρ = 10: 20,431 images
more_runs() {  # more_runs <flagfile name>...
  for name in "$@"; do
    project "$name"
  done
}
project cifar10_lt100_ce
reference cifar10_lt100_ce
project cifar10_lt100_cdt
# The reference trains in float32 on any CPU; the project's runs keep the precision they started with.
# So a CPU with native bf16 goes to the project's cells first, and the reference's CDT waits for
# whichever CPU comes next. Without bf16 (about 32 s an epoch at ρ = 100 in float32), the runs that fit
# one session go first: a session's machine is not always handed on with its run directories.
if has_bf16; then
  more_runs $LONGER_RUNS $ONE_SESSION_RUNS
  reference cifar10_lt100_cdt --gamma=0.3
else
  more_runs $ONE_SESSION_RUNS
  reference cifar10_lt100_cdt --gamma=0.3
  more_runs $LONGER_RUNS
fi
echo "== $(date -u +%FT%TZ) done"
