#!/usr/bin/env bash
# CDT+ v2's training queue, one run after another, outside the checkout (issue: CDT+ - CDT >= +7
# points, two seeds each): first the baseline's second seed (the paper's CDT recipe, seed 1, at the
# same padding and precision as every CDT+ run; seed 0 is the reference-parity queue's
# cifar10_lt100_cdt), then the 60-epoch ladder with two seeds a rung (RUNGS; BENCHMARKS.md, "CDT+").
# The ladder's committed seed-0 rungs (results/cdt_plus_ladder/<rung>) are copied in first, so that they
# are collected, not trained again.
#
#   nohup bash experiments/cdt_plus_v2_runs.sh > ~/cdt-runs/cdt_plus_v2_runs.log 2>&1 &
#   # after the reference-parity queue, which owns the cores first:
#   nohup bash -c 'bash experiments/parity_runs.sh; bash experiments/cdt_plus_v2_runs.sh' > ~/cdt-runs/queue.log 2>&1 &
#
# Start it again after a session ends: a finished run returns at once, an unfinished one resumes from
# its last finished epoch. The ladder's table: python experiments/cdt_plus_ladder.py
# --runs_dir=~/cdt-runs/cdt_plus_ladder --seeds=0,1 --rungs=$RUNGS --norun.
#
# Every run of it is bf16 (PRECISION, default mixed_bfloat16), as the committed CDT+ runs and seed-0
# rungs are; on a CPU without native bf16, where bf16 crawls, it stops at once unless PRECISION is set
# (PRECISION=float32: the whole queue in float32, which BENCHMARKS must then say).
cd "$(dirname "$0")/.."
source experiments/queue.sh
LADDER_DIR="${LADDER_DIR:-$RUNS_DIR/cdt_plus_ladder}"
if [ -z "${PRECISION:-}" ] && ! has_bf16; then
  echo "cdt_plus_v2_runs.sh: this CPU has no native bf16, and the CDT+ runs are bf16 (they would crawl here): start it on a CPU with bf16, or set PRECISION=float32 for a float32 queue" >&2
  exit 2
fi
PRECISION="${PRECISION:-mixed_bfloat16}"
# The current recipe's rung and CDT first (the comparisons), then one lever each (cdt_plus_ladder.py's
# LEVERS): the logit-adjusted loss with and without CDT's temperatures, the mixup-to-plain ramp, ImbSAM,
# weight balancing, and the balanced contrastive branch (beside CDT, and as its authors train it).
RUNGS="${RUNGS:-cdt,mixup+mixoff,mixup+mixoff+prior,mixup+mixoff+prior+gamma0,mixup+mixramp,bcl,bcl+prior+gamma0,mixup+mixoff+imbsam,mixup+mixoff+maxnorm+wd5e-4}"
mkdir -p "$LADDER_DIR"

train cifar10_lt100_cdt "$(seeded cifar10_lt100_cdt 1)" --seed=1 --precision="$PRECISION"

for committed in results/cdt_plus_ladder/*/; do
  rung="$(basename "$committed")"
  [ -e "$LADDER_DIR/$rung" ] || cp -r "$committed" "$LADDER_DIR/$rung"
done
echo "== $(date -u +%FT%TZ) ladder: $RUNGS"
"$PYTHON" experiments/cdt_plus_ladder.py --runs_dir="$LADDER_DIR" --data_dir="$DATA_DIR" --seeds=0,1 \
  --rungs="$RUNGS" --precision="$PRECISION" || echo "== ladder failed ($?)"
echo "== $(date -u +%FT%TZ) done"
