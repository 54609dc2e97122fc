"""The cluster file: YAML in, validated typed objects out.

Every error names the key path and the file's line (`roles.workers[2].host: unknown host 'c'
(cluster.yaml:14)`) so the user can go straight to it. Validation is pure: nothing is contacted.

- `loader`: the file read as safe YAML, with the line of each key, then validated (`load_cluster`);
- `values`: the rules every value follows (names, addresses, paths, image references);
- `model`, then one module per section: `hosts`, `project`, `roles`, `settings` (ports, images,
  docker, ssh, timeouts) and `cluster_file`, the whole file and its JSON Schema;
- `consistency`: what no single key can tell (known hosts, distinct ports, existing folders);
- `located`: errors naming the key path and the line; `cluster`: the `Cluster` and `Host` infra works with.
"""

from .cluster import Cluster, Host
from .cluster_file import cluster_json_schema
from .loader import MAX_FILE_BYTES, load_cluster, parse_cluster, read_text_file
from .values import LOCAL

__all__ = ["LOCAL", "MAX_FILE_BYTES", "Cluster", "Host", "cluster_json_schema", "load_cluster",
           "parse_cluster", "read_text_file"]
