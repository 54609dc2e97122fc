#!/usr/bin/env bash
# Build a Debian base image without a container registry: debootstrap a minimal
# bookworm root file system and import it into the local Docker engine.
# Usage: scripts/make-base-image.sh [IMAGE_TAG]   (default: infra-base:bookworm)
# Needs root and the debootstrap package. Does nothing when the image exists.
set -euo pipefail
tag="${1:-infra-base:bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already present"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "make-base-image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
rootdir="$(mktemp -d /tmp/infra-base.XXXXXX)"
trap 'rm -rf "$rootdir"' EXIT
echo "debootstrap bookworm into $rootdir ..."
debootstrap --variant=minbase bookworm "$rootdir" >"$rootdir.log" 2>&1 || { tail -20 "$rootdir.log" >&2; exit 1; }
rm -f "$rootdir.log"
# Keep the image small: no apt lists or caches from the bootstrap.
rm -rf "$rootdir"/var/lib/apt/lists/* "$rootdir"/var/cache/apt/*.bin
tar -C "$rootdir" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "base image $tag imported"
