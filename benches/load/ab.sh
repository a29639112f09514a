#!/usr/bin/env bash
# Interleaved A/B of switchyard binaries under the comparison's HTTP/1.1 load:
# proxy CPU seconds per 100k requests (from /proc), req/s, p50 and p99.
# Reuses what benches/load/run.sh built and wrote under target/load/ (run it
# once first, e.g. with --quick), and its pinning: proxy on CPU 0, wrk and
# the two upstreams on CPU 1.
#
#   benches/load/ab.sh [--rounds N] BINARY_A BINARY_B [...]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=3
if [ "${1:-}" = --rounds ]; then ROUNDS=$2; shift 2; fi
(($# >= 2)) || { sed -n '6,7p' "$0" | sed 's/^# //'; exit 2; }
. benches/load/reuse.sh
URL="http://$PROXY/v2/models/iris/infer"
WRK=(taskset -c 1 wrk -t1 -c64 -s benches/load/post.lua)
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    rm -f "$STATE"
    taskset -c 0 "$bin" serve --config "$CFG" >/dev/null 2>&1 &
    s=$!
    for _ in $(seq 50); do curl -sf -o /dev/null "$URL" -d '{}' && break; sleep 0.1; done
    "${WRK[@]}" -d2s "$URL" -- benches/load/body.json >/dev/null
    c0=$(awk '{print $14+$15}' /proc/$s/stat)
    read -r n rps p50 p99 < <("${WRK[@]}" -d6s --latency "$URL" -- benches/load/body.json | grep '^JSON' |
      python3 -c 'import json,sys; d=json.loads(sys.stdin.read()[5:]); print(d["requests"], round(d["requests"]/d["duration_us"]*1e6), d["p50_us"], d["p99_us"])')
    c1=$(awk '{print $14+$15}' /proc/$s/stat)
    ticks=$(getconf CLK_TCK)
    cpu=$(python3 -c "print(round(($c1-$c0)/$ticks*100000/$n, 2))")
    echo "round $round  $bin  $rps req/s  p50 ${p50} us  p99 ${p99} us  proxy CPU ${cpu} s/100k"
    kill $s; wait $s 2>/dev/null || true
  done
done
