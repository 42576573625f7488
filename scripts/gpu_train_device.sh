#!/usr/bin/env bash
# CrossKEY training with pairs made on the GPU (`--synthesis device`), then its benchmark, on the
# device machine; results and weights land in $OUT.
#
#   bash scripts/gpu_train_device.sh train GENERAL_MIN PATIENT_MIN   # both presets, each for a time
#                                                                   # budget (steps from a 30-step rate)
#   bash scripts/gpu_train_device.sh bench MODEL_DIR                  # v3 (MODEL_DIR/crosskey_general_v3.pt)
#                                                                   # against the shipped v2, and the GPU
#                                                                   # patient model, on MR -> iUS cones
#
# Training throughput (distinct pairs per second) is in each log: every pair is new (no echoing).
# WORKERS (default 6) processes make the pairs, each driving the GPU.
# The device machine has torch but no SimpleITK and no network: carry its abi3 wheel in wheels/.
set -euo pipefail
MODE=${1:?train or bench}
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
if [ "$MODE" = train ]; then
  for spec in "patient:${3:-2}:crosskey_patient_device" "general:${2:-5}:crosskey_general_v3"; do
    IFS=: read -r KIND MINUTES NAME <<< "$spec"
    STEPS=$(steps_for "$KIND" "$MINUTES")
    START=$(date +%s)
    train "$KIND" "$STEPS" "$OUT/$NAME.pt" | tail -2
    rm -f "$OUT/$NAME.ckpt"
    echo "$KIND: $STEPS steps x 8 distinct pairs in $(( $(date +%s) - START )) s (command, start-up included)" \
      | tee -a "$OUT/machine.txt"
  done
  exit 0
fi
MODELS=${2:?folder with the trained models}
for SEED in 0 1; do
  python -m crossreg bench --kinds us --n-per-kind 20 --seed "$SEED" --device cuda --methods crosskey-norefine \
    --out "$OUT/v2_us_s$SEED" --force | tail -4
  python -m crossreg bench --kinds us --n-per-kind 20 --seed "$SEED" --device cuda --methods crosskey-norefine \
    --weights "$MODELS/crosskey_general_v3.pt" --out "$OUT/v3_us_s$SEED" --force | tail -4
done
python -m crossreg bench --kinds us --n-per-kind 20 --seed 0 --device cuda --methods crosskey-norefine \
  --weights "$MODELS/crosskey_patient_device.pt" --out "$OUT/patient_us_s0" --force | tail -4
for W in v2 v3; do
  WEIGHTS=()
  [ "$W" = v3 ] && WEIGHTS=(--weights "$MODELS/crosskey_general_v3.pt")
  python -m crossreg bench --kinds us-other --n-per-kind 10 --seed 0 --device cuda --methods crosskey-norefine \
    "${WEIGHTS[@]}" --out "$OUT/${W}_other_s0" --force | tail -4
done
cd "$OUT" && tar czf bench.tgz ./*_s0 ./*_s1 --exclude='*.png' && rm -rf ./*_s0 ./*_s1
