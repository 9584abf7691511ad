#!/usr/bin/env bash
# Tests the web chat app: installs what is missing (npm packages of web/,
# Debian's chromium), type-checks, checks that the web app embedded in the
# server (crates/server/web-dist/) matches its sources, builds the pigeon
# binary (unless $PIGEON_BIN names one), and runs the unit tests of the
# app's state rules and the end-to-end tests in headless Chromium against
# the binary. Screenshots: web/e2e/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! need node || ! need npm; then
  echo "web/scripts/test.sh: node 20.19+ and npm are required" >&2
  exit 1
fi

if [ -z "${CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then
  echo "== installing chromium (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

# npm ci when node_modules is missing or older than the lock file.
if ! [ -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "== npm ci (web)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "== typecheck (web)"
npx --no-install tsc --noEmit -p tsconfig.json

echo "== check-dist"
bash scripts/check-dist.sh

if [ -z "${PIGEON_BIN:-}" ]; then
  echo "== cargo build -p pigeon-server --bin pigeon"
  (cd .. && cargo build -q -p pigeon-server --bin pigeon)
fi

echo "== unit tests (src/model.ts) and end-to-end tests (headless Chromium)"
tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
status=0
node --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" \
  test/ e2e/ || status=$?
pass=$(awk '/^# pass /{print $3}' "$tap")
fail=$(awk '/^# fail /{print $3}' "$tap")
echo "screenshots: web/e2e/artifacts/"
echo "web: ${pass:-0} passed, ${fail:-0} failed"
exit "$status"
