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
# Start it again after a session ends (or a run is killed): a finished run returns at once, an
# unfinished one resumes from its last finished epoch, the rest start in order. One run at a time is the
# fastest use of 2 cores. The project's runs use --precision=auto (bf16 on a CPU with bf16, else
# float32); the reference trains in float32. Then, for each: python tools/collect_run.py
# --run=~/cdt-runs/<name> (the reference's: cp ~/cdt-runs/reference_<name>/{config,results}.json and
# metrics.jsonl to results/reference_<name>/).
cd "$(dirname "$0")/.."
source experiments/queue.sh
REFERENCE_DIR="${REFERENCE_DIR:-$HOME/ref/LDAM-DRW}"
project() {  # project <flagfile name>: the project's run of a flagfile, named after it
  train "$1" "$1"
}
reference() {  # reference <flagfile name of the project run it pairs with> [--gamma=G]
  local name="$1"
  shift
  echo "== $(date -u +%FT%TZ) reference_$name ($*)"
  "$PYTHON" tools/reference_parity.py --reference_dir="$REFERENCE_DIR" --data_dir="$DATA_DIR" \
    --subset_from="$RUNS_DIR/$name" --model_dir="$RUNS_DIR/reference_$name" "$@" \
    || echo "== reference_$name failed ($?)"
}
more_runs() {
  for name in ${MORE_RUNS:-cifar10_lt200_ce cifar10_lt200_cdt cifar10_lt10_ce cifar10_lt10_cdt cifar10_lt100_ldam_drw cifar10_lt100_resample}; do
    project "$name"
  done
}
project cifar10_lt100_ce
reference cifar10_lt100_ce
project cifar10_lt100_cdt
# The reference trains in float32 on any CPU; the project's runs keep the precision they started with.
# So a CPU with native bf16 goes to the project's cells first, and the reference's CDT waits for
# whichever CPU comes next (a session without bf16 runs it first).
if grep -q -m1 -E 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null; then
  more_runs
  reference cifar10_lt100_cdt --gamma=0.3
else
  reference cifar10_lt100_cdt --gamma=0.3
  more_runs
fi
echo "== $(date -u +%FT%TZ) done"
