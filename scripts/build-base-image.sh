#!/usr/bin/env bash
# Build a local python:3.12-slim stand-in with debootstrap, for engines that cannot reach a registry.
#
# Usage: scripts/build-base-image.sh [--force] [TAG]
#   TAG defaults to compose-agent-base:bookworm. An existing image is kept unless --force is given.
#   Then build the project's images with --build-arg BASE_IMAGE=TAG (or BASE_IMAGE=TAG in .env).
#
# Environment: SUITE (bookworm), MIRROR (http://deb.debian.org/debian), CA_BUNDLE (the host's CA bundle,
# copied into the image because pip inside a container may only reach PyPI through this machine's TLS
# interception).
set -euo pipefail

FORCE=0
TAG=""
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build-base-image: unknown option $arg" >&2; exit 2 ;;
        *) TAG="$arg" ;;
    esac
done
TAG="${TAG:-compose-agent-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

log() { printf '[build-base-image] %s\n' "$*" >&2; }

if [ "$FORCE" -eq 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG already exists; keeping it (use --force to rebuild)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "debootstrap needs root; run this script as root (or with sudo)"
    exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

WORK="$(mktemp -d /tmp/compose-agent-base.XXXXXX)"
cleanup() {
    # A failed debootstrap can leave proc/sys mounted inside the rootfs; never rm -rf through a mount.
    for mnt in proc sys dev/pts dev; do
        mountpoint -q "$WORK/rootfs/$mnt" 2>/dev/null && umount -l "$WORK/rootfs/$mnt" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
ROOTFS="$WORK/rootfs"

log "debootstrap $SUITE (minbase + python3) into $ROOTFS; this takes about a minute"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    log "debootstrap failed; last lines of its log:"
    tail -n 20 "$WORK/debootstrap.log" >&2
    exit 1
}

log "copying the host CA bundle ($CA_BUNDLE) so pip in containers trusts this machine's TLS"
if [ -f "$CA_BUNDLE" ]; then
    install -D -m 0644 "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
else
    log "warning: $CA_BUNDLE not found; keeping Debian's bundle"
fi

log "making it behave like python:3.12-slim (pip allowed system-wide, python/pip in /usr/local/bin)"
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
mkdir -p "$ROOTFS/usr/local/bin"
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
# Trim what an image never needs: package lists, caches, docs and man pages.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*

log "importing the root filesystem as $TAG"
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["python3"]' \
    -m "debootstrap $SUITE minbase with python3 (scripts/build-base-image.sh)" \
    - "$TAG" >/dev/null

log "done: $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
