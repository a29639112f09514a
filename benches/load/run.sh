#!/usr/bin/env bash
# The load comparison of issue 5: switchyard, nginx and HAProxy, each with one
# worker, in front of the same fast upstream (benches/load/upstream.rs), on
# loopback, against the upstream alone (the floor).
#
#   benches/load/run.sh [--repeat N] [--duration S] [--quick]
#
#   --repeat N    runs per target and protocol, interleaved (default 3)
#   --duration S  seconds per run (default 10)
#   --quick       smoke test: 1 repeat of 3 s, fewer streams (later flags still win)
#
# Measures, per target: HTTP/1.1 keep-alive POSTs with wrk, HTTP/2 cleartext
# POSTs with h2load, 64 connections each; the proxy's CPU time per request;
# its memory idle and with 1,000 and 10,000 open keep-alive connections;
# server-sent events through it; for switchyard, errors and p99 while the
# model is flipped every 100 ms under the same load, against a control run
# with the same admin calls that switch nothing; and the same load
# through a second switchyard whose model splits new requests 50/50 between
# blue and green (target switchyard-split), interleaved with the others.
#
# Pinning: the proxies on CPU 0; load generators, upstreams and the python
# helpers on CPU 1. Needs 2 CPUs, root for apt-get when a tool is missing,
# and about 9 minutes with the defaults (14 with --repeat 5), plus the build.
#
# Writes every generated config, log and result under target/load/, prints the
# markdown report and saves it as target/load/report.md. Every process it
# starts is stopped on exit, on failure and on Ctrl-C too.
set -euo pipefail

usage() { sed -n '6,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

REPEAT=3
DURATION=10
QUICK=0
repeat_arg=""
duration_arg=""
while (($#)); do
  case "$1" in
    --repeat) repeat_arg=${2:-}; shift 2 || { usage >&2; exit 2; } ;;
    --duration) duration_arg=${2:-}; shift 2 || { usage >&2; exit 2; } ;;
    --quick) QUICK=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

CONNS=64
SSE_STREAMS=10
SSE_EVENTS=20
SSE_INTERVAL_MS=20
RSS_COUNTS=1000,10000
RSS_SETTLE=5
FLIP_INTERVAL_MS=100
WARMUP=2
PROXY_CPU=0
LOAD_CPU=1
MAXCONN=12000
UPSTREAM_KEEPALIVE=128
if ((QUICK)); then
  REPEAT=1
  DURATION=3
  SSE_STREAMS=3
  WARMUP=1
fi
REPEAT=${repeat_arg:-$REPEAT}
DURATION=${duration_arg:-$DURATION}
[[ $REPEAT =~ ^[0-9]+$ ]] && ((REPEAT >= 1 && REPEAT <= 20)) ||
  { echo "error: --repeat must be 1..20, got '$REPEAT'" >&2; exit 2; }
