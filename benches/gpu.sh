#!/usr/bin/env bash
# The GPU benchmark, prepared for the device tool (one H200; its python3 is Python 3.12 with
# torch, transformers, peft, scipy and numpy installed; no network).
#
# Here, first build the abi3 wheel from the current sources (dist/ is git-ignored):
#     .venv/bin/maturin build --release --out dist
# then call the device tool's `run` with
#     command:   bash benches/gpu.sh
#     carry:     ["dist"]
#     timeout_s: 540
# It installs the wheel (--no-deps: the device has every dependency), runs every benchmark
# with the real roberta-base config, bf16 autocast and synthetic tokens (benches/run_all.py
# --full --bf16), and writes benches/results/*_gpu.json|md and summary_gpu.md|json; with
# $OUT set (the device tool), a tarball of them, the summary and the log come back.
# Budget: under 8 minutes on an H200 (about 3 expected: the benches themselves take ~2).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benches/results}
LOG="$OUT_DIR/gpu_log.txt"
mkdir -p "$OUT_DIR" benches/results

wheel=$(ls -t dist/fwlora-*-abi3-*.whl 2>/dev/null | head -n 1 || true)
if [[ -z "$wheel" ]]; then
    echo "no dist/fwlora-*-abi3-*.whl: run '.venv/bin/maturin build --release --out dist' here and carry dist" >&2
    exit 2
fi
{
    echo "wheel: $wheel"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    $PY -m pip install --no-deps --no-index --quiet --force-reinstall "$wheel"
    $PY - <<'EOF'
import fwlora, peft, scipy, torch, transformers
print("fwlora", fwlora.__version__, fwlora.__file__)
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name())
print("transformers", transformers.__version__, "peft", peft.__version__, "scipy", scipy.__version__)
assert torch.cuda.is_available(), "no CUDA device"
# The benchmarks import the installed wheel: it must hold this tree's Python code.
from pathlib import Path
installed, tree = Path(fwlora.__file__).parent, Path("python/fwlora")
stale = [str(f) for f in tree.rglob("*.py")
         if not (installed / f.relative_to(tree)).is_file()
         or (installed / f.relative_to(tree)).read_bytes() != f.read_bytes()]
assert not stale, f"the carried wheel is stale (rebuild it): {stale}"
EOF
} 2>&1 | tee "$LOG"

status=0
# 7 minutes at most for the benchmarks, whatever happens: the summary is written at the end.
timeout 420 $PY benches/run_all.py --full --bf16 2>&1 | tee -a "$LOG" || status=$?

if [[ -n "${OUT:-}" ]]; then
    tar czf "$OUT/results_gpu.tgz" -C benches/results \
        $(cd benches/results && ls ./*_gpu.* 2>/dev/null) || true
    cp benches/results/summary_gpu.md "$OUT/" 2>/dev/null || true
fi
echo "gpu.sh: run_all exit status $status" | tee -a "$LOG"
exit "$status"
