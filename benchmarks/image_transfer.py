"""P6: bytes each host receives when images change (`images.source: ship`), beside whole-image shipping.

It prints figures; it checks nothing. It starts a testbed of three fresh SSH + Docker hosts
(tests/testbed: they hold no image of the cluster and no base image) and a cluster on them with
`images.source: ship` (master on h1, workers on h2 and h3; no `local`). Then, as whole processes:

1. first `infra up`: every image goes to hosts that have none of their layers;
2. `requirements.txt` of the project changes (one package added, from the wheelhouse), `infra up`;
3. `infra up` again, nothing changed.

For each step and host it reads how many bytes the host's network interface received
(`/sys/class/net/eth0/statistics/rx_bytes` inside the testbed host: everything infra sent it,
SSH and commands included) and the image bytes infra reports having sent ("received (N MB)").

The baseline, measured in the same run: what whole-image shipping (`docker save | docker load`,
infra's only way before layers) sends for the same images — the size of `docker save` of the
worker image after step 2, counted from this machine's engine — and the worker image's own size
(compressed, as the registry holds it, and as the engine reports it).

    python benchmarks/image_transfer.py

Needs: root, a running Docker engine, Debian's `docker-registry`, the base image
`infra-base:bookworm` and the wheelhouse `.cache/wheels` (all made or installed by
scripts/run-tests.sh). Traffic stays on loopback and the testbed's addresses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.clusters import sample_project  # noqa: E402
from tests.e2e.test_cluster import TEST_IMAGES as IMAGES  # noqa: E402  the e2e tests' images, built once
from tests.e2e.test_cluster import WHEELHOUSE  # noqa: E402
from tests.testbed import Testbed  # noqa: E402

ADDED_PACKAGE = "humanize"  # in the wheelhouse, and not a dependency of celery[redis]
RECEIVED = re.compile(r"^(\S+)\s+images? .* received \(([\d.]+) MB in ([\d.]+) s\)", re.M)


def cluster_file(folder: Path, testbed: Testbed) -> tuple[Path, Path]:
    h1, h2, h3 = testbed.docker_hosts[:3]
    project = sample_project(folder)
    spec = {
        "name": "p6",
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": "infra-bench-p6"},
        "roles": {"master": {"host": h1.name}, "workers": [
            {"host": h2.name, "containers": 1, "concurrency": 1},
            {"host": h3.name, "containers": 1, "concurrency": 1},
        ]},
        # Images of its own (infra-p6-ROLE): the change of requirements must not move the e2e tests' tags.
        "images": {key: value for key, value in IMAGES.items() if key not in ("worker", "master", "broker")},
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, project


def received(testbed: Testbed, hosts: list) -> dict[str, int]:
    return {host.name: int(testbed.exec(host, "cat /sys/class/net/eth0/statistics/rx_bytes").strip())
            for host in hosts}


def infra(*args: str) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, cwd=REPO, timeout=3600)
    took = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"`infra {' '.join(args)}` failed with {result.returncode}:\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return took, result.stdout


def step(label: str, testbed: Testbed, hosts: list, path: Path) -> dict:
    before = received(testbed, hosts)
    took, output = infra("up", "-f", str(path))
    after = received(testbed, hosts)
    reported = {host: float(mb) * 1e6 for host, mb, _ in RECEIVED.findall(output)}
    figures = {"step": label, "seconds": took,
               "link_bytes": {h.name: after[h.name] - before[h.name] for h in hosts},
               "image_bytes": {h.name: reported.get(h.name, 0.0) for h in hosts}}
    print(f"{label}: {took:.1f} s; " + ", ".join(
        f"{h.name} {figures['link_bytes'][h.name] / 1e6:.2f} MB on the link, "
        f"{figures['image_bytes'][h.name] / 1e6:.2f} MB of images" for h in hosts), flush=True)
    return figures


def image_sizes(tag: str, state: Path) -> dict[str, int]:
    """The image as the engine here reports it, as `docker save` streams it, and as the registry holds it."""
    size = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag], check=True,
                              capture_output=True, text=True).stdout)
    save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
    saved = 0
    for chunk in iter(lambda: save.stdout.read(1 << 20), b""):
        saved += len(chunk)
    save.wait()
    image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], check=True,
                              capture_output=True, text=True).stdout.strip()
    compressed = registry_size(state / "registry" / "data", "infra/p6-worker", image_id.partition(":")[2][:32])
    return {"engine": size, "docker_save": saved, "registry_compressed": compressed}


def registry_size(root: Path, repository: str, tag: str) -> int:
    """Sum of the compressed layers and config of an image, read from the registry's own storage."""
    base = root / "docker" / "registry" / "v2"
    link = base / "repositories" / repository / "_manifests" / "tags" / tag / "current" / "link"
    digest = link.read_text().strip().partition(":")[2]
    manifest = json.loads((base / "blobs" / "sha256" / digest[:2] / digest / "data").read_bytes())
    return sum(int(item["size"]) for item in [manifest["config"], *manifest["layers"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    if not WHEELHOUSE.is_dir():
        raise SystemExit("run scripts/make-wheelhouse.sh .cache/wheels first (scripts/run-tests.sh does)")
    if shutil.which("docker-registry") is None:
        raise SystemExit("install Debian's docker-registry first (apt-get install docker-registry)")

    work = Path(tempfile.mkdtemp(prefix="infra-bench-p6-"))
    steps = []
    try:
        with Testbed.start(hosts=3, prefix=f"infra-bench-p6-{os.getpid()}") as testbed:
            hosts = testbed.docker_hosts[:3]
            path, project = cluster_file(work, testbed)
            try:
                steps.append(step("first up, fresh hosts", testbed, hosts, path))
                full = image_sizes("infra-p6-worker:latest", work / "state" / "p6")
                requirements = project / "requirements.txt"
                requirements.write_text(requirements.read_text() + f"{ADDED_PACKAGE}\n")
                steps.append(step(f"requirements.txt + {ADDED_PACKAGE}", testbed, hosts, path))
                changed = image_sizes("infra-p6-worker:latest", work / "state" / "p6")
                steps.append(step("up again, no change", testbed, hosts, path))
            finally:
                subprocess.run([sys.executable, "-m", "infra", "clean", "-f", str(path), "--files", "--volumes"],
                               capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"worker image: {full['engine'] / 1e6:.1f} MB in the engine, {full['registry_compressed'] / 1e6:.1f} MB "
          f"compressed in the registry; `docker save` of it: {full['docker_save'] / 1e6:.1f} MB")
    print(f"after the change, whole-image shipping would send each worker host {changed['docker_save'] / 1e6:.1f} MB "
          f"(docker save of the new worker image), and the master host that and the master image")
    print()
    print(f"{'step':32} {'host':>12} {'link MB':>9} {'link / worker image':>20} {'images MB (infra)':>18} {'s':>7}")
    for figures in steps:
        for host in hosts:
            link = figures["link_bytes"][host.name]
            print(f"{figures['step']:32} {host.name:>12} {link / 1e6:9.2f} {link / full['registry_compressed']:20.1%} "
                  f"{figures['image_bytes'][host.name] / 1e6:18.2f} {figures['seconds']:7.1f}")
    print()
    print(json.dumps({"worker_image": full, "worker_image_after_change": changed, "steps": steps}))


if __name__ == "__main__":
    main()
