#!/usr/bin/env bash
# CrossKEY training with pairs made on the GPU (`--synthesis device`) on the device machine: both
# presets, each for a time budget (steps from the rate of a 30-step run); weights and logs land in $OUT.
#
#   bash scripts/gpu_train_device.sh GENERAL_MIN PATIENT_MIN
#
# Benchmark the models with `crossreg bench --kinds us --n-per-kind 20 --seed S --methods
# crosskey-norefine --weights MODEL` (CPU and GPU answers agree; docs/benchmarks.md).
#
# Training throughput (distinct pairs per second) is in each log: every pair is new (no echoing).
# WORKERS (default 6) processes make the pairs, each driving the GPU.
# The device machine has torch but no SimpleITK and no network: carry its abi3 wheel in wheels/.
set -euo pipefail
source "$(dirname "$0")/device_env.sh"
DATA=crossreg/data
WORKERS=${WORKERS:-6}  # processes making pairs on the GPU (a cone is ~1000 small kernels)
export CROSSREG_COMMIT=${CROSSREG_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
train() {  # train KIND STEPS MODEL_FILE
  if [ "$1" = patient ]; then
    python -m crossreg train patient "$DATA/mni152_t1_2mm.nii.gz" --gm "$DATA/mni152_gm_2mm.nii.gz" \
      --wm "$DATA/mni152_wm_2mm.nii.gz" --synthesis device --workers "$WORKERS" --steps "$2" --out "$3" \
      --device cuda --force
  else
    python -m crossreg train general --synthesis device --workers "$WORKERS" --steps "$2" --out "$3" \
      --device cuda --force
  fi
}
steps_for() {  # steps_for KIND MINUTES: as many steps as fit, at the rate of a 30-step run
  local probe; probe=$(mktemp -d)/rate.pt
  train "$1" 30 "$probe" > /dev/null
  python -c "import json, sys; s = [json.loads(l)['seconds'] for l in open(sys.argv[1])]; \
print(int($2 * 60 / ((s[2] - s[0]) / 20)))" "${probe%.pt}.log.jsonl"
}
for spec in "patient:${2:-2}:crosskey_patient_device" "general:${1:-5}:crosskey_general_v3"; do
  IFS=: read -r KIND MINUTES NAME <<< "$spec"
  STEPS=$(steps_for "$KIND" "$MINUTES")
  START=$(date +%s)
  train "$KIND" "$STEPS" "$OUT/$NAME.pt" | tail -2
  rm -f "$OUT/$NAME.ckpt"
  echo "$KIND: $STEPS steps x 8 distinct pairs in $(( $(date +%s) - START )) s (command, start-up included)" \
    | tee -a "$OUT/machine.txt"
done
