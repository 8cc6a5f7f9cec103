#!/usr/bin/env bash
# PostgreSQL for the sink tests: makes 127.0.0.1:5432 answer as user `postgres` with trust
# auth on loopback and a database `test`. Installs Debian's `postgresql` when missing,
# creates a cluster when there is none, starts it. Exit 1 when it cannot.
#   scripts/postgres.sh start
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
die() { echo "postgres.sh: $*" >&2; exit 1; }

answers() {
  python3 - <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.1", 5432))
except OSError:
    sys.exit(1)
PY
}

as_postgres() { $SUDO runuser -u postgres -- "$@"; }

ensure_installed() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "postgres.sh: installing Debian's postgresql" >&2
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null; } \
      || die "cannot install postgresql"
  fi
}

ensure_cluster() {
  local v
  v="$(ls /usr/lib/postgresql | sort -V | tail -1)"
  [ -n "$v" ] || die "no PostgreSQL version under /usr/lib/postgresql"
  if [ -z "$(ls /etc/postgresql/"$v" 2>/dev/null)" ]; then
    echo "postgres.sh: creating cluster $v/main" >&2
    $SUDO pg_createcluster "$v" main >/dev/null
  fi
  CLUSTER="$v/$(ls /etc/postgresql/"$v" | head -1)"
  local conf="/etc/postgresql/$CLUSTER/pg_hba.conf"
  # Trust on loopback (tests only; the first matching line wins, so these go on top).
  if ! grep -q "^# weir: trust on loopback" "$conf"; then
    $SUDO sed -i '1i # weir: trust on loopback (scripts/postgres.sh)\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf"
    RELOAD=1
  fi
}

start() {
  if answers && psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
    create_db
    return 0
  fi
  ensure_installed
  RELOAD=0
  ensure_cluster
  local port
  port="$(sed -n 's/^port *= *\([0-9]*\).*/\1/p' "/etc/postgresql/$CLUSTER/postgresql.conf" | head -1)"
  [ "${port:-5432}" = 5432 ] || die "cluster $CLUSTER listens on port $port, not 5432"
  if $SUDO pg_ctlcluster --skip-systemctl-redirect ${CLUSTER/\// } status >/dev/null 2>&1; then
    [ "$RELOAD" = 0 ] || $SUDO pg_ctlcluster --skip-systemctl-redirect ${CLUSTER/\// } reload
  else
    echo "postgres.sh: starting cluster $CLUSTER" >&2
    $SUDO pg_ctlcluster --skip-systemctl-redirect ${CLUSTER/\// } start
  fi
  local deadline=$((SECONDS + 30))
  until psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "PostgreSQL does not accept user postgres on 127.0.0.1:5432 with trust auth"
    sleep 0.5
  done
  create_db
}

create_db() {
  if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "select 1 from pg_database where datname = 'test'")" != 1 ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test' >/dev/null
  fi
  echo "postgres=host=127.0.0.1 port=5432 user=postgres dbname=test"
}

case "${1:-}" in
  start) start ;;
  *) die "usage: postgres.sh start" ;;
esac