[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 300)) ||
  { echo "error: --duration must be 1..300 seconds, got '$DURATION'" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
HERE=$ROOT/benches/load
OUT=$ROOT/target/load
PY=(python3 "$HERE/bench.py")
PIN_PROXY=(taskset -c "$PROXY_CPU")
PIN_LOAD=(taskset -c "$LOAD_CPU")
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# === tools ===

command -v python3 >/dev/null || die "python3 is needed (apt-get install -y python3)"
command -v taskset >/dev/null || die "taskset is needed (util-linux)"
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if ((${#missing[@]})); then
  log "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y "${missing[@]}"
fi
(($(nproc) >= 2)) || die "needs 2 CPUs (proxies on CPU $PROXY_CPU, load on CPU $LOAD_CPU); nproc is $(nproc)"

# 10,000 connections need that many descriptors in the proxy and in the
# client. Raising the hard limit needs CAP_SYS_RESOURCE; try, then take it.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
((NOFILE >= 10500)) || die "ulimit -n is $NOFILE and cannot be raised; 10,000 connections need about 10,500"

# === processes, and their cleanup ===
# Runs before anything is started, so a failure anywhere below still cleans up.

PIDS=()          # every long-running process this script started
CURRENT=""       # the foreground step running now, if any
NGINX_WORKERS="" # nginx's worker PIDs, once started

# True when PID is alive, not a zombie, and a child of this script: a PID
# reused by someone else is never signalled.
ours_alive() {
  local pid=$1 stat ppid state
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  state=${stat%% *}
  ppid=$(cut -d' ' -f2 <<<"$stat")
  [[ $state != Z && $ppid == "$$" ]]
}

# nginx's workers are the master's children, and orphans if it was killed:
# known by PID and by the title nginx gives them.
nginx_worker_alive() {
  [[ $(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") == "nginx: worker process"* ]]
}

cleanup() {
  local rc=$? pid i alive
  trap - EXIT INT TERM
  local all=("${PIDS[@]}")
  [[ -n $CURRENT ]] && all+=("$CURRENT")
  # nginx: only the master; it stops its workers (a worker sent SIGTERM
  # itself would be replaced by the master).
  for pid in "${all[@]}"; do
    if ours_alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for ((i = 0; i < 50; i++)); do
    alive=0
    for pid in "${all[@]}"; do ours_alive "$pid" && alive=1; done
    for pid in $NGINX_WORKERS; do nginx_worker_alive "$pid" && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${all[@]}"; do
    if ours_alive "$pid"; then
      log "warning: process $pid did not stop on SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in $NGINX_WORKERS; do
    if nginx_worker_alive "$pid"; then
      log "warning: nginx worker $pid outlived its master; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  ((rc == 0)) || log "failed (exit $rc); logs and configs are in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOG CMD...: runs CMD in the background, remembers it as PID_NAME.
start() {
  local name=$1 logfile=$2
  shift 2
  "$@" >"$logfile" 2>&1 &
  PIDS+=("$!")
  printf -v "PID_$name" %s "$!"
}

# step CMD...: runs CMD and waits for it in a way a signal interrupts at
# once (bash runs traps only between foreground commands).
step() {
  local rc=0
  "$@" &
  CURRENT=$!
  wait "$CURRENT" || rc=$?
  CURRENT=""
  return "$rc"
}

# forget PID: drops a process that has ended from the cleanup list.
forget() {
  local keep=() pid
  for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}

# === build ===

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
log "== building switchyard and the bench upstream (release)"
cargo build --release --locked --bin switchyard --example bench-upstream
rm -rf "$OUT"
mkdir -p "$OUT"/{bin,logs,runs,nginx/tmp,haproxy,switchyard}
# Copies: a rebuild by someone else during the run cannot swap the binaries.
# The upstream's copy has its own name, so a `pkill bench-upstream` in some
# other experiment on this machine cannot stop it in the middle of a run.
cp "$TARGET_DIR/release/switchyard" "$OUT/bin/switchyard"
cp "$TARGET_DIR/release/examples/bench-upstream" "$OUT/bin/load-upstream"
BUILD="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty=$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | awk '{print $2}' | xargs)
[[ -n $dirty ]] && BUILD+=" plus uncommitted changes in: $dirty"
BUILD+="; binary sha256 $(sha256sum "$OUT/bin/switchyard" | cut -c1-12)"

read -r P_BLUE P_GREEN P_NGINX P_NGINX_H2 P_HAPROXY P_HAPROXY_H2 P_SWITCHYARD P_ADMIN \
  P_SPLIT P_SPLIT_ADMIN < <("${PY[@]}" free-ports 10) || true
[[ -n ${P_SPLIT_ADMIN:-} ]] || die "cannot find 10 free ports on 127.0.0.1"

"${PY[@]}" meta --dir "$OUT" \
  "date=$(date -u '+%Y-%m-%d %H:%M:%S')" "command=benches/load/run.sh${*:+ $*}" \
  "repeat=$REPEAT" "duration=$DURATION" "conns=$CONNS" "nofile=$NOFILE" "switchyard=$BUILD" \
  "os=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")" \
  "loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)" "flip_interval_ms=$FLIP_INTERVAL_MS"

# === upstreams ===

log "== upstreams: blue on $P_BLUE, green on $P_GREEN (CPU $LOAD_CPU)"
for pool in blue green; do
  port_var=P_${pool^^}
  start "$pool" "$OUT/logs/upstream-$pool.log" \
    "${PIN_LOAD[@]}" "$OUT/bin/load-upstream" --name "$pool" --listen "127.0.0.1:${!port_var}"
  "${PY[@]}" wait-http "http://127.0.0.1:${!port_var}/v2/health/ready" --timeout 10
done

# === nginx ===

# keepalive_requests: nginx closes a connection after 1000 requests by default
# (client side and upstream side); hyper and HAProxy have no such limit, so
# it is lifted here to compare forwarding, not reconnecting.
cat >"$OUT/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;

events {
    worker_connections $MAXCONN;
}

http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $OUT/nginx/tmp/client_body;
    proxy_temp_path $OUT/nginx/tmp/proxy;
    fastcgi_temp_path $OUT/nginx/tmp/fastcgi;
    uwsgi_temp_path $OUT/nginx/tmp/uwsgi;
    scgi_temp_path $OUT/nginx/tmp/scgi;

    upstream blue {
        server 127.0.0.1:$P_BLUE;
        keepalive $UPSTREAM_KEEPALIVE;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:$P_NGINX;
        listen 127.0.0.1:$P_NGINX_H2 http2;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        # What switchyard sends upstream: the client's Host, X-Forwarded-*, a request id.
        proxy_set_header Host \$http_host;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto \$scheme;
        proxy_set_header X-Forwarded-Host \$http_host;
        proxy_set_header X-Request-Id \$request_id;

        location / {
            proxy_pass http://blue;
        }
        location /sse {
            proxy_pass http://blue;
            proxy_buffering off;
        }
    }
}
EOF
nginx -t -q -p "$OUT/nginx/" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" ||
  die "nginx rejects $OUT/nginx/nginx.conf"

# === HAProxy ===

# HAProxy wants two descriptors per connection (client and server side); when
# the hard limit cannot give 2 x maxconn, "no strict-limits" lets it start
# with what there is (the 10,000 idle connections need one each).
strict=""
((NOFILE >= 2 * MAXCONN + 100)) || strict="    no strict-limits"
cat >"$OUT/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAXCONN
$strict
    # no "log" line: HAProxy logs nothing

defaults
    mode http
    maxconn $MAXCONN
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 30s
    timeout http-keep-alive 60s

frontend proxy
    bind 127.0.0.1:$P_HAPROXY
    bind 127.0.0.1:$P_HAPROXY_H2 proto h2
    # What switchyard sends upstream: X-Forwarded-*, a request id.
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Request-Id %[uuid] unless { req.hdr(x-request-id) -m found }
    use_backend blue_stream if { path_beg /sse }
    default_backend blue

backend blue
    server blue 127.0.0.1:$P_BLUE

# Streams: HAProxy's counterpart of nginx's "proxy_buffering off". Without it
# HAProxy sends with MSG_MORE while it expects more of the body, and the
# kernel holds small event chunks for up to 200 ms.
backend blue_stream
    option http-no-delay
    server blue 127.0.0.1:$P_BLUE
EOF
haproxy -c -q -f "$OUT/haproxy/haproxy.cfg" || die "haproxy rejects $OUT/haproxy/haproxy.cfg"

# === switchyard ===

cat >"$OUT/switchyard/switchyard.toml" <<EOF
[proxy]
listen = "127.0.0.1:$P_SWITCHYARD"
worker_threads = 1
drain_timeout = "1s"

[admin]
listen = "127.0.0.1:$P_ADMIN"

[state]
path = "$OUT/switchyard/state.json"

[[models]]
name = "iris"
path_prefix = "/"
active = "blue"
blue.endpoints  = ["http://127.0.0.1:$P_BLUE"]
green.endpoints = ["http://127.0.0.1:$P_GREEN"]
EOF
"$OUT/bin/switchyard" check --config "$OUT/switchyard/switchyard.toml" >/dev/null ||
  die "switchyard rejects $OUT/switchyard/switchyard.toml"

# The same, with its own listeners and state: its split is set once it runs.
mkdir -p "$OUT/switchyard-split"
sed -e "s|127.0.0.1:$P_SWITCHYARD|127.0.0.1:$P_SPLIT|" -e "s|127.0.0.1:$P_ADMIN|127.0.0.1:$P_SPLIT_ADMIN|" \
  -e "s|$OUT/switchyard/state.json|$OUT/switchyard-split/state.json|" \
  "$OUT/switchyard/switchyard.toml" >"$OUT/switchyard-split/switchyard.toml"
"$OUT/bin/switchyard" check --config "$OUT/switchyard-split/switchyard.toml" >/dev/null ||
  die "switchyard rejects $OUT/switchyard-split/switchyard.toml"

# === start the proxies, pinned to CPU 0 ===

log "== proxies on CPU $PROXY_CPU: nginx $P_NGINX (h2c $P_NGINX_H2), haproxy $P_HAPROXY (h2c $P_HAPROXY_H2), switchyard $P_SWITCHYARD (admin $P_ADMIN), switchyard with a split $P_SPLIT (admin $P_SPLIT_ADMIN)"
start nginx "$OUT/nginx/stderr.log" \
  "${PIN_PROXY[@]}" nginx -p "$OUT/nginx/" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log"
start haproxy "$OUT/haproxy/haproxy.log" "${PIN_PROXY[@]}" haproxy -db -f "$OUT/haproxy/haproxy.cfg"
RUST_LOG=info start switchyard "$OUT/switchyard/switchyard.log" \
  "${PIN_PROXY[@]}" "$OUT/bin/switchyard" serve --config "$OUT/switchyard/switchyard.toml"
RUST_LOG=info start switchyard_split "$OUT/switchyard-split/switchyard.log" \
  "${PIN_PROXY[@]}" "$OUT/bin/switchyard" serve --config "$OUT/switchyard-split/switchyard.toml"

"${PY[@]}" wait-http "http://127.0.0.1:$P_NGINX/v2/health/ready" --timeout 10
"${PY[@]}" wait-http "http://127.0.0.1:$P_HAPROXY/v2/health/ready" --timeout 10
# Ready once the first probe round has found the active pool healthy.
"${PY[@]}" wait-http "http://127.0.0.1:$P_ADMIN/readyz" --timeout 20
"${PY[@]}" wait-http "http://127.0.0.1:$P_SPLIT_ADMIN/readyz" --timeout 20
# Half of the new requests to green, the other upstream.
"${PY[@]}" post "http://127.0.0.1:$P_SPLIT_ADMIN/models/iris/weight?green=50"

NGINX_WORKERS=""
for ((i = 0; i < 50; i++)); do
  NGINX_WORKERS=$(ps --ppid "$PID_nginx" -o pid= | xargs)
  [[ -n $NGINX_WORKERS ]] && break
  sleep 0.1
done
[[ -n $NGINX_WORKERS ]] || die "nginx started no worker; see $OUT/nginx/error.log"

declare -A H1_PORT=([direct]=$P_BLUE [nginx]=$P_NGINX [haproxy]=$P_HAPROXY [switchyard]=$P_SWITCHYARD [switchyard-split]=$P_SPLIT)
declare -A H2_PORT=([direct]=$P_BLUE [nginx]=$P_NGINX_H2 [haproxy]=$P_HAPROXY_H2 [switchyard]=$P_SWITCHYARD [switchyard-split]=$P_SPLIT)
# Processes whose CPU time is the proxy's (nginx: the worker doing the work)...
declare -A CPU_PIDS=([direct]="" [nginx]="$NGINX_WORKERS" [haproxy]="$PID_haproxy" [switchyard]="$PID_switchyard" [switchyard-split]="$PID_switchyard_split")
# ...and whose memory is (nginx: master and worker).
declare -A MEM_PIDS=([direct]="$PID_blue" [nginx]="$PID_nginx $NGINX_WORKERS" [haproxy]="$PID_haproxy" [switchyard]="$PID_switchyard")
TARGETS=(direct nginx haproxy switchyard)
# The load runs also go through switchyard with a 50 % split; memory and
# streams are measured on the targets above only.
LOAD_TARGETS=("${TARGETS[@]}" switchyard-split)
PROXIES=(nginx haproxy switchyard)
UPSTREAM_PIDS="$PID_blue $PID_green"
BODY=$HERE/body.json
INFER=/v2/models/iris/infer

pinning=""
for name in nginx haproxy switchyard switchyard_split blue green; do
  pid_var=PID_$name
  pinning+="$name $(taskset -cp "${!pid_var}" | sed 's/.*: //'), "
done
pinning+="nginx worker $(taskset -cp "${NGINX_WORKERS%% *}" | sed 's/.*: //')"
"${PY[@]}" meta --dir "$OUT" \
  "pinning=CPU $PROXY_CPU: the proxies (all their processes and threads); CPU $LOAD_CPU: wrk, h2load, both upstreams (one thread each) and the python clients. Affinity as read back with taskset -cp: $pinning" \
  "h1_tool=wrk -t1 -c$CONNS -d${DURATION}s --latency -s post.lua (POST, $(wc -c <"$BODY")-byte JSON body)" \
  "h2_tool=h2load -c $CONNS -m 1 -t 1 -D $DURATION -d body.json (POST, h2c prior knowledge); p50/p99 from its --log-file" \
  "settings=$CONNS connections. Upstream: a fixed 117-byte JSON answer, one thread. nginx: worker_processes 1, upstream keepalive $UPSTREAM_KEEPALIVE, keepalive_requests 1000000 (client and upstream; the default 1000 would reconnect), proxy_http_version 1.1, Connection \"\", proxy_buffering off on /sse only, access_log off, worker_connections $MAXCONN, worker_rlimit_nofile $NOFILE. HAProxy: mode http, nbthread 1, http-reuse always, maxconn $MAXCONN${strict:+ with no strict-limits (fd hard limit $NOFILE < 2 x maxconn)}, option http-no-delay on /sse only, no logging. switchyard: worker_threads = 1, one model at path_prefix / (blue = upstream A, green = upstream B), default health checks (both pools probed every 2 s, 2 warm connections each), info logging (one line per switch). nginx and HAProxy add X-Forwarded-For/-Proto/-Host and X-Request-Id as switchyard does. The upstream shares CPU $LOAD_CPU with the load generator, so 'direct' is the floor of this setup, not of the hardware."

log "== checking every target answers"
for t in "${LOAD_TARGETS[@]}"; do
  "${PY[@]}" check-infer "http://127.0.0.1:${H1_PORT[$t]}$INFER" "$BODY"
  h2check=$(h2load -n 4 -c 1 -m 1 -d "$BODY" -H 'content-type: application/json' \
    "http://127.0.0.1:${H2_PORT[$t]}$INFER" 2>&1) || true
  grep -q "4 succeeded" <<<"$h2check" || die "h2c to $t (port ${H2_PORT[$t]}) failed: $(grep -E 'requests:|status codes:' <<<"$h2check" | xargs)"
done

# === memory: fresh proxies, idle and with open keep-alive connections ===

log "== memory with $RSS_COUNTS open keep-alive connections"
# direct: the upstream alone, the same accept loop as switchyard's without the proxying.
# Each level is read RSS_SETTLE seconds after its connections are open, for
# every target: switchyard's allocator (jemalloc, src/main.rs) gives pages
# freed when connections go idle back to the kernel about a second later.
for p in "${TARGETS[@]}"; do
  step "${PIN_LOAD[@]}" "${PY[@]}" rss --target "$p" --port "${H1_PORT[$p]}" --pids "${MEM_PIDS[$p]}" \
    --counts "$RSS_COUNTS" --settle "$RSS_SETTLE" --out "$OUT/rss-$p.json"
  sleep 1
done

# === streaming ===

log "== streaming: $SSE_STREAMS x /sse?events=$SSE_EVENTS&interval_ms=$SSE_INTERVAL_MS per target"
sse_targets=()
for t in "${TARGETS[@]}"; do sse_targets+=(--target "$t=${H1_PORT[$t]}"); done
step "${PIN_LOAD[@]}" "${PY[@]}" sse "${sse_targets[@]}" --streams "$SSE_STREAMS" \
  --events "$SSE_EVENTS" --interval-ms "$SSE_INTERVAL_MS" --out "$OUT/sse.json"

# === load ===

RESULTS=$OUT/results.jsonl
LIMIT=$((DURATION + 30))
# Seconds all runs together may spend waiting for other processes on this
# machine to go quiet before they start (bench.py measure --quiet-*).
QUIET_BUDGET=$OUT/quiet-budget
echo 150 >"$QUIET_BUDGET"
QUIET=(--quiet-budget-file "$QUIET_BUDGET" --quiet-max-wait 20 --quiet-threshold 0.10)

# check_alive: stops the comparison when a server it measures has gone (a
# crash, or someone else's kill): every run after it would measure nothing.
check_alive() {
  local name pid_var
  for name in blue green nginx haproxy switchyard switchyard_split; do
    pid_var=PID_$name
    ours_alive "${!pid_var}" || die "$name (PID ${!pid_var}) is no longer running; see its log in $OUT"
  done
  for pid in $NGINX_WORKERS; do
    nginx_worker_alive "$pid" || die "nginx's worker $pid is gone (crashed and replaced?); see $OUT/nginx/error.log"
  done
}

# run_h1 TARGET REP [MODE]: one wrk run.
run_h1() {
  local t=$1 rep=$2 mode=${3:-h1}
  check_alive
  step "${PIN_LOAD[@]}" "${PY[@]}" measure --out "$RESULTS" --raw "$OUT/runs/$mode-$t-$rep.txt" \
    --target "$t" --mode "$mode" --rep "$rep" --proxy-pids "${CPU_PIDS[$t]}" \
    --upstream-pids "$UPSTREAM_PIDS" --ours-root $$ --timeout "$LIMIT" "${QUIET[@]}" -- \
    "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$HERE/post.lua" \
    "http://127.0.0.1:${H1_PORT[$t]}$INFER" -- "$BODY" ||
    log "warning: measuring $mode $t (rep $rep) failed; see $OUT/runs/$mode-$t-$rep.txt"
  sleep 1
}

# run_h2 TARGET REP: one h2load run.
run_h2() {
  local t=$1 rep=$2 h2log=$OUT/runs/h2-$t-$rep.log
  check_alive
  step "${PIN_LOAD[@]}" "${PY[@]}" measure --out "$RESULTS" --raw "$OUT/runs/h2-$t-$rep.txt" \
    --target "$t" --mode h2 --rep "$rep" --proxy-pids "${CPU_PIDS[$t]}" \
    --upstream-pids "$UPSTREAM_PIDS" --ours-root $$ --timeout "$LIMIT" "${QUIET[@]}" --h2-log "$h2log" -- \
    "${PIN_LOAD[@]}" h2load -c "$CONNS" -m 1 -t 1 -D "$DURATION" -d "$BODY" \
    -H 'content-type: application/json' --log-file "$h2log" "http://127.0.0.1:${H2_PORT[$t]}$INFER" ||
    log "warning: measuring h2 $t (rep $rep) failed; see $OUT/runs/h2-$t-$rep.txt"
  sleep 1
}

# run_flip REP [--noop]: the switchyard wrk run while a loop flips every
# 100 ms; with --noop, the control: the same loop, GET /models/iris instead.
run_flip() {
  local rep=$1 noop=${2:-} flipper mode=h1-flip name=flips
  [ -n "$noop" ] && mode=h1-calls name=calls
  "${PIN_LOAD[@]}" "${PY[@]}" flips --admin "127.0.0.1:$P_ADMIN" --interval-ms "$FLIP_INTERVAL_MS" \
    --count $((DURATION * 1000 / FLIP_INTERVAL_MS)) --out "$OUT/$name-$rep.json" $noop \
    >"$OUT/logs/$name-$rep.log" 2>&1 &
  flipper=$!
  PIDS+=("$flipper")
  run_h1 switchyard "$rep" "$mode"
  wait "$flipper" || log "warning: the $name loop failed; see $OUT/logs/$name-$rep.log"
  forget "$flipper"
}

log "== warm-up: ${WARMUP} s per target and protocol (not recorded)"
for t in "${LOAD_TARGETS[@]}"; do
  timeout $((WARMUP + 20)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$HERE/post.lua" \
    "http://127.0.0.1:${H1_PORT[$t]}$INFER" -- "$BODY" >>"$OUT/logs/warmup.log" 2>&1 || true
  timeout $((WARMUP + 20)) "${PIN_LOAD[@]}" h2load -c "$CONNS" -m 1 -t 1 -D "$WARMUP" -d "$BODY" \
    -H 'content-type: application/json' "http://127.0.0.1:${H2_PORT[$t]}$INFER" >>"$OUT/logs/warmup.log" 2>&1 || true
done

log "== load: $REPEAT x ${DURATION} s per run, interleaved"
for ((rep = 1; rep <= REPEAT; rep++)); do
  for t in "${LOAD_TARGETS[@]}"; do run_h1 "$t" "$rep"; done
  run_flip "$rep"
  run_flip "$rep" --noop
  for t in "${LOAD_TARGETS[@]}"; do run_h2 "$t" "$rep"; done
done

# === after the load ===

# As for the levels above: switchyard's allocator gives back what the load
# freed about a second after it ends.
sleep "$RSS_SETTLE"
rss_now=()
for p in "${TARGETS[@]}"; do rss_now+=(--pids "$p=${MEM_PIDS[$p]}"); done
"${PY[@]}" rss-now "${rss_now[@]}" --out "$OUT/rss-after-load.json"
"${PY[@]}" get "http://127.0.0.1:$P_ADMIN/metrics" "$OUT/switchyard-metrics.txt"
"${PY[@]}" get "http://127.0.0.1:$P_SPLIT_ADMIN/metrics" "$OUT/switchyard-split-metrics.txt"
for p in "${PROXIES[@]}"; do
  pid_var=PID_$p
  ours_alive "${!pid_var}" || log "warning: $p (PID ${!pid_var}) is no longer running"
done
"${PY[@]}" meta --dir "$OUT" "loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)"

"${PY[@]}" report --dir "$OUT"
log "report saved as $OUT/report.md"
