#!/usr/bin/env bash
# Fuzzes switchyard on stable Rust with cargo-fuzz and libFuzzer.
#
#   fuzz/run.sh                  # every target, 30 s each
#   fuzz/run.sh 600              # every target, 10 min each
#   fuzz/run.sh 60 admin         # only the admin target, 60 s
#
# Targets (fuzz/fuzz_targets/):
#   config  Config::from_toml on arbitrary UTF-8: never panics; errors point
#           inside the input. Seeded from config/*.toml, with fuzz/config.dict.
#   admin   sequences of arbitrary admin requests through the admin handler
#           (no sockets): never panics; every answer is a documented status
#           with a JSON body (the Prometheus text for /metrics).
#   upstream  the reader of upstream HTTP/1.1 responses on arbitrary bytes,
#           fed in arbitrary pieces: never panics; a Content-Length body
#           has that length.
#   request  the listener's own reader of HTTP/1.1 requests (the plain
#           path) on arbitrary bytes, fed in arbitrary pieces: never panics;
#           a body has its Content-Length; what goes to hyper is given back
#           untouched.
#
# What it does: installs cargo-fuzz with `cargo install` if it is missing,
# builds the targets with `cargo fuzz build -s none` (coverage instrumentation,
# no sanitizer: AddressSanitizer needs nightly, and the code under test is safe
# Rust), then runs each target for the given time with `cargo fuzz run -s none`.
#
# The corpus grows in fuzz/corpus/<target>/ and is kept between runs (not
# committed). A crash stops that target and leaves its input in
# fuzz/artifacts/<target>/; replay it with
#   cargo fuzz run -s none <target> fuzz/artifacts/<target>/crash-<hash>
# (run from the repository root; SWITCHYARD_FUZZ_TRACE=1 makes the admin target
# print every request and answer). Turn it into a regression test before fixing.
#
# Exit status: 0 when no target crashed, 1 when one did, 2 on a usage error.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: fuzz/run.sh [SECONDS] [TARGET...]   (SECONDS per target, default 30)" >&2
  exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(config admin upstream request)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install)"
  cargo install cargo-fuzz --version '^0.13' --locked
fi

echo "== cargo fuzz build -s none"
cargo fuzz build -s none

# Seed the config corpus with the example configs (copies only what is new).
mkdir -p fuzz/corpus/config
cp -n config/*.toml fuzz/corpus/config/ 2>/dev/null || true

failed=()
for target in "${targets[@]}"; do
  extra=()
  case $target in
    config) extra=(-dict=fuzz/config.dict) ;;
    request) extra=(-dict=fuzz/http1.dict) ;;
  esac
  echo "== fuzzing $target for ${seconds}s"
  if ! cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -timeout=10 "${extra[@]}"; then
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "== crashed: ${failed[*]}; inputs in fuzz/artifacts/<target>/" >&2
  exit 1
fi
echo "== no crash in: ${targets[*]} (${seconds}s each)"
