#!/bin/sh
# The whole test suite: installs what it needs (system packages too), then lint, types and tests.
set -eu
cd "$(dirname "$0")/.."
# The NAT lab's delay element: pip builds netfilterqueue (in setup-env.sh) against these headers.
if [ ! -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends libnetfilter-queue-dev gcc >/dev/null
fi
. scripts/setup-env.sh
# System tools the integration tests drive: iptables (rules inside the tests' own network
# namespaces), iproute2 (ip netns), nftables (the NAT lab's tables), coturn (third-party STUN/TURN
# peer for interoperability tests).
need=""
command -v iptables >/dev/null 2>&1 || need="$need iptables"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v turnserver >/dev/null 2>&1 || need="$need coturn"
command -v nft >/dev/null 2>&1 || need="$need nftables"
if [ -n "$need" ]; then
    echo "== installing:$need"
    apt_install $need
fi
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict on coremesh)"
mypy
mypy --ignore-missing-imports node relay bootstrap natlab
echo "== pytest"
python -m pytest -q "$@"
