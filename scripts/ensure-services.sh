#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and the Celery broker answer at the URLs the service
# will use (DATABASE_URL, REDIS_URL, CELERY_BROKER_URL, resolved from the environment
# and the settings file exactly as the service resolves them). A local PostgreSQL or
# Redis that is installed but stopped is started. Names the URL that does not answer.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}

answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

local_host() { # host
  case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac
}

wait_for() { # host port
  for _ in $(seq 1 50); do
    answers "$1" "$2" && return 0
    sleep 0.2
  done
  return 1
}

start_local() { # kind port
  case "$1" in
    postgres)
      if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        echo "starting the local PostgreSQL"
        for version in /etc/postgresql/*; do
          pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
        done
        return 0
      fi
      ;;
    redis)
      if command -v redis-server >/dev/null 2>&1; then
        echo "starting the local Redis on port $2"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$2" --save "" --appendonly no
        return 0
      fi
      ;;
  esac
  return 1
}

# One line per endpoint: variable, host, port, URL with its password masked. A
# configuration error is printed by manage.py as one line naming the variable.
endpoints=$("$PY" src/manage.py service_endpoints) || exit 1

failed=0
while IFS=$'\t' read -r variable host port url; do
  [ -n "$variable" ] || continue
  answers "$host" "$port" && continue
  case "$url" in postgres* | pgsql*) kind=postgres ;; redis*) kind=redis ;; *) kind=other ;; esac
  if local_host "$host" && start_local "$kind" "$port" && wait_for "$host" "$port"; then
    continue
  fi
  echo "error: $variable does not answer: nothing listens on $host:$port ($url)." >&2
  local_host "$host" || kind=remote
  case "$kind" in
    postgres) echo "  Install PostgreSQL 15+ (e.g. 'apt-get install postgresql') and start it, or point $variable at a running one." >&2 ;;
    redis) echo "  Install Redis 7 (e.g. 'apt-get install redis-server') and start it, or point $variable at a running one." >&2 ;;
    *) echo "  Start it, or point $variable at a running one." >&2 ;;
  esac
  failed=1
done <<<"$endpoints"
exit "$failed"
