#!/usr/bin/env bash
# Profile a warm Registrator on bench ultrasound cones on a GPU machine, on its GPU and on 2 of its
# CPU cores (taskset), for CrossKEY without refinement and for the defaults (MIND-SSC, refinement).
#
#   [KINDS=us-fine] bash scripts/gpu_profile.sh TAG [N]
#
# Writes $OUT/profile_TAG_{cuda,cpu2}_{crosskey,mind}.md (scripts/profile_register.py reports, N cases
# each, default 5, of the bench kinds KINDS, default us; the CPU ones time the cold CLI too). The device has no SimpleITK: carry its cp3x
# abi3 wheel in wheels/.
set -euo pipefail
TAG=${1:?tag}
N=${2:-5}
KINDS=${KINDS:-us}
source "$(dirname "$0")/device_env.sh"
profile() {  # device features extra-args...
  local device=$1 features=$2; shift 2
  local name=$([ "$device" = cuda ] && echo cuda || echo cpu2)
  local run=(python scripts/profile_register.py --device "$device" --kinds "$KINDS" --n "$N" --features "$features"
             --out "$OUT/profile_${TAG}_${KINDS}_${name}_${features}.md" "$@")
  if [ "$device" = cpu ]; then run=(taskset -c 0,1 "${run[@]}" --threads 2 --cold); fi
  "${run[@]}" > /dev/null
}
profile cuda crosskey --no-refine
profile cuda mind
profile cpu crosskey --no-refine
profile cpu mind
tail -n +1 "$OUT"/profile_"$TAG"_"$KINDS"_*.md | grep -v "^|.*aten::\|^| *[a-z_:]*  *|" | head -150
