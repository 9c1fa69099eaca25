#!/bin/sh
# The whole test suite: installs what it needs (system packages too), then lint, types and tests.
set -eu
cd "$(dirname "$0")/.."
. scripts/setup-env.sh
# System tools the integration tests drive: iptables (rules inside the tests' own network
# namespaces), iproute2 (ip netns), coturn (third-party STUN/TURN peer for interoperability tests).
need=""
command -v iptables >/dev/null 2>&1 || need="$need iptables"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v turnserver >/dev/null 2>&1 || need="$need coturn"
if [ -n "$need" ]; then
    echo "== installing:$need"
    apt_install $need
fi
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict on coremesh)"
mypy
mypy --ignore-missing-imports node relay bootstrap
echo "== pytest"
python -m pytest -q "$@"
