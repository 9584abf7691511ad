#!/usr/bin/env bash
# Checks the TypeScript SDK: installs its packages when node_modules is
# missing, then check-generated, typecheck and the vitest suites against a
# real pigeon server ($PIGEON_BIN, else target/debug/pigeon, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent check-generated
npm run --silent typecheck
echo "typecheck: ok"
npx vitest run --reporter=default
