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
# - docker.io, docker-compose, debootstrap: the compose and container tests (test_compose.py,
#   test_compose_nat.py, test_testcontainers.py) build their images on a local base
#   (scripts/docker-base.sh) and run meshes with docker-compose or testcontainers.
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
has dockerd || need="$need docker.io"
has docker-compose || docker compose version >/dev/null 2>&1 || need="$need docker-compose"
has debootstrap || need="$need debootstrap"
COREMESH_SYSTEM_PACKAGES="$need"
COREMESH_PYTHON_HEADERS=1
. scripts/setup-env.sh
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict on coremesh, node, relay, bootstrap and natlab)"
mypy
# A Docker daemon for the compose tests: the one that answers, or one started here and stopped (by its
# PID) when this script ends.
if ! docker info >/dev/null 2>&1; then
    echo "== starting dockerd (log: ${TMPDIR:-/tmp}/coremesh-dockerd.log)"
    dockerd >"${TMPDIR:-/tmp}/coremesh-dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    trap 'kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null || true' EXIT
    tries=0
    until docker info >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -gt 120 ] || ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            tail -n 20 "${TMPDIR:-/tmp}/coremesh-dockerd.log" >&2
            echo "test.sh: dockerd did not come up" >&2
            exit 1
        fi
        sleep 0.5
    done
fi
echo "== pytest"
python -m pytest -q "$@"
