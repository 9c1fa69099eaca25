#!/bin/sh
# Installs what the transport benchmark's anchors need. Idempotent: a second run changes nothing.
#   - iperf3 (Debian package)
#   - benchmarks/.venv-libp2p: a separate venv with py-libp2p (PyPI `libp2p`), pinned in
#     benchmarks/requirements-libp2p.txt. py-libp2p pins fastecdsa, which builds from source
#     and needs gcc, the Python headers and libgmp-dev.
# Nothing is installed into the project's own .venv.
# Usage: sh benchmarks/setup.sh   (as root, Debian bookworm)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
VENV="$HERE/.venv-libp2p"
REQS="$HERE/requirements-libp2p.txt"
PYTHON=${PYTHON:-python3}
LIBP2P_VERSION=0.8.1

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        APT_UPDATED=1
    fi
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@"
}
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# --- system packages --------------------------------------------------------------------------
NEED=""
command -v iperf3 >/dev/null 2>&1 || NEED="$NEED iperf3"
have_pkg libgmp-dev || NEED="$NEED libgmp-dev"
command -v gcc >/dev/null 2>&1 || NEED="$NEED gcc"
# Python headers (fastecdsa compiles a C extension) and venv/ensurepip, for Debian's python3.
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    NEED="$NEED python3-dev"
fi
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    NEED="$NEED python3-venv"
fi
if [ -n "$NEED" ]; then
    echo "setup.sh: installing Debian packages:$NEED"
    # shellcheck disable=SC2086
    apt_install $NEED
fi

# --- py-libp2p venv ---------------------------------------------------------------------------
venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$LIBP2P_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import libp2p, trio  # noqa: F401
sys.exit(version("libp2p") != sys.argv[1])
EOF
}
if venv_ok; then
    echo "setup.sh: $VENV already has libp2p $LIBP2P_VERSION"
else
    echo "setup.sh: creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r "$REQS"
    venv_ok || { echo "setup.sh: libp2p did not import from $VENV" >&2; exit 1; }
fi
echo "setup.sh: ok (iperf3: $(command -v iperf3); libp2p venv: $VENV)"
