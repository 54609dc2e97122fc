#!/usr/bin/env bash
# Fill a wheelhouse for image builds on machines whose containers cannot reach PyPI.
# Usage: scripts/make-wheelhouse.sh DIR [REQUIREMENTS_FILE...]
#
# Puts wheels for celery[redis], flower, cryptography (workers check signed runs with it),
# optuna (the master's sweep driver: searches and early stopping) and every given
# requirements file into DIR,
# for the Python of the images: CPython 3.11 on glibc and this machine's CPU, both
# Debian bookworm's python3 (3.11.2) and python:3.11-slim's (a later 3.11.x); the
# two differ in environment markers (redis needs async-timeout before 3.11.3).
# The Dockerfiles install from DIR with `pip install --no-index --find-links`.
#
# Idempotent: when DIR already satisfies everything offline, nothing is fetched.
# Source-only packages are built into wheels here, so image builds never compile.
#
# Environment:
#   PYTHON          interpreter that runs pip (default: python3)
#   WHEEL_PYTHON    the images' lowest Python version (default: 3.11.2, Debian bookworm's)
set -euo pipefail

usage() { echo "usage: $0 DIR [REQUIREMENTS_FILE...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac

dir="$1"; shift
python="${PYTHON:-python3}"
target="${WHEEL_PYTHON:-3.11.2}"

reqs=()
for f in "$@"; do
    [ -f "$f" ] || { echo "make-wheelhouse: no such requirements file: $f" >&2; exit 1; }
    reqs+=(-r "$f")
done
pkgs=('celery[redis]' flower cryptography optuna)

mkdir -p "$dir"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

pip_() { "$python" -m pip --disable-pip-version-check "$@"; }
nwheels() { find "$dir" -maxdepth 1 -name '*.whl' | wc -l; }
host="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
target_minor="$(echo "$target" | cut -d. -f1-2)"
arch="$(uname -m)"
# Binary wheels for the target interpreter, whatever runs pip here.
cross=(--only-binary=:all: --implementation cp --python-version "$target"
       --platform "manylinux_2_36_$arch" --platform "manylinux_2_17_$arch"
       --platform "manylinux2014_$arch" --platform "manylinux1_$arch" --platform "linux_$arch")

# Requirements of the wheels in DIR that the target interpreter needs but DIR lacks.
# (pip evaluates environment markers with the interpreter running it, even with
# --python-version, so markers such as python_full_version < "3.11.3" are checked here.)
missing_for_target() {
    "$python" - "$dir" "$target" <<'PY'
import email.parser, glob, os, sys, zipfile
from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

folder, target = sys.argv[1], sys.argv[2]
env = default_environment()
env.update(python_full_version=target, implementation_version=target,
           python_version=".".join(target.split(".")[:2]), extra="")
wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
have = {canonicalize_name(parse_wheel_filename(os.path.basename(w))[0]) for w in wheels}
missing = set()
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.HeaderParser().parsestr(z.read(meta).decode("utf-8", "replace"))
    for line in msg.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if (req.marker is None or req.marker.evaluate(env)) and canonicalize_name(req.name) not in have:
            missing.add(str(req.name) + str(req.specifier))
for name in sorted(missing):
    print(name)
PY
}

# Resolve offline against DIR only (no index, no configured find-links): is it complete?
complete() {
    local native=()
    [ "$host" = "$target_minor" ] && native=(--only-binary=:all:)
    { [ ${#native[@]} -eq 0 ] || pip_ download --isolated --quiet --no-index --find-links "$dir" \
          --dest "$dir" "${native[@]}" "${pkgs[@]}" "${reqs[@]}"; } >"$log" 2>&1 &&
    pip_ download --isolated --quiet --no-index --find-links "$dir" \
        --dest "$dir" "${cross[@]}" "${pkgs[@]}" "${reqs[@]}" >>"$log" 2>&1 &&
    [ -z "$(missing_for_target 2>>"$log")" ]
}

if complete; then
    echo "make-wheelhouse: $dir is complete ($(nwheels) wheels)"
    exit 0
fi

echo "make-wheelhouse: downloading into $dir ..."
if [ "$host" = "$target_minor" ]; then
    # Same Python minor version here: a plain download, source packages built into wheels.
    pip_ download --quiet --dest "$dir" "${pkgs[@]}" "${reqs[@]}"
    shopt -s nullglob
    for sdist in "$dir"/*.tar.gz "$dir"/*.zip "$dir"/*.tar.bz2; do
        echo "make-wheelhouse: building a wheel from $(basename "$sdist")"
        pip_ wheel --quiet --no-deps --wheel-dir "$dir" "$sdist"
        rm -f "$sdist"
    done
    shopt -u nullglob
else
    echo "make-wheelhouse: $python is Python $host, the images $target_minor: binary wheels only"
fi
# What the target interpreter needs in addition: binary wheels, and the requirements
# whose markers only the target satisfies.
pip_ download --quiet --dest "$dir" --find-links "$dir" "${cross[@]}" "${pkgs[@]}" "${reqs[@]}"
for _ in 1 2 3; do
    mapfile -t extra < <(missing_for_target)
    [ ${#extra[@]} -gt 0 ] || break
    echo "make-wheelhouse: for Python $target also: ${extra[*]}"
    pip_ download --quiet --dest "$dir" --find-links "$dir" "${cross[@]}" "${extra[@]}"
done

if ! complete; then
    echo "make-wheelhouse: $dir is still incomplete:" >&2
    tail -5 "$log" >&2
    exit 1
fi
echo "make-wheelhouse: $dir ready ($(nwheels) wheels)"
