"""Facts about a host: the command that reads each one and a pure parser of its output.

The runner sends `FACTS_SCRIPT` once per host (one SSH round trip) and hands the output to
`parse_host_facts`; everything after that is decided from the parsed facts alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

SECTION = "=====infra:"

# A POSIX sh script: each section prints a marker line, then the output of one probe.
# `docker` errors are kept (2>&1) so "permission denied" and "cannot connect" are told apart.
FACTS_SCRIPT = r"""
s() {{ printf '\n{marker}%s\n' "$1"; }}
s home; printf '%s\n' "$HOME"
s uid; id -u; id -g
s arch; uname -m
s docker_version; docker version --format '{{{{.Server.Version}}}}' 2>&1; echo "exit=$?"
s containers
ids=$(docker ps -aq --filter label=infra.cluster={cluster} 2>/dev/null)
if [ -n "$ids" ]; then docker inspect $ids 2>/dev/null; else echo '[]'; fi
s images
for img in {images}; do
  printf '%s %s\n' "$img" "$(docker image inspect --format '{{{{.Id}}}}' "$img" 2>/dev/null || echo -)"
done
s networks; docker network ls --filter label=infra.cluster={cluster} --format '{{{{.Name}}}}' 2>/dev/null
s volumes; docker volume ls --filter label=infra.cluster={cluster} --format '{{{{.Name}}}}' 2>/dev/null
s end
"""


def facts_script(cluster_name: str, images: list[str]) -> str:
    """The probe script for one host; image names and the cluster name are validated tokens."""
    return FACTS_SCRIPT.format(marker=SECTION, cluster=cluster_name, images=" ".join(images) or "")


@dataclass(frozen=True)
class ObservedContainer:
    name: str
    id: str
    image_id: str
    state: str  # running, exited, restarting, created, paused, dead
    labels: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    health: str = ""

    @property
    def role(self) -> str:
        return self.labels.get("infra.role", "")

    @property
    def fingerprint(self) -> str:
        return self.labels.get("infra.spec", "")

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class HostFacts:
    home: str
    uid: int
    gid: int
    arch: str
    docker_version: str | None  # None when the engine does not answer
    docker_problem: str  # why it does not answer ("" when it does)
    containers: tuple[ObservedContainer, ...] = ()
    image_ids: dict[str, str | None] = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    def container(self, name: str) -> ObservedContainer | None:
        return next((c for c in self.containers if c.name == name), None)


def split_sections(output: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    current = None
    lines: list[str] = []
    for line in output.splitlines():
        if line.startswith(SECTION):
            if current is not None:
                sections[current] = "\n".join(lines).strip("\n")
            current, lines = line[len(SECTION):].strip(), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        sections[current] = "\n".join(lines).strip("\n")
    return sections


def parse_docker_inspect(text: str) -> tuple[ObservedContainer, ...]:
    """Parse `docker inspect` JSON of containers."""
    text = text.strip()
    if not text:
        return ()
    items = json.loads(text)
    found = []
    for item in items:
        state = item.get("State") or {}
        health = (state.get("Health") or {}).get("Status", "")
        found.append(
            ObservedContainer(
                name=item.get("Name", "").lstrip("/"),
                id=item.get("Id", ""),
                image_id=item.get("Image", ""),
                state=state.get("Status", "unknown"),
                labels=dict((item.get("Config") or {}).get("Labels") or {}),
                started_at=state.get("StartedAt", ""),
                health=health,
            )
        )
    return tuple(sorted(found, key=lambda c: c.name))


def parse_docker_version(text: str) -> tuple[str | None, str]:
    """`docker version --format` output plus `exit=N`: (server version or None, problem)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    exit_line = lines[-1] if lines and lines[-1].startswith("exit=") else "exit=1"
    body = [line for line in lines if not line.startswith("exit=")]
    if exit_line == "exit=0" and body:
        return body[-1].strip(), ""
    joined = " ".join(body).lower()
    if "permission denied" in joined:
        return None, "the SSH user may not use Docker (not in the 'docker' group)"
    # Checked before "not installed": Docker 28+ says "failed to connect to the docker API at
    # unix:///var/run/docker.sock; check if ... the daemon is running: ... no such file or directory".
    if "cannot connect" in joined or "failed to connect" in joined or "daemon running" in joined \
            or "daemon is running" in joined:
        return None, "the Docker engine is not running"
    if "not found" in joined or "no such file" in joined:
        return None, "Docker is not installed"
    return None, (body[-1].strip() if body else "Docker does not answer")


def parse_host_facts(output: str) -> HostFacts:
    sections = split_sections(output)
    if "end" not in sections:
        raise ValueError("the host's probe output is incomplete")
    uid_lines = sections.get("uid", "0\n0").split()
    version, problem = parse_docker_version(sections.get("docker_version", ""))
    image_ids: dict[str, str | None] = {}
    for line in sections.get("images", "").splitlines():
        if line.strip():
            name, _, image_id = line.strip().partition(" ")
            image_ids[name] = image_id if image_id not in ("", "-") else None
    containers = parse_docker_inspect(sections.get("containers", "")) if version else ()
    return HostFacts(
        home=sections.get("home", "").strip(),
        uid=int(uid_lines[0]),
        gid=int(uid_lines[1]) if len(uid_lines) > 1 else int(uid_lines[0]),
        arch=sections.get("arch", "").strip(),
        docker_version=version,
        docker_problem=problem,
        containers=containers,
        image_ids=image_ids,
        networks=tuple(n for n in sections.get("networks", "").split() if n),
        volumes=tuple(v for v in sections.get("volumes", "").split() if v),
    )


def parse_sha256_list(text: str, root: str) -> dict[str, str]:
    """Parse `sha256sum` lines of files under `root` into {relative path: digest}."""
    digests: dict[str, str] = {}
    prefix = root.rstrip("/") + "/"
    for line in text.splitlines():
        if len(line) < 66 or line[64:66] not in ("  ", " *"):
            continue
        digest, path = line[:64], line[66:]
        if path.startswith(prefix):
            path = path[len(prefix):]
        elif path.startswith("./"):
            path = path[2:]
        digests[path] = digest
    return digests


ARCH_ALIASES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "armhf": "arm",
}


def docker_arch(uname_machine: str) -> str:
    """The Docker platform architecture for `uname -m` output."""
    return ARCH_ALIASES.get(uname_machine.strip(), uname_machine.strip())
