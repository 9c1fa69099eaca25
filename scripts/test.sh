#!/bin/sh
# The whole test suite: installs what it needs (system packages too), then lint, types and tests.
# Works on a fresh Debian/Ubuntu machine as root; installs nothing that is already there.
set -eu
cd "$(dirname "$0")/.."
# System packages the tests need, each checked on its own:
# - gcc, the Python headers and libnetfilter-queue-dev: pip builds netfilterqueue (the NAT lab's delay
#   element);
# - iptables, iproute2 (ip netns), nftables, conntrack, procps (sysctl): the NAT lab and the tests' own
#   namespaces;
# - coturn: the third-party STUN/TURN peer of the interoperability tests;
# - kubernetes-client (kubectl, kustomize inside): renders k8s/ for tests/unit/test_k8s_manifests.py.
need=""
has() { command -v "$1" >/dev/null 2>&1; }
has gcc || need="$need gcc"
[ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need="$need libnetfilter-queue-dev"
has iptables || need="$need iptables"
has ip || need="$need iproute2"
has nft || need="$need nftables"
has conntrack || need="$need conntrack"
has sysctl || need="$need procps"
has turnserver || need="$need coturn"
has kubectl || need="$need kubernetes-client"
COREMESH_SYSTEM_PACKAGES="$need"
COREMESH_PYTHON_HEADERS=1
. scripts/setup-env.sh
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict on coremesh, node, relay, bootstrap and natlab)"
mypy
echo "== pytest"
python -m pytest -q "$@"
