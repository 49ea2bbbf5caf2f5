# What every experiment queue shares (parity_runs.sh, long_runs.sh, cdt_plus_runs.sh,
# cdt_plus_v2_runs.sh): sourced from the repository root, after `cd "$(dirname "$0")/.."`.
# Environment: PYTHON (default .venv/bin/python), RUNS_DIR (~/cdt-runs), DATA_DIR (../shared/data/cifar10-jpeg),
# CDT_TF_CPU_BF16 (1 or 0: whether the CPU counts as having bf16, as for --precision=auto; BUILD.md).
set -uo pipefail
PYTHON="${PYTHON:-.venv/bin/python}"
RUNS_DIR="${RUNS_DIR:-$HOME/cdt-runs}"
# Absolute: a resumed run must be given the same --data_dir it started with (config.json records it).
DATA_DIR="$(realpath "${DATA_DIR:-../shared/data/cifar10-jpeg}")"
mkdir -p "$RUNS_DIR"
# train <flagfile name> <run name> <flags...>: one cdt_tf.main run of flags/<flagfile name>.cfg into
# $RUNS_DIR/<run name> (later flags override the flagfile's); a failure is logged and the queue goes on.
train() {
  local flagfile="$1" name="$2"
  shift 2
  echo "== $(date -u +%FT%TZ) $name${*:+ ($*)}"
  "$PYTHON" -m cdt_tf.main --flagfile="flags/$flagfile.cfg" --data_dir="$DATA_DIR" "$@" \
    --model_dir="$RUNS_DIR/$name" || echo "== $name failed ($?)"
}
seeded() {  # seeded <flagfile name> <seed>: the run's name, <flagfile name> for seed 0, else _seed<seed> added
  if [ "$2" = 0 ]; then echo "$1"; else echo "$1_seed$2"; fi
}
# has_bf16: true on a CPU with native bf16 (AMX or AVX512-BF16), where --precision=auto is bf16; as
# distribution.cpu_supports_bfloat16, CDT_TF_CPU_BF16=1 or 0 decides instead of /proc/cpuinfo (blanks
# around it ignored), and any other value stops the queue with the same one-line error.
has_bf16() {
  local forced
  forced="$(printf '%s' "${CDT_TF_CPU_BF16:-}" | tr -d '[:space:]')"
  case "$forced" in
    1) return 0 ;;
    0) return 1 ;;
    "") grep -q -m1 -E 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null ;;
    *)
      echo "CDT_TF_CPU_BF16 must be 1, 0 or unset (read /proc/cpuinfo), got '$CDT_TF_CPU_BF16'" >&2
      exit 2
      ;;
  esac
}
