"""Manual use of the testbed.

    python -m tests.testbed up --hosts 3 --fresh 1     # start, print addresses, keep running
    ssh -F .testbed/infra-tb-manual/ssh_config h1       # log in
    python -m tests.testbed status
    python -m tests.testbed down                       # remove containers, volumes, network

State (key, ssh_config, known_hosts, hosts.json) lives in DIR/PREFIX (default .testbed/infra-tb-manual).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .testbed import Host, Testbed, TestbedError, _docker, _ssh_run, remove_leftovers


def _workdir(args) -> Path:
    return Path(args.dir).resolve() / args.prefix


def cmd_up(args) -> int:
    began = time.monotonic()
    tb = Testbed.start(
        hosts=args.hosts, fresh=args.fresh, unsupported=args.unsupported,
        prefix=args.prefix, workdir=_workdir(args), timeout=args.timeout, keep=True,
    )
    print(f"testbed {args.prefix} up in {time.monotonic() - began:.1f}s on {tb.network} ({tb.subnet})")
    for host in tb.hosts:
        print(f"  {host.name:<14} {host.kind:<12} {host.user}@{host.address}:{host.port}")
    print(f"key:        {tb.key_path}")
    print(f"ssh config: {tb.ssh_config_path}   (ssh -F {tb.ssh_config_path} {tb.hosts[0].name})")
    print(f"state:      {tb.workdir / 'hosts.json'}")
    print()
    print(tb.cluster_hosts_yaml(), end="")
    return 0


def cmd_status(args) -> int:
    state_file = _workdir(args) / "hosts.json"
    if not state_file.exists():
        print(f"no testbed {args.prefix} (no {state_file})")
        return 1
    state = json.loads(state_file.read_text())
    print(f"testbed {state['prefix']} on {state['network']} ({state['subnet']})")
    healthy = True
    for h in state["hosts"]:
        proc = _docker("inspect", "--format", "{{.State.Status}}", h["container"], check=False, timeout=30)
        status = proc.stdout.decode().strip() or "missing"
        detail = ""
        if status == "running":
            host = Host(h["name"], h["kind"], h["container"], h["address"], h["user"], h["port"], Path(h["key"]), "")
            try:
                cmd = "docker info --format 'docker {{.ServerVersion}}'" if h["kind"] == "docker" else "echo ssh ok"
                rc, out = _ssh_run(host, cmd, timeout=5)
                detail = out if rc == 0 else f"command failed: {out}"
                healthy &= rc == 0
            except Exception as exc:
                detail, healthy = f"ssh: {exc}", False
        else:
            healthy = False
        print(f"  {h['name']:<14} {h['kind']:<12} {h['user']}@{h['address']:<15} {status:<8} {detail}")
    return 0 if healthy else 1


def cmd_down(args) -> int:
    removed = remove_leftovers(args.prefix)
    shutil.rmtree(_workdir(args), ignore_errors=True)
    print(f"removed {len(removed)} object(s): {' '.join(removed) or '-'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="infra-tb-manual", help="names and labels of everything made")
    parser.add_argument("--dir", default=".testbed", help="where the key and ssh config are kept")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a testbed and leave it running")
    up.add_argument("--hosts", type=int, default=3, help="Docker hosts (default 3)")
    up.add_argument("--fresh", type=int, default=0, help="fresh hosts without Docker")
    up.add_argument("--unsupported", type=int, default=0, help="fresh hosts claiming an unsupported OS")
    up.add_argument("--timeout", type=float, default=180.0)
    up.set_defaults(func=cmd_up)
    sub.add_parser("status", help="show the hosts and whether they answer").set_defaults(func=cmd_status)
    sub.add_parser("down", help="remove the testbed's containers, volumes and network").set_defaults(func=cmd_down)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
