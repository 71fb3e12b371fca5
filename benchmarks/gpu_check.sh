#!/usr/bin/env bash
# GPU check of `otalign bench` (prepared for a machine with CUDA; about 3-6 minutes on one GPU).
#
#   1. conventions on the GPU: every library, float64, on tiny problems, against a float64
#      reference (`otalign bench --check`); a failure is reported and makes the script exit 1
#      after the timings;
#   2. float32 timings of the contrastive shapes (512 x 512 and 2048 x 2048 cosine costs) and of
#      the n = 4096 point clouds: otalign against POT (ot.sinkhorn log and ot.batch), GeomLoss and,
#      when JAX has a GPU backend, OTT-JAX. CUDA events + synchronize for torch libraries,
#      block_until_ready for JAX; peak memory from torch.cuda.max_memory_allocated.
#
# Without a GPU it says so and falls back to the CPU convention check and `--quick`.
#
# Usage: benchmarks/gpu_check.sh [OUT_DIR]        (default: results/bench-gpu)
#        PYTHON=/path/to/python benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/bench-gpu}"
PY="${PYTHON:-python}"
# JAX must not pre-allocate most of the GPU (it would starve torch and make its memory figure meaningless)
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: NO CUDA DEVICE (torch.cuda.is_available() is False): nothing was measured on a GPU."
    echo "gpu_check: falling back to the CPU: convention check (float64) and otalign bench --quick."
    "$PY" -m otalign.cli bench --check --device cpu --dtype float64
    check=$?
    "$PY" -m otalign.cli bench --quick --device cpu --out "${OUT}-cpu-fallback" --no-progress
    exit $(( check != 0 ))
fi

"$PY" - <<'PYEOF'
import torch
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
try:
    import jax
    print(f"gpu_check: jax {jax.__version__} devices {jax.devices()}")
except Exception as exc:  # noqa: BLE001
    print(f"gpu_check: jax unavailable ({exc}); OTT-JAX will be skipped")
PYEOF

echo "== 1/2 conventions on the GPU (float64; every library and configuration vs a float64 reference)"
"$PY" -m otalign.cli bench --check --device cuda --dtype float64
check=$?

echo "== 2/2 float32 timings on the GPU: contrastive shapes and n = 4096"
"$PY" -m otalign.cli bench --device cuda --dtype float32 \
    --problems 'contrastive-*,balanced-n4096-*' \
    --libraries otalign,pot:sinkhorn_log,pot:batch_log,pot:batch,geomloss,ott \
    --repeats 10 --budget 30 --out "$OUT" --no-progress
bench=$?

echo "gpu_check: results in $OUT/bench.json and $OUT/plots/ (convention check exit $check, bench exit $bench)"
exit $(( check != 0 || bench != 0 ))
