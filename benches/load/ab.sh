#!/usr/bin/env bash
# Interleaved A/B of switchyard binaries under the comparison's HTTP/1.1 load:
# proxy CPU seconds per 100k requests (from /proc), req/s, p50 and p99.
# Reuses what benches/load/run.sh built and wrote under target/load/ (run it
# once first, e.g. with --quick), and its pinning: proxy on CPU 0, wrk and
# the two upstreams on CPU 1.
#
#   benches/load/ab.sh [--rounds N] [--epoll | --rss | --flips] BINARY_A BINARY_B [...]
#
#   --epoll  also the proxy's epoll_wait calls per request (perf stat, from
#            Debian's linux-perf)
#   --rss    memory instead of the load: RSS idle and with 1,000 and 10,000
#            idle keep-alive connections, read as run.sh reads it
#            (bench.py rss, 5 s after the connections opened)
#   --flips  p99 without, then with, a flip every 100 ms (bench.py flips, as
#            run.sh), and their ratio
set -euo pipefail
cd "$(dirname "$0")/../.."
usage() { sed -n '8p' "$0" | sed 's/^#   /usage: /' >&2; exit 2; }
ROUNDS=3 MODE=load
while (($#)); do
  case $1 in
    --rounds) (($# >= 2)) || usage; ROUNDS=$2; shift 2 ;;
    --epoll) MODE=epoll; shift ;;
    --rss) MODE=rss; shift ;;
    --flips) MODE=flips; shift ;;
    -*) usage ;;
    *) break ;;
  esac
done
(($# >= 2)) || usage
if [ "$MODE" = epoll ] && ! command -v perf >/dev/null; then
  echo "error: --epoll needs perf (apt-get install -y linux-perf)" >&2
  exit 1
fi
. benches/load/reuse.sh
# 10,000 connections need as many descriptors, in the proxy and in bench.py.
[ "$MODE" = rss ] && { ulimit -n 30000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }
URL="http://$PROXY/v2/models/iris/infer"
ADMIN=$(grep -o '127.0.0.1:[0-9]*' "$CFG" | sed -n 2p)
WRK=(taskset -c 1 wrk -t1 -c64 -s benches/load/post.lua)
tmp=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    rm -f "$STATE"
    taskset -c 0 "$bin" serve --config "$CFG" >/dev/null 2>&1 &
    s=$!
    for _ in $(seq 50); do curl -sf -o /dev/null "$URL" -d '{}' && break; sleep 0.1; done
    if [ "$MODE" = rss ]; then
      taskset -c 1 python3 benches/load/bench.py rss --target "$bin" --port "${PROXY#*:}" --pids "$s" \
        --counts 1000,10000 --settle 5 --timeout 120 --out "$tmp/rss.json" 2>&1 | sed "s/^ */round $round  /"
      kill $s; wait $s 2>/dev/null || true
      continue
    fi
    "${WRK[@]}" -d2s "$URL" -- benches/load/body.json >/dev/null
    if [ "$MODE" = flips ]; then
      p99() { grep '^JSON' | python3 -c 'import json,sys; print(json.loads(sys.stdin.read()[5:])["p99_us"])'; }
      calm=$("${WRK[@]}" -d8s --latency "$URL" -- benches/load/body.json | p99)
      taskset -c 1 python3 benches/load/bench.py flips --admin "$ADMIN" --interval-ms 100 --count 80 \
        --out "$tmp/flips.json" >/dev/null 2>&1 &
      flipper=$!
      flipping=$("${WRK[@]}" -d8s --latency "$URL" -- benches/load/body.json | p99)
      wait "$flipper" || echo "warning: the flip loop failed" >&2
      echo "round $round  $bin  p99 ${calm} us, with flips ${flipping} us: x$(python3 -c "print(round($flipping/$calm, 2))")"
      kill $s; wait $s 2>/dev/null || true
      continue
    fi
    c0=$(awk '{print $14+$15}' /proc/$s/stat)
    if [ "$MODE" = epoll ]; then
      perf stat -x, -e syscalls:sys_enter_epoll_wait -p "$s" -o "$tmp/perf.csv" -- sleep 6 &
      perf=$!
    fi
    read -r n rps p50 p99 < <("${WRK[@]}" -d6s --latency "$URL" -- benches/load/body.json | grep '^JSON' |
      python3 -c 'import json,sys; d=json.loads(sys.stdin.read()[5:]); print(d["requests"], round(d["requests"]/d["duration_us"]*1e6), d["p50_us"], d["p99_us"])')
    c1=$(awk '{print $14+$15}' /proc/$s/stat)
    ticks=$(getconf CLK_TCK)
    cpu=$(python3 -c "print(round(($c1-$c0)/$ticks*100000/$n, 2))")
    line="round $round  $bin  $rps req/s  p50 ${p50} us  p99 ${p99} us  proxy CPU ${cpu} s/100k"
    if [ "$MODE" = epoll ]; then
      wait "$perf"
      calls=$(awk -F, '/epoll_wait/ {print $1}' "$tmp/perf.csv")
      # perf counts over its own 6 s, wrk over its 6 s: the same window, near enough.
      line+="  requests per epoll_wait $(python3 -c "print(round($n/max($calls, 1), 1))")"
    fi
    echo "$line"
    kill $s; wait $s 2>/dev/null || true
  done
done
