#!/bin/sh
# Joins this machine to the Celery cluster '@CLUSTER@' as a volunteer's worker.
# Served by the cluster's join endpoint to one token; `infra volunteer add` printed the line.
#
# What it makes here, and nothing else:
#   image   @IMAGE@    the cluster's worker image (loaded, or built for this CPU)
#   volume  @VOLUME@    the worker's settings, credentials and the project
#   container @CONTAINER@    one Celery worker: not root, no capability, read-only root
#           filesystem, no folder of this machine mounted, no port published, within the
#           --cpus / --memory / --concurrency given; restarted unless you stop it
# Every download checks the master's key against the pin of the line you ran (curl
# --pinnedpubkey); the worker then trusts the cluster's CA alone.
#
# Options: --cpus N  --memory SIZE (e.g. 2g)  --concurrency N
# Leave:   @LEAVE@
set -eu

ENDPOINT='@URL@'
PIN='@PIN@'
TOKEN='@TOKEN@'
CLUSTER='@CLUSTER@'
IMAGE='@IMAGE@'
VOLUME='@VOLUME@'
CONTAINER='@CONTAINER@'
STATE='@STATE@'

say() { printf 'infra-join: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
valid() { [ -z "$1" ] || printf '%s\n' "$1" | grep -Eqx "$2"; }  # empty: not given
curl_failed() { e=$1; @CURL_FAILURES@; die "$m"; }  # why, by curl's exit code

# The names an image archive would give on `docker load` (manifest.json's RepoTags, the OCI
# index's name annotations), one a line. Read as Docker reads them: keys in any case. An archive
# without exactly one plain manifest.json, or with an escape or a byte outside printable ASCII
# in those files (Docker's own never have), prints "?" so that it is refused.
archive_names() {
    members=$(gzip -dc < "$1" | tar -tf - 2>/dev/null) || { echo '?'; return 0; }
    manifests=$(printf '%s\n' "$members" | grep -c '^manifest\.json$' || true)
    indexes=$(printf '%s\n' "$members" | grep -c '^index\.json$' || true)
    others=$(printf '%s\n' "$members" | grep -Ec '^(\./)+(manifest\.json|index\.json|repositories)$' || true)
    if [ "$manifests" != 1 ] || [ "$indexes" -gt 1 ] || [ "$others" != 0 ]; then echo '?'; return 0; fi
    { gzip -dc < "$1" | tar -xOf - manifest.json; echo
      if [ "$indexes" = 1 ]; then gzip -dc < "$1" | tar -xOf - index.json; fi; } | LC_ALL=C awk '
        { text = text $0 }
        END {
            gsub(/[ \t\r]/, "", text)
            if (text ~ /[^ -~]/ || index(text, "\\")) { print "?"; exit }
            low = tolower(text)
            while (match(low, /"(repotags|io\.containerd\.image\.name|org\.opencontainers\.image\.ref\.name)":/)) {
                text = substr(text, RSTART + RLENGTH); low = substr(low, RSTART + RLENGTH)
                if (text ~ /^null/ || text ~ /^\[\]/) continue
                list = text
                if (list ~ /^\[/) { list = substr(list, 2); sub(/\].*/, "", list) } else sub(/[,}].*/, "", list)
                if (list !~ /^"[^"]*"(,"[^"]*")*$/) { print "?"; exit }
                n = split(list, names, ",")
                for (i = 1; i <= n; i++) { gsub(/"/, "", names[i]); print names[i] }
            }
        }'
}

# The worker image from the endpoint, loaded only when it names nothing but infra's own tag
# ($IMAGE): `docker load` would otherwise set any tag it carries on this machine's engine.
load_worker_image() {
    saved=$(mktemp "${TMPDIR:-/tmp}/infra-join.XXXXXX") || die "no room for the worker image in ${TMPDIR:-/tmp}"
    trap 'rm -f "$saved"' EXIT
    trap 'rm -f "$saved"; exit 1' HUP INT TERM
    fetch image > "$saved" || curl_failed $?
    names=$(archive_names "$saved")
    foreign=$(printf '%s\n' "$names" | grep -vxF -e "$IMAGE" -e "docker.io/library/$IMAGE" -e '' | head -n 1 || true)
    case "$foreign" in
        "") ;;
        "?") die "the worker image is not an archive as docker save makes it: not loaded" ;;
        *) die "the worker image would set the tag '$foreign' on this machine, not $IMAGE: not loaded" ;;
    esac
    loaded=$(docker load < "$saved" | sed -n 's/^Loaded image ID: //p' | tail -n 1)
    rm -f "$saved"
    [ -n "$loaded" ] || die "the worker image did not load"
    [ "$loaded" = "$image_id" ] || die "the worker image loaded as $loaded, not the $image_id the cluster named"
    docker tag "$loaded" "$IMAGE"
}

fetch() {
    curl -fsS --proto '=https' -k --pinnedpubkey "$PIN" -H "X-Infra-Arch: $arch" "$ENDPOINT/v1/$TOKEN/$1"
}

