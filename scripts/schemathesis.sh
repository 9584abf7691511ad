#!/usr/bin/env bash
# Property-based test of the admin HTTP API: starts the `pigeon` binary with
# an admin token on free ports, lets schemathesis generate requests for every
# operation in its /openapi.json (valid and invalid ones), fails if any answer
# is a server error (5xx), and stops the server. Installs schemathesis with
# pip if it is missing.
#
#   scripts/schemathesis.sh                 # the debug binary, built if needed
#   PIGEON_BIN=target/release/pigeon scripts/schemathesis.sh
#   SCHEMATHESIS_MAX_EXAMPLES=200 scripts/schemathesis.sh   # a longer run
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import schemathesis' 2>/dev/null || python3 -m pip install --quiet schemathesis

bin="${PIGEON_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet -p pigeon-server --bin pigeon
  target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  bin="$target/debug/pigeon"
fi

# shellcheck source=scripts/lib/ports.sh
. scripts/lib/ports.sh
tcp_port=$(free_port)
http_port=$(free_port)
token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/pigeon.toml" <<EOF
listen = "127.0.0.1:$tcp_port"
http = "127.0.0.1:$http_port"
data = "$work/data"
admin_token = "$token"
# Cheap password hashes: the run creates many accounts.
password_hash_memory_kib = 8
password_hash_iterations = 1
EOF
"$bin" serve --config "$work/pigeon.toml" 2>"$work/server.log" &
server_pid=$!

base="http://127.0.0.1:$http_port"
python3 - "$base/healthz" <<'EOF'
import sys, time, urllib.request
deadline = time.time() + 30
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1)
        break
    except Exception:
        if time.time() > deadline:
            sys.exit("pigeon did not start")
        time.sleep(0.1)
EOF

# The accounts and the group the document's examples name, so example
# requests reach real data.
python3 - "$base" "$token" <<'EOF'
import json, sys, urllib.request
base, token = sys.argv[1], sys.argv[2]
def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10)
for name in ["alice", "bob", "newsbot"]:
    post("/admin/v1/users", {"username": name, "password": "correct horse battery"})
post("/admin/v1/groups", {"name": "Operations", "owner": "alice", "members": ["bob", "newsbot"]})
EOF

status=0
# From the scratch directory: schemathesis keeps a cache where it runs.
(cd "$work" && python3 -c 'import sys; from schemathesis.cli import schemathesis; sys.argv[0] = "schemathesis"; sys.exit(schemathesis())' \
  run "$base/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --workers 2 \
  --report-dir "$work/report") || status=$?

if [ "$status" -ne 0 ]; then
  echo "== schemathesis failed; the server's log:" >&2
  tail -n 50 "$work/server.log" >&2
fi
exit "$status"
