"""Read the facts of many hosts at once: the shell probe and the engine's answers, per host."""

from __future__ import annotations

from pathlib import Path

from ..commands.engine import (
    EngineVersion,
    InspectImages,
    ListContainers,
    ListNetworks,
    ListVolumes,
)
from ..commands.files import host_probe
from ..config import Cluster, Host
from ..errors import DockerMissingError, EngineUnavailableError, InfraError
from ..facts.containers import parse_container_list, parse_image_inspect
from ..facts.host import HostFacts, host_facts, parse_host_probe
from ..facts.sections import last_line
from ..transport.connection import Connection
from ..transport.pool import ConnectionPool, GroupResult, run_concurrently

PROBE_TIMEOUT = 60


def image_refs(cluster: Cluster) -> tuple[str, ...]:
    """The images whose presence (and build fingerprint) the plans look at: the base and the cluster's three."""
    return (cluster.spec.images.base, *(cluster.image_tag(role) for role in ("worker", "master", "broker")))


def read_host_facts(conn: Connection, cluster: Cluster) -> HostFacts:
    """One host's facts. An engine that does not answer is a fact (`docker_version` None), not an error."""
    probe = conn.run(host_probe(), timeout=PROBE_TIMEOUT, check=False)
    try:
        identity = parse_host_probe(probe.stdout)
    except ValueError as exc:
        raise InfraError(f"{conn.host.name}: could not read the host's state ({exc}): {last_line(probe.output)}") from None
    try:
        engine = conn.engine
        version = engine.query(EngineVersion()).get("Version") or "unknown"
    except EngineUnavailableError as exc:
        return host_facts(identity, None, exc.problem)
    return host_facts(
        identity, version,
        containers=parse_container_list(engine.query(ListContainers(cluster.name))),
        images=parse_image_inspect(engine.query(InspectImages(image_refs(cluster)))),
        networks=engine.query(ListNetworks(cluster.name)),
        volumes=engine.query(ListVolumes(cluster.name)),
    )


def gather_facts(pool: ConnectionPool, cluster: Cluster, hosts: list[Host]) -> GroupResult:
    """Every host's facts, concurrently; a host that fails to answer is a failure of its own."""
    return run_concurrently(hosts, lambda host: read_host_facts(pool[host.name], cluster), key=lambda h: h.name)


def require_docker(facts: dict[str, HostFacts], hosts: list[Host], config_path: Path) -> None:
    missing = [(h.name, facts[h.name].docker_problem) for h in hosts if not facts[h.name].docker_version]
    if missing:
        names = ",".join(name for name, _ in missing)
        detail = "; ".join(f"{name}: {problem}" for name, problem in missing)
        raise DockerMissingError(
            f"{detail} — run `infra bootstrap -f {config_path} --hosts {names}` to install and start it"
        )
