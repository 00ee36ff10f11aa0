#!/usr/bin/env bash
# Make sure the local PostgreSQL and Redis answer; start them when installed but stopped.
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}

answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_for() { # name host port
  for _ in $(seq 1 50); do
    answers "$2" "$3" && return 0
    sleep 0.2
  done
  echo "error: $1 did not start on $2:$3" >&2
  return 1
}

if ! answers "$PG_HOST" "$PG_PORT"; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting the local PostgreSQL"
    for version in /etc/postgresql/*; do
      pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
    wait_for PostgreSQL "$PG_HOST" "$PG_PORT"
  else
    echo "error: PostgreSQL does not answer on $PG_HOST:$PG_PORT." >&2
    echo "Install PostgreSQL 15+ (e.g. 'apt-get install postgresql') or start it on $PG_HOST:$PG_PORT (PG_HOST/PG_PORT select another)." >&2
    exit 1
  fi
fi

if ! answers "$REDIS_HOST" "$REDIS_PORT"; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting the local Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
    wait_for Redis "$REDIS_HOST" "$REDIS_PORT"
  else
    echo "error: Redis does not answer on $REDIS_HOST:$REDIS_PORT." >&2
    echo "Install Redis 7 (e.g. 'apt-get install redis-server') or start it on $REDIS_HOST:$REDIS_PORT (REDIS_HOST/REDIS_PORT select another)." >&2
    exit 1
  fi
fi
