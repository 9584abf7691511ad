#!/usr/bin/env bash
# Checks that the web app embedded in the server (crates/server/web-dist/,
# committed) is exactly what the sources in web/ (and the SDK sources in
# sdk/typescript/src/) build to: rebuilds into a temporary directory and
# diffs. On a difference, run `npm run build` in web/ and commit
# crates/server/web-dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
committed=../crates/server/web-dist
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
[ -d node_modules ] || npm ci --no-audit --no-fund
PIGEON_WEB_OUT="$out" npx --no-install vite build --logLevel warn
if diff -r "$committed" "$out" > "$out.diff" 2>&1; then
  echo "check-dist: crates/server/web-dist matches a fresh build of web/"
  rm -f "$out.diff"
else
  echo "check-dist: crates/server/web-dist differs from a fresh build of web/:" >&2
  head -40 "$out.diff" >&2
  rm -f "$out.diff"
  echo "Run 'npm run build' in web/ and commit crates/server/web-dist/." >&2
  exit 1
fi
