#!/bin/sh
# bench/chaos.sh: the chaos test of issue 10 (tests/e2e/test_chaos.py), run N times in a row, each run's figures
# kept. See bench/RESULTS.md, "Chaos test", for what it does and what passes.
#   bench/chaos.sh [short|soak] [N]     short: about 70 s a run (the `make test` version); soak: 10 minutes
#                                       N runs (default 1); stops at the first failed run
# Output: bench/runs/chaos-<UTC>/run-<i>.txt (pytest -s: the figures, and on failure the criteria that failed
# and the tails of the logs), and a summary line per run on stdout.
set -e
cd "$(dirname "$0")/.."
make -s test-deps
kind=${1:-short}
runs=${2:-1}
case "$kind" in
    short) mark="not long"; name=test_chaos_short ;;
    soak) mark=long; name=test_chaos_soak ;;
    *) echo "usage: bench/chaos.sh [short|soak] [N]" >&2; exit 2 ;;
esac
out="bench/runs/chaos-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
{
    echo "command: bench/chaos.sh $kind $runs"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- nonstop tests || echo ' (modified)')"
    echo "machine: $(nproc) cores, $(uname -sr), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/about.txt"
cat "$out/about.txt"
passed=0
i=1
while [ "$i" -le "$runs" ]; do
    if .venv/bin/python -m pytest -q -s -p no:cacheprovider -m "$mark" -k "$name" tests/e2e/test_chaos.py \
        > "$out/run-$i.txt" 2>&1
    then status=passed; passed=$((passed + 1))
    else status=FAILED
    fi
    gaps=$(sed -n '/^worst gap between video frames/,/excluded/p' "$out/run-$i.txt" | grep -v '^worst\|excluded' |
           sed 's/ (.*//; s/^ *//' | paste -sd ';' -)
    rss=$(grep '^RSS master' "$out/run-$i.txt" | sed 's/RSS master + workers: //')
    churn=$(grep '^churn:' "$out/run-$i.txt" | sed 's/; .*//')
    echo "run $i: $status; worst gap by phase: $gaps; $churn; RSS $rss" | tee -a "$out/about.txt"
    if [ "$status" = FAILED ]; then
        sed -n '/^FAILED criteria/,/^logs in/p' "$out/run-$i.txt"
        break
    fi
    i=$((i + 1))
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); $passed of $runs runs passed in a row" | tee -a "$out/about.txt"
echo "figures: $out/"
[ "$passed" -eq "$runs" ]
