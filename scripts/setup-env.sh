#!/bin/sh
# Sourced by demo.sh and test.sh: makes sure Python 3.11+, venv, the system packages the caller names
# and the project are installed. Works on a fresh Debian/Ubuntu machine as root; does nothing that is
# already done, and prints one line per step it takes (the tools' own output only when one fails).
#   COREMESH_SYSTEM_PACKAGES  Debian packages the caller needs besides Python (test.sh: its tools)
#   COREMESH_PYTHON_HEADERS   1: the Python headers too (pip builds a C extension)
#   COREMESH_EXTRAS           the project's optional dependencies to install (default dev; demo: none)
#   COREMESH_VENV             where the virtual environment lives (default .venv)
set -eu
export DEBIAN_FRONTEND=noninteractive
# Run a command quietly; on failure show what it printed and stop.
quietly() {
    _log=$(mktemp)
    if ! "$@" >"$_log" 2>&1; then
        cat "$_log" >&2
        echo "setup-env: failed: $*" >&2
        rm -f "$_log"
        exit 1
    fi
    rm -f "$_log"
}
apt_install() {
    echo "== installing system packages:$*"
    quietly apt-get -o DPkg::Lock::Timeout=600 update -qq
    quietly apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@"
}
need="${COREMESH_SYSTEM_PACKAGES:-}"
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    need="$need python3 python3-venv python3-pip ca-certificates"
    [ "${COREMESH_PYTHON_HEADERS:-}" = 1 ] && need="$need python3-dev"
else
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv python3-pip"
    if [ "${COREMESH_PYTHON_HEADERS:-}" = 1 ] && ! python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
        need="$need python3-dev"
    fi
fi
[ -z "$need" ] || apt_install $need
VENV="${COREMESH_VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last install of these extras.
EXTRAS="${COREMESH_EXTRAS-dev}"
STAMP="$VENV/.coremesh-installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "${COREMESH_FORCE_INSTALL:-}" = 1 ]; then
    echo "== installing the project into $VENV"
    quietly "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    # -q alone still lets setuptools' editable-install notice through: quietly keeps it for failures.
    quietly "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
    touch "$STAMP"
fi
PATH="$VENV/bin:$PATH"
export PATH
