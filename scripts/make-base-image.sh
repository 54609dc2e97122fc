#!/usr/bin/env bash
# Build a Debian base image without a container registry: debootstrap a minimal
# bookworm root file system and import it into the local Docker engine.
# Usage: scripts/make-base-image.sh [IMAGE_TAG]   (default: infra-base:bookworm)
# Needs root and the debootstrap package. Does nothing when the image exists and was made
# by this recipe; an image of an older recipe is made again.
set -euo pipefail
tag="${1:-infra-base:bookworm}"
# Raise when what the image holds changes (2: no apt cache, documentation or translations).
# The recipe is a second tag of the same image (IMAGE_TAG-recipeN), not a label: every image
# built on the base, and every container, would inherit a label.
recipe=2
recipe_tag="$tag-recipe$recipe"
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
current="$(image_id "$tag")"
if [ -n "$current" ]; then
    if [ "$current" = "$(image_id "$recipe_tag")" ]; then
        echo "base image $tag already present"
        exit 0
    fi
    echo "base image $tag is of an older recipe; making it again"
fi
command -v debootstrap >/dev/null || { echo "make-base-image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
rootdir="$(mktemp -d /tmp/infra-base.XXXXXX)"
trap 'rm -rf "$rootdir"' EXIT
echo "debootstrap bookworm into $rootdir ..."
debootstrap --variant=minbase bookworm "$rootdir" >"$rootdir.log" 2>&1 || { tail -20 "$rootdir.log" >&2; exit 1; }
rm -f "$rootdir.log"
# Keep the image small: nothing a container reads. No apt lists and no downloaded packages
# (about 30 MB of .deb files debootstrap leaves in apt's cache); no documentation, manual
# pages or message translations (about 45 MB), now or from later apt installs in the images
# (dpkg's path-exclude, as Debian's own slim images do). Copyright files stay.
cat > "$rootdir/etc/dpkg/dpkg.cfg.d/infra-slim" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
find "$rootdir/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$rootdir/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$rootdir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$rootdir"/usr/share/man/* "$rootdir"/usr/share/info/* "$rootdir"/usr/share/lintian/*
rm -rf "$rootdir"/var/lib/apt/lists/* "$rootdir"/var/cache/apt/*.bin "$rootdir"/var/cache/apt/archives/*.deb
tar -C "$rootdir" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
docker tag "$tag" "$recipe_tag"
echo "base image $tag imported"
