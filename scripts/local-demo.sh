#!/usr/bin/env bash
# Bring up a Celery cluster on this machine alone and run the word count on it, then a
# parameter sweep of projects/sweep-demo on a second small cluster.
#
#   bash scripts/local-demo.sh
#
# Works on a fresh Debian/Ubuntu machine with no container registry: it installs infra
# into .venv, installs and starts Docker with `infra bootstrap` when it is missing, makes
# the base image (the registry's python:3.11-slim-bookworm when it can be pulled, else a
# Debian image built with debootstrap), downloads the wheels the images install, then runs
# `infra up -f examples/local.yaml` and the word-count client in the master container, then
# `infra up -f examples/sweep-local.yaml` and `infra sweep` of the sample's 24 combinations.
# Remove the clusters afterwards with: .venv/bin/infra clean -f examples/local.yaml (and
# examples/sweep-local.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
CLUSTER=examples/local.yaml
SWEEP_CLUSTER=examples/sweep-local.yaml
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

say "installing infra into $VENV"
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    as_root apt-get update -q && as_root apt-get install -y -q python3-venv
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -e .
INFRA="$VENV/bin/infra"

# Made first: examples/local.yaml names it, and `infra bootstrap` reads that file.
say "wheelhouse .cache/wheels (installed into the images without PyPI)"
PYTHON="$VENV/bin/python" bash scripts/make-wheelhouse.sh .cache/wheels projects/wordcount/requirements.txt \
    projects/sweep-demo/requirements.txt

say "Docker engine"
if docker info >/dev/null 2>&1; then
    echo "Docker answers"
else
    "$INFRA" bootstrap -f "$CLUSTER" --hosts local
fi

say "base image infra-base:bookworm"
if docker image inspect infra-base:bookworm >/dev/null 2>&1; then
    echo "present"
elif docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    docker tag python:3.11-slim-bookworm infra-base:bookworm
    echo "tagged python:3.11-slim-bookworm from the registry"
else
    echo "no registry reachable: building a Debian base with debootstrap"
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || {
        as_root apt-get update -q && as_root apt-get install -y -q debootstrap; }
    as_root env PATH="$PATH:/usr/sbin:/sbin" bash scripts/make-base-image.sh infra-base:bookworm
fi

say "infra up -f $CLUSTER"
"$INFRA" up -f "$CLUSTER"

say "word count on the cluster"
"$INFRA" run -f "$CLUSTER" wordcount.client --top 10

# A second small cluster for a project with no Celery code: a training script and its parameters.
say "infra up -f $SWEEP_CLUSTER"
"$INFRA" up -f "$SWEEP_CLUSTER"

say "parameter sweep: 24 combinations of projects/sweep-demo/train.py"
"$INFRA" sweep -f "$SWEEP_CLUSTER" projects/sweep-demo/parameters.yml -q --sort -accuracy --top 5 \
    -- python train.py

cat <<TXT

Both clusters keep running. Try:
  $INFRA status -f $CLUSTER
  $INFRA logs --file $CLUSTER worker -n 20
  column -s, -t < projects/sweep-demo/output/sweep-parameters.csv | less -S
  $INFRA sweep report -f $SWEEP_CLUSTER parameters --open   # the sweep's report.html in a browser
  $INFRA clean -f $CLUSTER          # remove it (add --volumes --files to remove its data too)
  $INFRA clean -f $SWEEP_CLUSTER
TXT
