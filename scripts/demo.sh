#!/bin/sh
# The main job: a local mesh on loopback, no Docker. Installs what it needs, then starts a few
# coremesh-node processes that connect to each other and exchange messages, printing what happens.
set -eu
cd "$(dirname "$0")/.."
COREMESH_EXTRAS=""  # the demo needs no test tools
# iproute2 for its mDNS step, in a network namespace of its own (root only; left out where it cannot be).
COREMESH_SYSTEM_PACKAGES=""
if [ "$(id -u)" = 0 ] && ! command -v ip >/dev/null 2>&1; then COREMESH_SYSTEM_PACKAGES="iproute2"; fi
. scripts/setup-env.sh
exec python -m coremesh.cli.demo "$@"
