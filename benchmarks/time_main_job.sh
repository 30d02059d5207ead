#!/usr/bin/env bash
# Times the main job on the embedded dataset, quick profile: cold (empty cache) and warm
# (hider and poisons cached, cells recomputed in a fresh run directory), with peak RSS.
# Usage: bash benchmarks/time_main_job.sh [extra ueb run args]
set -euo pipefail
cd "$(dirname "$0")/.."
ueb=${UEB:-.venv/bin/ueb}
work=$(mktemp -d)
export UEB_CACHE="$work/cache"
for phase in cold warm; do
  /usr/bin/time -v "$ueb" run --poisoner deephiding --countermeasures all --profile quick \
      --run-dir "$work/$phase" -q "$@" > "$work/$phase.out" 2> "$work/$phase.time" || true
  wall=$(grep "Elapsed (wall clock)" "$work/$phase.time" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/$phase.time" | awk '{print $NF}')
  echo "$phase: wall $wall, peak RSS $((rss / 1024)) MiB, results in $work/$phase"
done
