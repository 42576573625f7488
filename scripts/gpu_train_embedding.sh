#!/usr/bin/env bash
# Train universal anatomical embeddings on a GPU machine in resumable chunks; results land in $OUT.
#
#   bash scripts/gpu_train_embedding.sh MINUTES [STEPS]
#
# Trains `crossreg train embedding` for at most MINUTES of a STEPS-step schedule (default 3000). If
# resume/ holds the pieces of an earlier chunk's checkpoint (uae.ckpt.part-*) and its log, the run goes
# on from there with the same schedule. The checkpoint comes back split into pieces of 15 MB (the
# device returns files of at most 16 MiB): copy $OUT/uae.ckpt.part-* and uae.log.jsonl to resume/ for
# the next chunk, or only uae.pt and the log to go on with a fresh optimiser (the wheel and the
# checkpoint together exceed the 64 MiB that travels). The device has no SimpleITK: carry its cp3x abi3 wheel in wheels/.
set -euo pipefail
MINUTES=${1:?minutes}
STEPS=${2:-3000}
source "$(dirname "$0")/device_env.sh"
RESUME=--force
if compgen -G "resume/uae.ckpt.part-*" > /dev/null; then
  cat resume/uae.ckpt.part-* > "$OUT/uae.ckpt"
  cp resume/uae.log.jsonl "$OUT/uae.log.jsonl"
  RESUME=--resume
elif [ -f resume/uae.pt ]; then  # the model alone (the checkpoint and the wheel exceed what travels)
  cp resume/uae.log.jsonl "$OUT/uae.log.jsonl"
  RESUME="--warm-start resume/uae.pt --force"
fi
python -m crossreg train embedding --out "$OUT/uae.pt" --steps "$STEPS" --minutes "$MINUTES" --device cuda $RESUME
split -b 15m "$OUT/uae.ckpt" "$OUT/uae.ckpt.part-"
rm "$OUT/uae.ckpt"
