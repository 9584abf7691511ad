#!/usr/bin/env bash
# Runs Pigeon's whole test suite on a fresh machine: checks formatting and
# lints, then every test of every crate (unit, storage contract, and the
# end-to-end tests that start the real `pigeon` binary), then the
# property-based test of the admin HTTP API (scripts/schemathesis.sh).
# Installs what it needs when it is missing. Prints the test runner's
# summary.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy || true

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests"
if need cargo-nextest; then
  cargo nextest run --workspace --no-fail-fast --final-status-level slow "$@"
else
  mkdir -p target
  status=0
  cargo test --workspace --no-fail-fast "$@" 2>&1 | tee target/test-output.txt || status=$?
  echo "== summary"
  grep -E '^test result:' target/test-output.txt | awk '{p+=$4; f+=$6; i+=$8} END {printf "passed %d, failed %d, ignored %d\n", p, f, i}'
  [ "$status" -eq 0 ] || exit "$status"
fi

CRASH_TEST_PROFILE=dev scripts/crash-test 20 # kill -9 crash cycles and the independent checker (docs/TESTING.md)
# The cluster failover test: three nodes on PostgreSQL and NATS, one killed per cycle.
CRASH_TEST_NODES=3 CRASH_TEST_PROFILE=dev scripts/crash-test 10

echo "== admin API property test (schemathesis)"
scripts/schemathesis.sh
