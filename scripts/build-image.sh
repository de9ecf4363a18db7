#!/usr/bin/env bash
# Build the nodeagent image from ./Dockerfile without network access during the build.
#
#   scripts/build-image.sh                          # IMAGE=localhost/nodeagent:dev
#   IMAGE=registry.example.com/platform/nodeagent:0.1.0 scripts/build-image.sh
#   BASE_IMAGE=local scripts/build-image.sh         # a Debian base bootstrapped here (no registry needed)
#
# 1. Fill ./wheelhouse with the wheels requirements.lock pins (hashes checked) and the nodeagent
#    wheel built from this tree; the Dockerfile installs only from there.
# 2. Pick the base: BASE_IMAGE as given, or the official python:3.11-slim-bookworm when a
#    registry is reachable, or (BASE_IMAGE=local, or no registry) a minimal Debian bookworm with
#    python3 made by debootstrap once and cached as localhost/nodeagent-base:bookworm.
# 3. Build with buildah (daemonless; vfs storage, chroot isolation) or docker when buildah is absent.
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/nodeagent:dev}
PYTHON=${PYTHON:-python3}
BASE_IMAGE=${BASE_IMAGE:-}
LOCAL_BASE=localhost/nodeagent-base:bookworm
CACHE=${NODEAGENT_IMAGE_CACHE:-/var/cache/nodeagent}
VERSION=$("$PYTHON" -c 'import nodeagent; print(nodeagent.__version__)')
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}

log() { printf 'build-image: %s\n' "$*" >&2; }

log "wheelhouse from requirements.lock (hash-checked) and this tree"
rm -rf wheelhouse && mkdir wheelhouse
"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
    --require-hashes -r requirements.lock -d wheelhouse
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w wheelhouse .

if command -v buildah >/dev/null 2>&1; then
    builder=buildah
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    builder=docker
else
    log "neither buildah nor a working docker: apt-get install buildah (no daemon needed)"
    exit 1
fi

bootstrap_base() {
    if buildah inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
        log "reusing the cached base $LOCAL_BASE"
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || { log "debootstrap is needed for a local base"; exit 1; }
    local rootfs="$CACHE/base-rootfs"
    if [ ! -x "$rootfs/usr/bin/python3" ]; then
        log "bootstrapping Debian bookworm (minbase + python3) into $rootfs"
        rm -rf "$rootfs" && mkdir -p "$CACHE"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    fi
    local ctr
    ctr=$(buildah from scratch)
    buildah copy -q "$ctr" "$rootfs/" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit -q "$ctr" "$LOCAL_BASE" >/dev/null
    buildah rm "$ctr" >/dev/null
    log "cached the base as $LOCAL_BASE"
}

if [ -z "$BASE_IMAGE" ]; then
    if [ "$builder" = buildah ] && timeout 60 buildah pull -q docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
        BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
    else
        BASE_IMAGE=local
    fi
fi
if [ "$BASE_IMAGE" = local ]; then
    [ "$builder" = buildah ] || { log "BASE_IMAGE=local needs buildah"; exit 1; }
    bootstrap_base
    BASE_IMAGE=$LOCAL_BASE
fi

log "building $IMAGE on $BASE_IMAGE with $builder"
if [ "$builder" = buildah ]; then
    buildah bud --quiet --isolation chroot --layers=false --pull-never \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$VERSION" -t "$IMAGE" . >/dev/null
else
    docker build --quiet --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$VERSION" -t "$IMAGE" . >/dev/null
fi
log "built $IMAGE"
