"""Commands of `infra volunteer`: broker and result-backend users, the files of the join endpoint.

Broker users are made with `rabbitmqctl import_definitions` of a file holding the password's
salted hash (rabbitmqctl takes a clear password only on its command line); Redis ACL users with
the password's sha256 (`#HEX`), from inside the results container, the one that holds the result
backend's administrator's URL (a file of its secrets folder). No secret is ever on a command line.
"""

from __future__ import annotations

import json
import posixpath
import shlex

from ..names import container_name
from .engine import Exec

# `python -c RESULTS_USERS URL_FILE WANT_JSON DROP_JSON` in the results container: sets the users of WANT
# ({user: [rules]}, each reset first) and deletes those of DROP (Redis then closes their
# connections). Prints one JSON line: the users Redis has now.
RESULTS_USERS = r"""
import json, os, sys
import redis
with open(sys.argv[1], encoding="utf-8") as handle:
    url = handle.read().strip()
want, drop = json.loads(sys.argv[2]), json.loads(sys.argv[3])
r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
for user, rules in want.items():
    r.execute_command("ACL", "SETUSER", user, "reset", *rules)
for user in drop:
    r.execute_command("ACL", "DELUSER", user)
print(json.dumps({"users": sorted(u.decode() if isinstance(u, bytes) else u for u in r.execute_command("ACL", "USERS"))}))
"""


def import_broker_definitions(cluster: str, path_in_container: str) -> Exec:
    return Exec(container_name(cluster, "broker"), ("rabbitmqctl", "import_definitions", path_in_container))


def delete_broker_user(cluster: str, user: str) -> Exec:
    return Exec(container_name(cluster, "broker"), ("rabbitmqctl", "delete_user", user))


def close_user_connections(cluster: str, user: str) -> Exec:
    """Close every connection of the user now: its unacknowledged tasks go back to the queue."""
    return Exec(container_name(cluster, "broker"),
                ("rabbitmqctl", "close_all_user_connections", user, "revoked by the cluster"))


def results_users(cluster: str, admin_url_file: str, want: dict[str, list[str]], drop: list[str]) -> Exec:
    """Set and delete volunteers' Redis users, as the administrator whose URL is in `admin_url_file`."""
    return Exec(container_name(cluster, "results"),
                ("python", "-c", RESULTS_USERS, admin_url_file, json.dumps(want, sort_keys=True),
                 json.dumps(sorted(drop))))


def save_worker_image(image_id: str, folder: str, arch: str, base_image: str) -> list[str]:
    """`docker save` the worker image into the endpoint's files (gzip), unless that image is there already.

    Saved by id, so that `docker load` on a volunteer's machine takes no tag of its own; then
    image.env tells the endpoint (and the join script) its id, architecture and base image.
    Prints `unchanged` or `saved`.
    """
    f = shlex.quote(folder)
    env = shlex.quote(posixpath.join(folder, "image.env"))
    tar = shlex.quote(posixpath.join(folder, "image.tar"))
    gz = shlex.quote(posixpath.join(folder, "image.tar.gz"))
    i = shlex.quote(image_id)
    values = shlex.quote(f"IMAGE_ID={image_id}\nIMAGE_ARCH={arch}\nBASE_IMAGE={base_image}\n")
    return ["sh", "-c", (
        f"umask 077 && mkdir -p {f} && chmod 700 {f} && "
        f"if [ -f {gz} ] && [ \"$(sed -n 's/^IMAGE_ID=//p' {env} 2>/dev/null)\" = {i} ]; then echo unchanged; exit 0; fi; "
        f"rm -f {tar} {gz}.tmp && docker save {i} > {tar} && gzip -1 -c {tar} > {gz}.tmp && rm -f {tar} && "
        f"mv -f {gz}.tmp {gz} && printf %s {values} > {env}.tmp && mv -f {env}.tmp {env} && echo saved")]


def read_small_file(path: str) -> list[str]:
    """The file's content, or nothing when it is missing."""
    return ["sh", "-c", f"cat {shlex.quote(path)} 2>/dev/null || true"]


def remove_file(path: str) -> list[str]:
    return ["rm", "-f", "--", path]


def make_private_folder(path: str) -> list[str]:
    """A folder only its owner (the SSH user, as whom the endpoint runs) may enter; its content is kept."""
    q = shlex.quote(path)
    return ["sh", "-c", f"mkdir -p {q} && chmod 700 {q}"]


NODE_USERS_MARKER = "--- channels"  # between the two answers (`facts.status.parse_node_users`)


def node_users(cluster: str) -> Exec:
    """Who consumes each queue of the cluster's vhost, and each channel's user: with both, `status` tells
    which broker user holds a Celery node's pidbox queue (the node's name is only the worker's claim)."""
    script = (f"rabbitmqctl list_consumers --quiet --vhost {shlex.quote(cluster)} --formatter json queue_name "
              f"channel_pid && echo && echo '{NODE_USERS_MARKER}' && "
              "rabbitmqctl list_channels --quiet --formatter json pid user")
    return Exec(container_name(cluster, "broker"), ("sh", "-c", script))
