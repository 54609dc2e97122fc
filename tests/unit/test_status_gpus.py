"""`infra status` and GPUs: each host's as `nvidia-smi` lists them, a column only when some host has any.

No GPU on the machines these tests run on: `nvidia-smi`'s answer is written out here, in the form
NVIDIA documents for `--query-gpu ... --format=csv,noheader,nounits`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

from infra.commands.files import GPU_QUERY, gpu_query
from infra.facts.gpu import Gpu, parse_gpu_query, summarize
from infra.ui.status import render_table, to_json
from tests.unit.test_status import cluster, healthy_observations, healthy_status  # noqa: F401 (fixture)

NVIDIA_SMI = "0, NVIDIA A100-SXM4-40GB, 40960, 3\n1, NVIDIA A100-SXM4-40GB, 40960, 97\n"


def test_the_query_asks_nvidia_smi_only_where_it_is_installed():
    assert gpu_query() == ["sh", "-c", GPU_QUERY]
    assert GPU_QUERY.startswith("command -v nvidia-smi >/dev/null 2>&1 || exit 0; ")
    # Here there is no nvidia-smi: nothing, and no failure.
    done = subprocess.run(gpu_query(), capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert (done.returncode, done.stdout) == (0, "")


def test_nvidia_smi_lines_are_read_and_noise_is_skipped():
    assert parse_gpu_query(NVIDIA_SMI + "NVIDIA-SMI has failed\n2, Tesla T4, [N/A], [Not Supported]\n") == [
        Gpu(0, "NVIDIA A100-SXM4-40GB", 40960, 3), Gpu(1, "NVIDIA A100-SXM4-40GB", 40960, 97),
        Gpu(2, "Tesla T4", None, None)]
    assert parse_gpu_query("") == []
    assert summarize(parse_gpu_query(NVIDIA_SMI)) == "2× NVIDIA A100-SXM4-40GB (3%, 97%)"
    assert summarize([]) == "-"
    assert Gpu(0, "T4", 15360, 5).describe() == "0: T4 15 GiB 5%"


def test_hosts_show_their_gpus_in_json_and_a_gpus_column(cluster, tmp_path):  # noqa: F811
    observations = healthy_observations()
    observations["h2"] = replace(observations["h2"], gpus=parse_gpu_query(NVIDIA_SMI))
    observations["h3"] = replace(observations["h3"], gpus=[])
    status = healthy_status(cluster, tmp_path, observations=observations)
    hosts = {h["name"]: h for h in to_json(status)["hosts"]}
    assert hosts["h2"]["gpus"] == [
        {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "memory_mib": 40960, "utilization": 3},
        {"index": 1, "name": "NVIDIA A100-SXM4-40GB", "memory_mib": 40960, "utilization": 97}]
    assert hosts["h3"]["gpus"] == [] and hosts["h1"]["gpus"] is None
    json.dumps(to_json(status))
    table = render_table(status).splitlines()
    header = next(line for line in table if line.strip().startswith("host "))
    assert header.split() == ["host", "address", "roles", "state", "gpus"]
    h2 = next(line for line in table if line.strip().startswith("h2 "))
    assert h2.rstrip().endswith("2× NVIDIA A100-SXM4-40GB (3%, 97%)")


def test_a_cluster_without_gpus_has_no_gpus_column(cluster, tmp_path):  # noqa: F811
    table = render_table(healthy_status(cluster, tmp_path))
    header = next(line for line in table.splitlines() if line.strip().startswith("host "))
    assert header.split() == ["host", "address", "roles", "state"]
