#!/usr/bin/env bash
# Train CrossKEY descriptors on a GPU machine and evaluate them on the held-out MR->iUS benchmark
# cases, in one call; results and weights land in $OUT (at most 8 files come back from the device).
#
#   bash scripts/gpu_train_eval.sh general [STEPS]     # every real MRI shipped, new anatomies (the
#                                                      # preset's 1300 steps: the shipped weights)
#   bash scripts/gpu_train_eval.sh patient [STEPS]     # the MNI152 brain as the patient (800 steps)
#   bash scripts/gpu_train_eval.sh patient 5min        # as many steps as fit in 5 minutes
#   ECHO=4 bash scripts/gpu_train_eval.sh patient 4min # each batch of pairs serves 4 steps (patient's default)
#   METHODS=none ...                                   # train only (bench elsewhere)
#
# With a time budget (NNmin), a 20-step run first measures the steady seconds per step (log lines at
# steps 10 and 20), and the real run takes as many steps as fit; the schedules are then fixed, so the
# run is as reproducible as one given that step count.
#
# The device machine has torch but no SimpleITK and no network: carry a cp312 wheel in wheels/
# (pip download --python-version 3.12 --only-binary=:all: --no-deps -d wheels/ SimpleITK).
set -euo pipefail
KIND=${1:-general}
STEPS=${2:-}  # empty: the preset's
source "$(dirname "$0")/device_env.sh"
WORKERS=$(( $(nproc) - 1 ))
MODEL="$OUT/crosskey_$KIND.pt"
DATA=crossreg/data
train() {  # train STEPS MODEL_FILE
  if [ "$KIND" = patient ]; then
    python -m crossreg train patient "$DATA/mni152_t1_2mm.nii.gz" --gm "$DATA/mni152_gm_2mm.nii.gz" \
      --wm "$DATA/mni152_wm_2mm.nii.gz" --out "$2" ${1:+--steps "$1"} ${ECHO:+--echo "$ECHO"} --device cuda \
      --workers "$WORKERS" --force
  else
    python -m crossreg train general --out "$2" ${1:+--steps "$1"} ${ECHO:+--echo "$ECHO"} --device cuda \
      --workers "$WORKERS" --force
  fi
}
if [[ "$STEPS" == *min ]]; then
  BUDGET_S=$(( ${STEPS%min} * 60 ))
  CALIBRATION=$(mktemp -d)/calibration.pt
  train 20 "$CALIBRATION" > /dev/null
  STEPS=$(python -c "import json, sys; s = [json.loads(l)['seconds'] for l in open(sys.argv[1])]; \
print(int($BUDGET_S / ((s[1] - s[0]) / 10)))" "${CALIBRATION%.pt}.log.jsonl")
  echo "budget ${BUDGET_S} s: ${STEPS} steps" | tee -a "$OUT/machine.txt"
fi
START=$(date +%s)
train "$STEPS" "$MODEL" | tail -3
echo "training: ${STEPS:-preset} steps (echo ${ECHO:-preset}) in $(( $(date +%s) - START )) s" | tee -a "$OUT/machine.txt"
rm -f "${MODEL%.pt}.ckpt"
[ "${METHODS:-}" = none ] && exit 0
python -m crossreg bench --kinds us --n-per-kind 10 --weights "$MODEL" --device cuda --out "$OUT/bench" \
  --methods ${METHODS:-identity,crossreg-dense,crosskey-norefine,crosskey} --force | tail -30
