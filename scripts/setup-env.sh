#!/bin/sh
# Sourced by demo.sh and test.sh: makes sure Python 3.11+, venv and the project are installed.
# Works on a fresh Debian/Ubuntu machine as root; does nothing that is already done.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt_install() {
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
}
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    apt_install python3 python3-venv python3-pip ca-certificates
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv python3-pip
fi
VENV="${COREMESH_VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# COREMESH_EXTRAS: the optional dependencies to install (test.sh: dev; demo.sh: none, so that the
# demo needs no compiler). Reinstall only when pyproject.toml changed since the last install of them.
EXTRAS="${COREMESH_EXTRAS-dev}"
STAMP="$VENV/.coremesh-installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "${COREMESH_FORCE_INSTALL:-}" = 1 ]; then
    # pip's and the build backend's chatter goes to a log, shown only when the install fails.
    LOG="$VENV/.coremesh-install.log"
    echo "== installing the project into $VENV (log: $LOG)"
    if ! { "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip &&
           "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"; } >"$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "setup-env: installing the project failed (log above, kept in $LOG)" >&2
        exit 1
    fi
    touch "$STAMP"
fi
PATH="$VENV/bin:$PATH"
export PATH
