# Sourced by the scripts/gpu_*.sh scripts: the device machine's set-up, the same for each. $OUT (default
# out/) exists; SimpleITK is importable (the device has none and no network: carry its cp3x abi3 wheel
# in wheels/); crossreg imports from this checkout, its output unbuffered; $OUT/machine.txt names the
# GPU, the core count and the commit.
OUT=${OUT:-out}
mkdir -p "$OUT"
python -c "import SimpleITK" 2>/dev/null || python -m pip install --no-deps --quiet --root-user-action=ignore wheels/simpleitk-*.whl
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; git rev-parse --short HEAD; } \
  > "$OUT/machine.txt" 2>&1 || true
