#!/usr/bin/env bash
# Accuracy benchmark: ERM and CDT (gamma 0.3) on CIFAR-10-LT rho = 100 from the offline JPEG copy.
#   bash experiments/run_cifar10_lt_benchmark.sh [EPOCHS] [RUNS_DIR]
# EPOCHS=200 is the paper's recipe. A smaller value compresses the schedule proportionally:
# warm-up round(5 * E / 200) epochs (at least 1), decays at round(160 * E / 200) and round(180 * E / 200).
# Runs one after the other (each uses both cores); a killed run resumes when started again.
# PRECISION=mixed_bfloat16 (or any --precision) sets the precision; default: the CLI's default.
# EXTRA_FLAGS="--conv_padding=same ..." adds flags to both runs.
set -euo pipefail
epochs=${1:-200}
runs=${2:-runs/benchmark_e${epochs}}
data_dir=$(realpath "${DATA_DIR:-../shared/data/cifar10-jpeg}")  # absolute: a resumed run needs the same path
python=${PYTHON:-python}
precision=()
[ -z "${PRECISION:-}" ] || precision=(--precision="$PRECISION")
read -r -a extra <<< "${EXTRA_FLAGS:-}"
warmup=$(( (5 * epochs + 100) / 200 )); [ "$warmup" -ge 1 ] || warmup=1
decay1=$(( (160 * epochs + 100) / 200 )); decay2=$(( (180 * epochs + 100) / 200 ))
for loss in ce cdt; do
  "$python" -m cdt_tf.main --flagfile="flags/cifar10_lt100_${loss}.cfg" --data_dir="$data_dir" \
    --epochs="$epochs" --warmup_epochs="$warmup" --decay_epochs="$decay1,$decay2" \
    "${precision[@]}" "${extra[@]}" --model_dir="$runs/cifar10_lt100_${loss}"
done
