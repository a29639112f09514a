#!/usr/bin/env bash
# User-space instructions per HTTP/1.1 request of nginx, HAProxy and
# switchyard, counted by valgrind's callgrind: a count, not a time, so the
# same binary under the same load gives the same figure within about 0.1 %
# however busy this shared VM is, where req/s and CPU seconds move by 15-30 %
# from run to run. The kernel's work (for every proxy here about two thirds
# of its CPU: loopback TCP) is not in it, and an instruction is not a fixed
# time, so it ranks what each proxy does in user space, not its speed.
#
#   benches/load/instructions.sh [--requests N] [--admin] [SWITCHYARD_BINARY ...]
#
# Reuses what benches/load/run.sh built and wrote under target/load/ (run it
# once first, e.g. with --quick): its configs, with nginx as one process
# (`master_process off`), and the two upstreams. Each proxy runs under
# callgrind on CPU 0, takes 1,000 POSTs not counted, then N (default 4,000)
# counted, from h2load --h1 on 16 connections on CPU 1. Without a binary it
# measures target/load/bin/switchyard; with several, each of them (an A/B
# with no noise to average out: one run each).
#
# --admin: instead, switchyard's instructions per admin call, on the same
# worker thread as the proxy: a status read (GET /models/iris) and a flip
# (POST /models/iris/flip, its state write and fsync included), 100 of each
# on one keep-alive connection: what the flip-under-load runs add to the
# proxy's work.
set -euo pipefail
cd "$(dirname "$0")/../.."
usage() { sed -n '10p' "$0" | sed 's/^#   /usage: /' >&2; exit 2; }
COUNTED=4000 ADMIN=""
while (($#)); do
  case $1 in
    --requests) (($# >= 2)) || usage; COUNTED=$2; shift 2 ;;
    --admin) ADMIN=1; shift ;;
    -*) usage ;;
    *) break ;;
  esac
done
BINS=("$@")
((${#BINS[@]})) || BINS=(target/load/bin/switchyard)
if ! command -v callgrind_control >/dev/null || ! command -v h2load >/dev/null; then
  echo "== installing valgrind and nghttp2-client (h2load)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update && apt-get install -y valgrind nghttp2-client
fi
. benches/load/reuse.sh
OUT=target/load
NGINX_PORT=$(sed -n 's/^ *listen 127.0.0.1:\([0-9]*\);/\1/p' "$OUT/nginx/nginx.conf" | head -1)
HAPROXY_PORT=$(sed -n 's/^ *bind 127.0.0.1:\([0-9]*\)$/\1/p' "$OUT/haproxy/haproxy.cfg" | head -1)
[ -n "$NGINX_PORT" ] && [ -n "$HAPROXY_PORT" ] || { echo "error: cannot read the proxies' ports under $OUT" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
sed 's/^master_process on;/master_process off;/' "$OUT/nginx/nginx.conf" >"$tmp/nginx.conf"
H2=(taskset -c 1 h2load --h1 -c 16 -m 1 -d benches/load/body.json -H 'content-type: application/json')

# count NAME PORT CMD...: CMD under callgrind; prints its instructions per request.
count() {
  local name=$1 port=$2
  shift 2
  local url="http://127.0.0.1:$port/v2/models/iris/infer"
  rm -f "$STATE"
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.%p" "$@" \
    >"$tmp/stdout.log" 2>"$tmp/valgrind.log" &
  local s=$!
  pids+=("$s")
  local up=""
  for _ in $(seq 300); do curl -sf -o /dev/null "$url" -d '{}' && { up=1; break; }; sleep 0.2; done
  [ -n "$up" ] || { echo "error: $name did not answer on $url; see $tmp/valgrind.log" >&2; exit 1; }
  "${H2[@]}" -n 1000 "$url" >/dev/null
  callgrind_control -z "$s" >/dev/null 2>&1
  local done_
  done_=$("${H2[@]}" -n "$COUNTED" "$url" | sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p')
  callgrind_control -d "$s" >/dev/null 2>&1
  kill "$s"
  wait "$s" 2>/dev/null || true
  # Part 1 is the dump asked for above; what the exit dumps is not counted.
  local ir
  ir=$(grep -h -m1 -E '^(summary|totals):' "$tmp/cg.$s.1" | awk '{print $2}')
  rm -f "$tmp"/cg.*
  [ "$done_" = "$COUNTED" ] || echo "warning: $name: $done_ of $COUNTED requests succeeded" >&2
  printf '| %s | %s |\n' "$name" "$(python3 -c "print(f'{round($ir / $COUNTED):,}')")"
}

# count_admin BIN: switchyard's instructions per admin call.
count_admin() {
  local bin=$1 admin
  admin=$(sed -n '/^\[admin\]/,/^\[/s/^listen = "\(127.0.0.1:[0-9]*\)"/\1/p' "$CFG")
  rm -f "$STATE"
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.%p" "$bin" serve --config "$CFG" \
    >"$tmp/stdout.log" 2>"$tmp/valgrind.log" &
  local s=$!
  pids+=("$s")
  local up=""
  for _ in $(seq 300); do curl -sf -o /dev/null "http://$admin/models/iris" && { up=1; break; }; sleep 0.2; done
  [ -n "$up" ] || { echo "error: no admin answer on $admin; see $tmp/valgrind.log" >&2; exit 1; }
  taskset -c 1 h2load --h1 -c 1 -m 1 -n 20 "http://$admin/models/iris" >/dev/null
  local part=1 what method path ir
  for what in "status read:GET:/models/iris" "flip:POST:/models/iris/flip"; do
    IFS=: read -r what method path <<<"$what"
    local body=()
    # h2load posts a file's bytes; the flip ignores its body.
    printf '{}' >"$tmp/body.json"
    [ "$method" = POST ] && body=(-d "$tmp/body.json")
    callgrind_control -z "$s" >/dev/null 2>&1
    taskset -c 1 h2load --h1 -c 1 -m 1 -n 100 "${body[@]}" "http://$admin$path" \
      | grep -q '100 succeeded' || echo "warning: $what: not every call succeeded" >&2
    callgrind_control -d "$s" >/dev/null 2>&1
    ir=$(grep -h -m1 -E '^(summary|totals):' "$tmp/cg.$s.$part" | awk '{print $2}')
    printf '| %s (%s) | %s |\n' "$what" "$bin" "$(python3 -c "print(f'{round($ir / 100):,}')")"
    part=$((part + 1))
  done
  kill "$s"
  wait "$s" 2>/dev/null || true
  rm -f "$tmp"/cg.*
}

if [ -n "$ADMIN" ]; then
  echo "| admin call | user-space instructions per call |"
  echo "| --- | ---: |"
  for bin in "${BINS[@]}"; do
    count_admin "$bin"
  done
  exit 0
fi

echo "| proxy | user-space instructions per request |"
echo "| --- | ---: |"
count nginx "$NGINX_PORT" nginx -p "$OUT/nginx/" -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log"
count HAProxy "$HAPROXY_PORT" haproxy -db -f "$OUT/haproxy/haproxy.cfg"
for bin in "${BINS[@]}"; do
  count "switchyard ($bin)" "${PROXY#*:}" "$bin" serve --config "$CFG"
done
