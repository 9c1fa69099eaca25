#!/bin/sh
# Builds a local Debian bookworm base image for the Dockerfile's BASE_IMAGE, for machines that reach no
# image registry (../docs/deploy.md): debootstrap --variant=minbase, plus python3, python3-venv and
# ca-certificates. Does nothing when the image exists already (cached by name).
#
# If the host has extra CA certificates in /usr/local/share/ca-certificates/*.crt (a proxy that re-signs
# HTTPS), the image trusts them too and sets PIP_CERT, SSL_CERT_FILE and REQUESTS_CA_BUNDLE, which carry
# into every image built FROM it: an unchanged Dockerfile then installs from PyPI through that proxy.
#
#   usage: sh scripts/docker-base.sh [IMAGE]        (default coremesh-base:bookworm; root, docker, debootstrap)
#   COREMESH_DEBIAN_MIRROR   the apt mirror (default http://deb.debian.org/debian)
#   COREMESH_BASE_REBUILD=1  rebuild even if the image exists
set -eu
IMAGE="${1:-coremesh-base:bookworm}"
MIRROR="${COREMESH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if [ "${COREMESH_BASE_REBUILD:-}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "== docker-base: $IMAGE exists"
    exit 0
fi
for tool in docker debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || { echo "docker-base: $tool is missing" >&2; exit 1; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
ROOT="$WORK/rootfs"
LOG="$WORK/log"
echo "== docker-base: debootstrap bookworm into $ROOT"
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT" "$MIRROR" >"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    echo "docker-base: debootstrap failed" >&2
    exit 1
fi
ENVS=""
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    echo "== docker-base: trusting the host's extra CA certificates"
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" update-ca-certificates >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
    BUNDLE=/etc/ssl/certs/ca-certificates.crt
    ENVS="PIP_CERT=$BUNDLE SSL_CERT_FILE=$BUNDLE REQUESTS_CA_BUNDLE=$BUNDLE"
fi
# Small: no apt lists or caches, docs, man pages, locales (about 75 MB instead of 200).
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* "$ROOT"/var/cache/debconf/*-old \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
    "$ROOT"/usr/share/locale/* "$ROOT"/var/log/* "$ROOT"/tmp/* "$ROOT"/root/.cache
echo "== docker-base: importing $IMAGE"
set -- --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8'
for kv in $ENVS; do
    set -- "$@" --change "ENV $kv"
done
tar -C "$ROOT" --numeric-owner -c . | docker import "$@" - "$IMAGE" >/dev/null
docker image ls "$IMAGE"
