#!/usr/bin/env bash
# Train CrossKEY descriptors on a GPU machine and evaluate them on the held-out MR->iUS benchmark
# cases, in one call; results and weights land in $OUT (at most 8 files come back from the device).
#
#   bash scripts/gpu_train_eval.sh general [STEPS]     # every real MRI shipped, new anatomies
#   bash scripts/gpu_train_eval.sh patient [STEPS]     # the MNI152 brain as the patient
#
# The device machine has torch but no SimpleITK and no network: carry a cp312 wheel in wheels/
# (pip download --python-version 3.12 --only-binary=:all: --no-deps -d wheels/ SimpleITK).
set -euo pipefail
KIND=${1:-general}
STEPS=${2:-600}
OUT=${OUT:-out}
mkdir -p "$OUT"
python -c "import SimpleITK" 2>/dev/null || python -m pip install --no-deps --quiet --root-user-action=ignore wheels/simpleitk-*.whl
export PYTHONPATH=$PWD
WORKERS=$(( $(nproc) - 1 ))
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; git rev-parse --short HEAD; } \
  > "$OUT/machine.txt" 2>&1 || true
MODEL="$OUT/crosskey_$KIND.pt"
DATA=crossreg/data
if [ "$KIND" = patient ]; then
  python -m crossreg train patient "$DATA/mni152_t1_2mm.nii.gz" --gm "$DATA/mni152_gm_2mm.nii.gz" \
    --wm "$DATA/mni152_wm_2mm.nii.gz" --out "$MODEL" --steps "$STEPS" --device cuda --workers "$WORKERS" --force
else
  python -m crossreg train general --out "$MODEL" --steps "$STEPS" --device cuda --workers "$WORKERS" --force
fi
rm -f "${MODEL%.pt}.ckpt"
python -m crossreg bench --kinds us --n-per-kind 10 --weights "$MODEL" --device cuda --out "$OUT/bench" \
  --methods ${METHODS:-identity,crossreg-dense,crosskey-norefine,crosskey} --force | tail -30