main() {
    cpus=""; memory=""; concurrency=""
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --cpus=*) cpus=${1#*=} ;;
            --memory=*) memory=${1#*=} ;;
            --concurrency=*) concurrency=${1#*=} ;;
            --cpus|--memory|--concurrency)
                [ "$#" -ge 2 ] || die "$1 needs a value"
                case "$1" in
                    --cpus) cpus=$2 ;; --memory) memory=$2 ;; --concurrency) concurrency=$2 ;;
                esac
                shift ;;
            *) die "unknown option '$1' (options: --cpus N, --memory SIZE, --concurrency N)" ;;
        esac
        shift
    done
    valid "$cpus" '[0-9]+(\.[0-9]+)?' || die "--cpus '$cpus': a number such as 2 or 1.5"
    valid "$memory" '[0-9]+[bkmgBKMG]?' || die "--memory '$memory': a size such as 2g or 512m"
    valid "$concurrency" '[1-9][0-9]{0,2}' || die "--concurrency '$concurrency': 1 to 999"

    command -v docker >/dev/null 2>&1 || die "docker is not installed on this machine"
    docker info >/dev/null 2>&1 || die "docker does not answer (is it running, and may this user use it?)"
    arch=$(docker version --format '{{.Server.Arch}}')

    settings=$(fetch settings) || curl_failed $?
    value() { printf '%s\n' "$settings" | sed -n "s/^$1=//p" | head -n 1; }
    image_id=$(value IMAGE_ID); image_arch=$(value IMAGE_ARCH); base=$(value BASE_IMAGE); name=$(value VOLUNTEER)
    say "joining cluster $CLUSTER as volunteer $name (this machine: $arch)"

    have=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    if [ "$arch" = "$image_arch" ] && [ -n "$image_id" ]; then
        if [ "$have" != "$image_id" ]; then
            say "loading the worker image"
            load_worker_image
        fi
    else
        say "the cluster's image is for ${image_arch:-another CPU}: building the worker image for $arch"
        fetch context | docker build --quiet --label "infra.volunteer=$CLUSTER" --build-arg "BASE_IMAGE=$base" \
            -f Dockerfile.celery --target worker -t "$IMAGE" - >/dev/null || die "the worker image could not be built"
    fi

    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    docker volume create --label "infra.volunteer=$CLUSTER" "$VOLUME" >/dev/null
    # The settings and credentials go into the volume; a throwaway container without network
    # unpacks them and gives the volume to the image's unprivileged user. Fetching them is the
    # token's one exchange: from then on the cluster refuses this line, and the container
    # restarts from what the volume holds.
    fetch bundle | docker run --rm -i --network none --user 0:0 --entrypoint sh -v "$VOLUME:$STATE" "$IMAGE" \
        -c 'umask 077 && tar -x -o -C "$1" && chown -R celery:celery "$1" && chmod 700 "$1"' sh "$STATE" \
        || die "the worker's settings could not be stored (the cluster gives them once per line: ask for a new one)"

    set --
    if [ -n "$cpus" ]; then set -- --cpus "$cpus"; fi
    if [ -n "$memory" ]; then set -- "$@" --memory "$memory" --memory-swap "$memory"; fi
    host=$(hostname 2>/dev/null | tr -cd 'A-Za-z0-9.-' | cut -c1-40)
    docker run --detach --name "$CONTAINER" --restart unless-stopped \
        --label "infra.volunteer=$CLUSTER" --hostname "${host:-volunteer}" \
        --user celery --read-only --tmpfs /tmp:rw,nosuid,nodev,size=1g \
        --cap-drop ALL --security-opt no-new-privileges --pids-limit 1024 "$@" \
        --log-driver json-file --log-opt max-size=10m --log-opt max-file=3 \
        --env "INFRA_ENV_FILE=$STATE/celery.env" --env "INFRA_CA_FILE=$STATE/ca.crt" \
        --volume "$VOLUME:$STATE" "$IMAGE" python -m @PACKAGE@.volunteer $concurrency >/dev/null \
        || die "the worker container could not be started"

    i=0
    while [ "$i" -lt 60 ]; do
        if docker logs "$CONTAINER" 2>&1 | grep -q ' ready\.$'; then
            say "joined: container $CONTAINER runs a worker of cluster $CLUSTER${cpus:+, $cpus CPUs}${memory:+, $memory memory}${concurrency:+, concurrency $concurrency}"
            say "to leave: @LEAVE@"
            return 0
        fi
        if [ "$(docker inspect --format '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" != true ]; then
            docker logs --tail 20 "$CONTAINER" >&2 || true
            die "the worker stopped"
        fi
        i=$((i + 1))
        sleep 2
    done
    docker logs --tail 20 "$CONTAINER" >&2 || true
    die "the worker started but did not say it was ready within 120 s (see its log above)"
}

main "$@"
