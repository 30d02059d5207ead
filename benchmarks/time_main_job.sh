#!/usr/bin/env bash
# Times the main job on the embedded dataset, quick profile, every seed of the profile:
#   cold      `ueb run --poisoner deephiding --countermeasures all` with an empty cache;
#   follow-up the same command for another poisoner (default: ar) with that cache, which
#             reuses the clean-row cells the first run finished (same ids).
# Prints wall time, peak RSS (the largest single process, and the whole process tree summed,
# sampled every 2 s: worker processes add up) and the machine's load before each phase.
# Usage: bash benchmarks/time_main_job.sh [extra ueb run args]   (FOLLOW_UP=lsp to change it)
set -euo pipefail
cd "$(dirname "$0")/.."
ueb=${UEB:-.venv/bin/ueb}
follow=${FOLLOW_UP:-ar}
work=$(mktemp -d)
export UEB_CACHE="$work/cache"
tree_rss_kib() {  # resident KiB of process $1 and all its descendants
  ps -e -o pid=,ppid=,rss= | awk -v root="$1" '
    { parent[$1] = $2; rss[$1] = $3 }
    END { for (p in rss) { q = p; while (q != "" && q != 0) { if (q == root) { sum += rss[p]; break } q = parent[q] } } print sum + 0 }'
}
for phase in cold follow-up; do
  poisoner=deephiding
  [ "$phase" = follow-up ] && poisoner=$follow
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  /usr/bin/time -v "$ueb" run --poisoner "$poisoner" --countermeasures all --profile quick \
      --run-dir "$work/$phase" -q "$@" > "$work/$phase.out" 2> "$work/$phase.time" &
  job=$!
  peak=0
  while kill -0 "$job" 2>/dev/null; do
    now=$(tree_rss_kib "$job")
    [ "$now" -gt "$peak" ] && peak=$now
    sleep 2
  done
  wait "$job" || true
  wall=$(grep "Elapsed (wall clock)" "$work/$phase.time" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/$phase.time" | awk '{print $NF}')
  cells=$(grep -o "[0-9]* cells done, [0-9]* reused, [0-9]* failed" "$work/$phase.out" || echo "?")
  echo "$phase ($poisoner): wall $wall, peak RSS $((rss / 1024)) MiB one process, $((peak / 1024)) MiB all processes, $cells, load before $load, results in $work/$phase"
done
