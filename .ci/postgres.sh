#!/usr/bin/env bash
# Start a throw-away PostgreSQL on 127.0.0.1 for the tests marked `postgres`.
#
#   eval "$(bash .ci/postgres.sh)"     # exports PG_TEST_URL, PG_TEST_DIR, PG_CTL
#   ...run tests...
#   "$PG_CTL" -D "$PG_TEST_DIR/data" stop -m fast   # optional: CI ends it anyway
#
# Installs Debian's postgresql if initdb/pg_ctl are missing, runs the cluster as a
# non-root user (postgres, or a created one) in a temporary folder, on a free port,
# with trust authentication on loopback only. Progress goes to stderr; stdout carries
# only the export lines.
set -euo pipefail

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

BIN="$(find_bin || true)"
if [[ -z "$BIN" || ! -x "$BIN/initdb" || ! -x "$BIN/pg_ctl" ]]; then
    echo "postgres.sh: installing postgresql with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends postgresql >&2
    BIN="$(find_bin)"
fi

# initdb refuses to run as root: use the postgres user, or make one.
RUN=()
if [[ "$(id -u)" == "0" ]]; then
    PGUSER_OS=postgres
    if ! id "$PGUSER_OS" >/dev/null 2>&1; then
        PGUSER_OS=pktest
        id "$PGUSER_OS" >/dev/null 2>&1 || useradd --system --no-create-home "$PGUSER_OS"
    fi
    RUN=(runuser -u "$PGUSER_OS" --)
fi

DIR="$(mktemp -d /tmp/pk-postgres.XXXXXX)"
chmod 755 "$DIR"
[[ ${#RUN[@]} -gt 0 ]] && chown "$PGUSER_OS" "$DIR"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

"${RUN[@]}" "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 1; }
"${RUN[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PORT -k $DIR -c fsync=on -c max_connections=200" start >&2 \
    || { cat "$DIR/server.log" >&2; exit 1; }
"$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres pk_test >&2

URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/pk_test"
echo "postgres.sh: PostgreSQL ready at $URL (data in $DIR)" >&2
echo "export PG_TEST_URL='$URL'"
echo "export PG_TEST_DIR='$DIR'"
echo "export PG_CTL='${RUN[*]} $BIN/pg_ctl'"
