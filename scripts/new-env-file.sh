#!/usr/bin/env bash
# Write a settings file for this checkout: src/core/.env.ci's local defaults, with a
# database, Celery queue and cache key prefix of the checkout's own (a hash of its
# path, as the test suite names its test database). Two clones on one machine then
# run two separate stacks: neither's worker relays the other's events.
# Usage: scripts/new-env-file.sh TARGET [CHECKOUT_ROOT]
set -euo pipefail

target=${1:?usage: $0 TARGET [CHECKOUT_ROOT]}
root=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
source_file="$(dirname "${BASH_SOURCE[0]}")/../src/core/.env.ci"

if [ -e "$target" ]; then
  echo "error: $target exists; it is never overwritten" >&2
  exit 1
fi
suffix=$(printf '%s' "$root" | sha1sum | cut -c1-8)

{
  # The database's name gets the suffix; every other line is kept as it is.
  sed -E "s#^(DATABASE_URL=.*/)([A-Za-z0-9_]+)\$#\\1\\2_${suffix}#" "$source_file"
  echo
  echo "# This checkout's own queue and cache keys (see scripts/new-env-file.sh)."
  echo "CELERY_QUEUE=die-hard-${suffix}"
  echo "CACHE_KEY_PREFIX=die-hard-${suffix}"
} >"$target"
echo "created $target from src/core/.env.ci with this checkout's own database, queue and" \
  "cache prefix (suffix ${suffix}); edit it to change settings"
