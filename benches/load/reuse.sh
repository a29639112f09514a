# Sourced by ab.sh and paced.sh: reuses what benches/load/run.sh built and
# wrote under target/load/ (its switchyard config, addresses and binaries),
# starts the two upstreams pinned to CPU 1, and stops every process in
# `pids` on exit. Sets CFG, B (the binaries), PROXY, STATE and pids.
CFG=target/load/switchyard/switchyard.toml
B=target/load/bin
[ -f "$CFG" ] && [ -x "$B/load-upstream" ] || { echo "error: run benches/load/run.sh --quick first" >&2; exit 1; }
addrs=($(grep -o '127.0.0.1:[0-9]*' "$CFG"))
PROXY=${addrs[0]}
STATE=$(sed -n 's/^path = "\(.*state.json\)"/\1/p' "$CFG")
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
taskset -c 1 "$B/load-upstream" --name blue --listen "${addrs[2]}" >/dev/null 2>&1 & pids+=($!)
taskset -c 1 "$B/load-upstream" --name green --listen "${addrs[3]}" >/dev/null 2>&1 & pids+=($!)
