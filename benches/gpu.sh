#!/usr/bin/env bash
# The GPU benchmark, prepared for the device tool (one H200, Python 3.12 with torch,
# transformers, peft, accelerate already installed; no network). Carry the abi3 wheel built
# here:  maturin build --release --out dist   then run with carry=["dist"]:
#   bash benches/gpu.sh
# Writes benches/results/*_full.json|md and summary_full.md (copied to $OUT when set).
# Budget: well under 8 minutes (roberta-base config, bf16 autocast, synthetic tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install --no-deps --no-index --quiet dist/fwlora-*-abi3-*.whl
$PY -m pip install --no-index --quiet scipy 2>/dev/null || $PY -c "import scipy" \
    || { echo "scipy missing on the device: needed for Spearman ρ" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 450 $PY benches/run_all.py --full
if [[ -n "${OUT:-}" ]]; then cp benches/results/*.json benches/results/*.md "$OUT"/; fi
