#!/bin/sh
# The main job: a local mesh on loopback, no Docker. Installs what it needs, then starts a few
# coremesh-node processes that connect to each other and exchange messages, printing what happens.
set -eu
cd "$(dirname "$0")/.."
COREMESH_EXTRAS=""  # the demo needs no test tools
. scripts/setup-env.sh
exec python -m coremesh.demo "$@"
