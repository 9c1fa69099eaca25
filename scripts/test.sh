#!/bin/sh
# The whole test suite: installs what it needs (system packages too), then lint, types and tests.
# Works on a fresh Debian/Ubuntu machine as root; installs nothing that is already there.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# System packages the tests need, each checked on its own:
# - gcc, the Python headers and libnetfilter-queue-dev: pip builds netfilterqueue (the NAT lab's delay
#   element) in setup-env.sh;
# - iptables, iproute2 (ip netns), nftables, conntrack: the NAT lab and the tests' own namespaces;
# - coturn: the third-party STUN/TURN peer of the interoperability tests.
need=""
has() { command -v "$1" >/dev/null 2>&1; }
has gcc || need="$need gcc"
[ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need="$need libnetfilter-queue-dev"
if ! has python3 || ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    need="$need python3 python3-venv python3-pip python3-dev ca-certificates"
elif ! python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
    need="$need python3-dev"
fi
has iptables || need="$need iptables"
has ip || need="$need iproute2"
has nft || need="$need nftables"
has conntrack || need="$need conntrack"
has turnserver || need="$need coturn"
if [ -n "$need" ]; then
    echo "== installing:$need"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $need >/dev/null
fi
. scripts/setup-env.sh
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict on coremesh)"
mypy
mypy --ignore-missing-imports node relay bootstrap natlab
echo "== pytest"
python -m pytest -q "$@"
