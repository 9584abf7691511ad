#!/usr/bin/env bash
# Runs Pigeon's whole test suite on a fresh machine: checks formatting and
# lints, then every test of every crate (unit, storage contract on memory,
# fjall and PostgreSQL, the end-to-end tests that start the real `pigeon`
# binary, cluster tests on PostgreSQL and NATS), the store-heavy end-to-end
# tests again on PostgreSQL, the TypeScript SDK's tests
# and the web app's end-to-end tests in headless Chromium, the crash cycles
# (one node with every event kept, then with a small log retention, then a
# three-node cluster failover, without and with a retention) and the property-based
# test of the admin HTTP API (scripts/schemathesis.sh). Installs what it
# needs when it is missing (Node packages, Chromium, PostgreSQL 15,
# nats-server, Python tools). Prints each runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

# A clean build's incremental caches take over a gigabyte of disk and a run
# on a fresh checkout never reuses them; CI machines can be short of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

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

# The end-to-end tests that exercise the store most, again with every
# server on its own PostgreSQL (pigeon-testkit) instead of the embedded
# store: messaging, groups (the 5,000-member group), receipts and message
# changes, the SDK's retries, kill -9 durability, the webhook outbox,
# metrics and overload. About 35 s on 2 idle cores, a minute when busy.
pg_tests=(--test messaging --test groups --test social --test sdk --test durability
  --test webhooks --test operations --test overload)
echo "== server tests on PostgreSQL (PIGEON_TEST_STORE=postgres)"
if need cargo-nextest; then
  PIGEON_TEST_STORE=postgres cargo nextest run -p pigeon-server --no-fail-fast --final-status-level slow "${pg_tests[@]}"
else
  PIGEON_TEST_STORE=postgres cargo test -p pigeon-server --no-fail-fast "${pg_tests[@]}"
fi

# The TypeScript SDK (vitest) and the web app (unit tests, then end-to-end
# tests in headless Chromium) against the pigeon binary the tests just built.
if ! need node || ! need npm; then
  echo "== installing Node.js and npm (apt; Node 20 or newer is needed)"
  apt-get install -y -q nodejs npm >/dev/null
fi
pigeon_bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/pigeon"
echo "== TypeScript SDK (sdk/typescript)"
PIGEON_BIN=$pigeon_bin sdk/typescript/scripts/test.sh
echo "== web app (web/)"
PIGEON_BIN=$pigeon_bin web/scripts/test.sh

CRASH_TEST_PROFILE=dev scripts/crash-test 20 # kill -9 crash cycles and the independent checker (docs/TESTING.md)
# Again with a small log retention: keys trimmed under the users must be refused, never skip.
CRASH_TEST_RETAIN=2000 CRASH_TEST_PROFILE=dev scripts/crash-test 20
# The cluster failover test: three nodes on PostgreSQL and NATS, one killed per cycle;
# again with a log retention (PostgreSQL trims by deleting rows).
CRASH_TEST_NODES=3 CRASH_TEST_PROFILE=dev scripts/crash-test 10
CRASH_TEST_NODES=3 CRASH_TEST_RETAIN=500 CRASH_TEST_PROFILE=dev scripts/crash-test 10

echo "== admin API property test (schemathesis)"
scripts/schemathesis.sh
