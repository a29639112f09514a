#!/usr/bin/env bash
# The fleet measure: a real etcd and N switchyard instances sharing one
# prefix; 100 flips on one instance, and for each the time from the flip's
# return to the last instance serving the new pool (p50, p99, max).
#
#   benches/fleet/run.sh [--mode processes|tasks] [--flips N] [N ...]
#
#   N ...        fleet sizes, one run each (default: 5 50)
#   --mode       processes (default: the release binary, one worker thread
#                each) or tasks (every instance in the measuring process)
#   --flips N    flips per run (default 100)
#
# Needs Debian's etcd-server (/usr/bin/etcd; installed with apt-get when
# missing and run as root). Builds the release binary and the measuring
# example (benches/fleet/flip.rs) first. Every process a run starts is
# stopped when it ends, on failure and on Ctrl-C too.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() { sed -n '6,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

MODE=processes
FLIPS=100
SIZES=()
while (($#)); do
  case "$1" in
    --mode) MODE=${2:-}; shift 2 || { usage >&2; exit 2; } ;;
    --flips) FLIPS=${2:-}; shift 2 || { usage >&2; exit 2; } ;;
    -h | --help) usage; exit 0 ;;
    [0-9]*) SIZES+=("$1"); shift ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
((${#SIZES[@]})) || SIZES=(5 50)

if [[ ! -x /usr/bin/etcd ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  else
    echo "error: /usr/bin/etcd is missing: apt-get install etcd-server" >&2
    exit 1
  fi
fi

cargo build --release --locked --bin switchyard --example fleet-bench
bench=target/release/examples/fleet-bench

# The bench kills what it started when it returns; a Ctrl-C or a kill of
# this script takes its process group down with it.
trap 'trap - INT TERM; kill -- -$$ 2>/dev/null || true' INT TERM

echo "fleet measure on $(nproc) CPU(s), $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
for n in "${SIZES[@]}"; do
  "$bench" --instances "$n" --flips "$FLIPS" --mode "$MODE"
done
