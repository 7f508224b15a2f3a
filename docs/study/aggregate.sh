#!/bin/bash
# Collects what the study (docs/study/run_study.sh) has finished so far and rebuilds the page:
#   docs/study/aggregate.sh        # from the repository root; safe while the runs continue
# A part still running lives in runs/.NAME.fwlora-* (moved to runs/NAME when it finishes).
set -eu
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python}
folder() {  # the folder of part $1 that holds finished runs, if any
  for d in "runs/$1" runs/."$1".fwlora-*; do
    case "$d" in *fwlora-old-*) continue ;; esac
    if compgen -G "$d/runs/*/metrics.json" > /dev/null; then echo "$d"; return; fi
  done
}
parts=()
for p in study-a study-b; do d=$(folder "$p"); [ -n "$d" ] && parts+=("$d"); done
sweep=""  # none finished yet: the page says so and shows the design
if [ ${#parts[@]} -gt 1 ]; then
  "$PY" -m fwlora.cli merge "${parts[@]}" -o runs/study --overwrite > runs/merge.log
  sweep=runs/study
elif [ ${#parts[@]} -eq 1 ]; then  # merge needs two: the page reads that part's runs
  sweep=${parts[0]}
fi
premise=""  # the premise test's parts that hold finished runs, colon-separated
for p in premise premise-b premise-c; do d=$(folder "$p"); [ -n "$d" ] && premise="$premise${premise:+:}$d"; done
"$PY" docs/study/build_page.py "$sweep" "$premise" docs/study
