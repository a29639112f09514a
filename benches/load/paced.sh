#!/usr/bin/env bash
# What a parked connection's resume costs: switchyard's CPU per request for
# clients that pause between requests, at one request rate, below the park
# delay (200 connections, 40 ms apart) and above it (300 connections, 60 ms
# apart: every request resumes a parked connection), interleaved.
# Reuses what benches/load/run.sh built and wrote under target/load/ (run it
# once first, e.g. with --quick), and its pinning.
#
#   benches/load/paced.sh [--rounds N] [BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=3
if [ "${1:-}" = --rounds ]; then ROUNDS=$2; shift 2; fi
. benches/load/reuse.sh
BIN=${1:-$B/switchyard}
rm -f "$STATE"
taskset -c 0 "$BIN" serve --config "$CFG" >/dev/null 2>&1 &
s=$!
pids+=("$s")
for _ in $(seq 50); do curl -sf -o /dev/null "http://$PROXY/v2/health/ready" && break; sleep 0.1; done
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  for paced in "200 40" "300 60"; do
    read -r conns interval <<<"$paced"
    taskset -c 1 python3 benches/load/bench.py paced --port "${PROXY##*:}" --pids "$s" \
      --conns "$conns" --interval-ms "$interval"
  done
done
