#!/usr/bin/env bash
# Make sure the tools outside Python that make lint and make test use are installed:
# promtool (from Debian's or Ubuntu's `prometheus` package) checks and unit-tests the
# alert rules in docker/prometheus/rules/. Installs it with apt-get when it is missing
# and we are root (or may use sudo without a password, as on CI runners); otherwise
# says how, and leaves the decision to the caller (make lint and the test fail in CI).
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "note: promtool is missing and there is no apt-get here: install Prometheus's promtool to check the alert rules" >&2
	exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
	as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	as_root=(sudo -n)
else
	echo "note: promtool is missing: run 'sudo apt-get install -y --no-install-recommends prometheus' (or 'make tools' as root) to check the alert rules" >&2
	exit 0
fi
echo "installing promtool (apt-get install prometheus)"
install=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus)
# The package lists of a fresh machine or image may be missing or stale: refresh once.
if ! "${install[@]}" >/dev/null; then
	"${as_root[@]}" apt-get update -q >/dev/null
	"${install[@]}" >/dev/null
fi
command -v promtool >/dev/null 2>&1 || { echo "error: prometheus installed but promtool is not on PATH" >&2; exit 1; }
