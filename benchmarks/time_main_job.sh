#!/usr/bin/env bash
# Times the main job on the embedded dataset, quick profile, every seed of the profile:
#   cold      `ueb run --poisoner deephiding --countermeasures all` with an empty cache;
#   follow-up the same command for another poisoner (default: ar) with that cache, which
#             reuses the clean-row cells the first run finished (same ids).
# Prints wall time, peak RSS and the machine's load before each phase.
# Usage: bash benchmarks/time_main_job.sh [extra ueb run args]   (FOLLOW_UP=lsp to change it)
set -euo pipefail
cd "$(dirname "$0")/.."
ueb=${UEB:-.venv/bin/ueb}
follow=${FOLLOW_UP:-ar}
work=$(mktemp -d)
export UEB_CACHE="$work/cache"
for phase in cold follow-up; do
  poisoner=deephiding
  [ "$phase" = follow-up ] && poisoner=$follow
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  /usr/bin/time -v "$ueb" run --poisoner "$poisoner" --countermeasures all --profile quick \
      --run-dir "$work/$phase" -q "$@" > "$work/$phase.out" 2> "$work/$phase.time" || true
  wall=$(grep "Elapsed (wall clock)" "$work/$phase.time" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/$phase.time" | awk '{print $NF}')
  cells=$(grep -o "[0-9]* cells done, [0-9]* reused, [0-9]* failed" "$work/$phase.out" || echo "?")
  echo "$phase ($poisoner): wall $wall, peak RSS $((rss / 1024)) MiB, $cells, load before $load, results in $work/$phase"
done
