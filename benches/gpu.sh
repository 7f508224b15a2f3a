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
# It installs the wheel (--no-deps: the device has every dependency) into a scratch
# directory put first on PYTHONPATH (the interpreter's own site-packages stay untouched),
# runs every benchmark with the real roberta-base config, bf16 autocast and synthetic tokens
# (benches/run_all.py --full --bf16), and writes benches/results/*_gpu.json|md and
# summary_gpu.md|json; with $OUT set (the device tool), a tarball of them, the summary and
# the log come back.
# Budget: under 8 minutes on an H200 (about 3 expected: the benches themselves take ~2).
#
#     bash benches/gpu.sh --dry-run     # here, on the CPU, before spending device time
# runs the same script end to end (wheel install, checks, run_all.py --full --bf16, the
# tarball) with BENCH_DEVICE=cpu, BENCH_TINY=1 (a 2-layer hidden-64 model, 4 × 16 tokens)
# and --quick, writing into a scratch directory instead of benches/results (5 minutes on the
# shared 2-core CPU under load; its timeout is 20 minutes instead of 7).
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
QUICK=()
LIMIT=420  # 7 minutes at most for the benchmarks on the device
if [[ "${1:-}" == "--dry-run" ]]; then
    export BENCH_DEVICE=cpu BENCH_TINY=1 BENCH_RESULTS="$SCRATCH/results"
    QUICK=(--quick)
    LIMIT=1200  # a shared 2-core CPU is slower than the H200 even on the tiny model
    OUT=${OUT:-$SCRATCH/out}
elif [[ -n "${1:-}" ]]; then
    echo "gpu.sh: unknown argument '$1'; expected nothing or --dry-run" >&2
    exit 2
fi
export BENCH_SUFFIX=_gpu
RESULTS_DIR=${BENCH_RESULTS:-benches/results}
OUT_DIR=${OUT:-$RESULTS_DIR}
LOG="$OUT_DIR/gpu_log.txt"
mkdir -p "$OUT_DIR" "$RESULTS_DIR"

wheel=$(ls -t dist/fwlora-*-abi3-*.whl 2>/dev/null | head -n 1 || true)
if [[ -z "$wheel" ]]; then
    echo "no dist/fwlora-*-abi3-*.whl: run '.venv/bin/maturin build --release --out dist' here and carry dist" >&2
    exit 2
fi
{
    echo "wheel: $wheel"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    $PY -m pip install --no-deps --no-index --quiet --target "$SCRATCH/site" "$wheel"
    export PYTHONPATH="$SCRATCH/site"
    $PY - <<'EOF'
import os
import fwlora, peft, scipy, torch, transformers
print("fwlora", fwlora.__version__, fwlora.__file__)
assert fwlora.__file__.startswith(os.environ["PYTHONPATH"]), "not the carried wheel"
dry = os.environ.get("BENCH_DEVICE") == "cpu"
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      "dry run on the CPU" if dry else torch.cuda.get_device_name())
print("transformers", transformers.__version__, "peft", peft.__version__, "scipy", scipy.__version__)
assert dry or torch.cuda.is_available(), "no CUDA device"
# The benchmarks import the installed wheel: it must hold this tree's Python code.
from pathlib import Path
installed, tree = Path(fwlora.__file__).parent, Path("python/fwlora")
stale = [str(f) for f in tree.rglob("*.py")
         if not (installed / f.relative_to(tree)).is_file()
         or (installed / f.relative_to(tree)).read_bytes() != f.read_bytes()]
assert not stale, f"the carried wheel is stale (rebuild it): {stale}"
EOF
} 2>&1 | tee "$LOG"
export PYTHONPATH="$SCRATCH/site"  # the block above ran in a pipeline's subshell

status=0
# $LIMIT seconds at most for the benchmarks, whatever happens: the summary is written at the end.
timeout "$LIMIT" $PY benches/run_all.py --full --bf16 "${QUICK[@]}" 2>&1 | tee -a "$LOG" || status=$?

if [[ -n "${OUT:-}" ]]; then
    tar czf "$OUT/results_gpu.tgz" -C "$RESULTS_DIR" \
        $(cd "$RESULTS_DIR" && ls ./*_gpu.* 2>/dev/null) || true
    cp "$RESULTS_DIR/summary_gpu.md" "$OUT/" 2>/dev/null || true
fi
if [[ -n "${BENCH_TINY:-}" ]]; then
    echo "gpu.sh --dry-run: would bring back $(ls "$OUT" | tr '\n' ' ')holding:"
    tar tzf "$OUT/results_gpu.tgz"
fi
echo "gpu.sh: run_all exit status $status" | tee -a "$LOG"
exit "$status"
