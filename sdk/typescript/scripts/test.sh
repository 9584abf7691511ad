#!/usr/bin/env bash
# Checks the TypeScript SDK: installs its packages when node_modules is
# missing, then check-generated, typecheck and the vitest suites against a
# real pigeon server ($PIGEON_BIN, else target/debug/pigeon, built if missing).
# Ends with vitest's summary and a plain "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent check-generated
npm run --silent typecheck
echo "typecheck: ok"

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" || status=$?
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`sdk-ts: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
' "$report" || echo "sdk-ts: no test report (vitest exited with $status)"
exit "$status"
