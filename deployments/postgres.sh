#!/usr/bin/env bash
# PostgreSQL as the Prefect server's database: Debian's postgresql binaries, run from their own
# data folder on 127.0.0.1 and their own port. No system service, no root service, no config in /etc.
#
#   deployments/postgres.sh start    # init (first time) and start; prints the settings to export
#   deployments/postgres.sh env      # print the settings again (eval "$(deployments/postgres.sh env)")
#   deployments/postgres.sh stop
#
# Settings (environment): WINNOW_PG_DIR (default .winnow/postgres), WINNOW_PG_PORT (default 5433),
# WINNOW_PG_BIN (default: the newest /usr/lib/postgresql/*/bin). PostgreSQL refuses to run as root,
# so as root the server runs as the `postgres` user (WINNOW_PG_USER) and the folder is made theirs.
# Then run the server on it:  eval "$(deployments/postgres.sh env)"; prefect server start --host 127.0.0.1
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$(realpath -m "${WINNOW_PG_DIR:-.winnow/postgres}")"
PORT="${WINNOW_PG_PORT:-5433}"
BIN="${WINNOW_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
DB=prefect
if [ -z "$BIN" ] || [ ! -x "$BIN/pg_ctl" ]; then
  echo "postgres.sh: no PostgreSQL binaries found (apt-get install postgresql, or set WINNOW_PG_BIN)" >&2
  exit 2
fi
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u "${WINNOW_PG_USER:-postgres}" --); fi
pg() { "${AS[@]}" "$BIN/$@"; }

print_env() {
  echo "export PREFECT_API_DATABASE_CONNECTION_URL='postgresql+asyncpg://prefect@127.0.0.1:$PORT/$DB'"
}

case "${1:-start}" in
  start)
    if [ ! -f "$DIR/PG_VERSION" ]; then
      mkdir -p "$DIR"
      chmod 700 "$DIR"
      [ ${#AS[@]} -eq 0 ] || chown "${WINNOW_PG_USER:-postgres}" "$DIR"
      # trust on 127.0.0.1 and the socket only: nothing listens beyond this machine.
      pg initdb -D "$DIR" -U prefect --auth=trust --encoding=UTF8 >"$DIR.init.log" 2>&1 \
        || { echo "postgres.sh: initdb failed (log: $DIR.init.log)" >&2; exit 1; }
    fi
    if ! pg pg_ctl -D "$DIR" status >/dev/null 2>&1; then
      pg pg_ctl -D "$DIR" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories='$DIR' -c max_connections=200" start >/dev/null \
        || { echo "postgres.sh: could not start PostgreSQL (log: $DIR/server.log)" >&2; exit 1; }
    fi
    pg psql -h 127.0.0.1 -p "$PORT" -U prefect -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1 \
      || pg createdb -h 127.0.0.1 -p "$PORT" -U prefect "$DB"
    echo "PostgreSQL on 127.0.0.1:$PORT (data: $DIR). For the Prefect server:" >&2
    print_env
    ;;
  env) print_env ;;
  stop) pg pg_ctl -D "$DIR" -m fast -w stop ;;
  *) echo "usage: deployments/postgres.sh start|env|stop" >&2; exit 2 ;;
esac
