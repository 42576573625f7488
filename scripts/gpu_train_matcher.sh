#!/usr/bin/env bash
# Train the 2D matcher on a GPU machine in resumable chunks, then measure it on held-out families.
#
#   bash scripts/gpu_train_matcher.sh MINUTES [STEPS]
#
# Trains `crossreg train matcher` for at most MINUTES of a STEPS-step schedule (default 30000), then
# writes $OUT/matcher2d_metrics.json: matching on 64 pairs per family, zero-shot on the held-out
# families (edges, emission) and on the training ones, at 256 x 256. If resume/ holds the pieces of an
# earlier chunk's checkpoint (matcher2d.ckpt.part-*) and its log, the run goes on with the same
# schedule; with only resume/matcher2d.pt and the log it goes on with a fresh optimiser. Files come
# back at most 16 MiB each: the checkpoint is split into 15 MB pieces. The device has no SimpleITK
# (importing crossreg needs it; training never calls it): carry its cp3x abi3 wheel in wheels/.
set -euo pipefail
MINUTES=${1:?minutes}
STEPS=${2:-30000}
source "$(dirname "$0")/device_env.sh"
export CROSSREG_COMMIT=${CROSSREG_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
RESUME=--force
if compgen -G "resume/matcher2d.ckpt.part-*" > /dev/null; then
  cat resume/matcher2d.ckpt.part-* > "$OUT/matcher2d.ckpt"
  cp resume/matcher2d.log.jsonl "$OUT/matcher2d.log.jsonl"
  RESUME=--resume
elif [ -f resume/matcher2d.pt ]; then
  cp resume/matcher2d.log.jsonl "$OUT/matcher2d.log.jsonl"
  RESUME="--warm-start resume/matcher2d.pt --force"
fi
python -m crossreg train matcher --out "$OUT/matcher2d.pt" --steps "$STEPS" --minutes "$MINUTES" --device cuda $RESUME
python - "$OUT" <<'PY'
import json, sys, time
from pathlib import Path

from crossreg.matcher2d.families import HELD_OUT_FAMILIES, TRAIN_FAMILIES
from crossreg.matcher2d.match import load_matcher
from crossreg.matcher2d.sources import source_pool
from crossreg.train.matcher import evaluate_matcher

out = Path(sys.argv[1])
net, meta = load_matcher(out / "matcher2d.pt", "cuda")
start = time.perf_counter()
report = {
    "steps": meta.get("steps"),
    "commit": meta.get("commit"),
    "held_out": evaluate_matcher(net, source_pool(device="cuda"), HELD_OUT_FAMILIES),
    "trained": evaluate_matcher(net, source_pool(device="cuda"), TRAIN_FAMILIES),
}
report["eval_seconds"] = time.perf_counter() - start
(out / "matcher2d_metrics.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
PY
split -b 15m "$OUT/matcher2d.ckpt" "$OUT/matcher2d.ckpt.part-"
rm "$OUT/matcher2d.ckpt"
