#!/bin/bash
# Collects what the study's running parts (docs/study/run_study.sh round2) have finished into
# docs/study/data/round2/ and rebuilds the page from docs/study/data/ alone:
#   docs/study/aggregate.sh        # from the repository root; safe while the runs continue
# Round 1's data (data/metrics.json: the λ sweep, 100 runs) is committed as it finished.
set -eu
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python}
nice -n 10 "$PY" docs/study/collect.py
"$PY" docs/study/build_page.py docs/study
