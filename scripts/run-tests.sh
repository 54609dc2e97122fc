#!/usr/bin/env bash
# The one command that prepares a machine of this project's kind (Debian 12, root)
# and runs the whole test suite, end-to-end tests on the real testbed included.
#
#   scripts/run-tests.sh [PYTEST_ARGS...]      e.g. scripts/run-tests.sh -m "not e2e" -x
#
# Steps (each skipped when already done, so a second run goes straight to pytest):
#   1. system packages: docker.io, debootstrap, openssh-client, python3-venv, chromium and
#      fonts-liberation (the sweep report's browser test)
#   2. a running Docker engine (starts dockerd in the background if `docker info` fails)
#   3. the base image infra-base:bookworm (scripts/make-base-image.sh)
#   4. .venv with `pip install -e '.[test]'` (redone only when pyproject.toml changes)
#   5. the wheelhouse .cache/wheels (scripts/make-wheelhouse.sh, when present)
#   6. python -m pytest tests -v "$@"   (no test collected counts as a failure;
#      `tests` is left out when an argument names a test path: run-tests.sh tests/e2e -x)
#
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default .venv).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

script_start=$SECONDS
current_step=""
step() {  # step NAME: print a header; the previous step's time is printed by step_done
    current_step="$1"
    step_start=$SECONDS
    echo "==> $current_step"
}
step_done() {
    echo "<== $current_step: $((SECONDS - step_start))s"
}
die() {
    echo "run-tests: $*" >&2
    exit 1
}
trap 'rc=$?; [ $rc -eq 0 ] || echo "run-tests: FAILED in step \"$current_step\" (exit $rc) after $((SECONDS - script_start))s" >&2' EXIT

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else die "need root (or sudo) for: $*"
    fi
}

# --------------------------------------------------------------------------- 1
step "system packages"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v docker-registry >/dev/null || missing+=(docker-registry)  # images sent by layers (ship)
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || missing+=(iptables)
# The sweep report's browser test (-m browser): headless Chromium, and fonts for its text.
command -v chromium >/dev/null || missing+=(chromium)
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "all present"
fi
step_done

# --------------------------------------------------------------------------- 2
step "docker engine"
if docker info >/dev/null 2>&1; then
    echo "dockerd answers"
else
    if ! pgrep -x dockerd >/dev/null; then
        echo "starting dockerd (log: /var/log/dockerd.log)"
        # setsid + nohup: the engine outlives this script (later runs reuse it).
        as_root setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
    fi
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -20 /var/log/dockerd.log >&2 || true; die "dockerd did not answer within 60s"; }
    echo "dockerd answers"
fi
step_done

# --------------------------------------------------------------------------- 3
step "base image"
bash scripts/make-base-image.sh
step_done

# --------------------------------------------------------------------------- 4
step "python environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && "$PY" -c 'import infra, pytest' 2>/dev/null; then
    echo "up to date"
else
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -e '.[test]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
"$PY" -m pytest --version
step_done

# --------------------------------------------------------------------------- 5
step "wheelhouse"
if [ -f scripts/make-wheelhouse.sh ]; then
    reqs=()
    [ -f projects/wordcount/requirements.txt ] && reqs+=(projects/wordcount/requirements.txt)
    PYTHON="$PY" bash scripts/make-wheelhouse.sh .cache/wheels "${reqs[@]}"
else
    echo "no scripts/make-wheelhouse.sh: skipped"
fi
step_done

# --------------------------------------------------------------------------- 6
step "pytest"
# The whole suite, unless the arguments name test paths themselves.
targets=(tests)
for arg in "$@"; do
    [ -e "${arg%%::*}" ] && targets=()
done
set +e
"$PY" -m pytest "${targets[@]}" -v "$@"
rc=$?
set -e
step_done
if [ $rc -eq 5 ]; then
    die "pytest collected no tests (exit 5): that is a failure"
fi
[ $rc -eq 0 ] || die "pytest failed (exit $rc)"
echo "run-tests: all passed in $((SECONDS - script_start))s"
