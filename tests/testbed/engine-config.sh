# Sourced by the entrypoints: /etc/docker/daemon.json for the engine of this
# host (the one in the image, or the one `infra bootstrap` installs later).
# - dns: the machine's resolvers; otherwise nested containers on bridge networks
#   fall back to public DNS servers (docker does when it only sees 127.0.0.11).
# - cgroup-parent: one subtree per host in the machine's cgroup hierarchy, so the
#   testbed can remove what a killed host leaves behind.
if [ ! -e /etc/docker/daemon.json ] && { [ -n "${TESTBED_DNS:-}" ] || [ -n "${TESTBED_CGROUP_PARENT:-}" ]; }; then
    mkdir -p /etc/docker
    python3 - > /etc/docker/daemon.json <<'PY'
import json, os
cfg = {}
if os.environ.get("TESTBED_DNS"):
    cfg["dns"] = os.environ["TESTBED_DNS"].split()
if os.environ.get("TESTBED_CGROUP_PARENT"):
    cfg["cgroup-parent"] = os.environ["TESTBED_CGROUP_PARENT"]
print(json.dumps(cfg, indent=2))
PY
fi
