"""`infra flower`: open Flower here, through the SSH connection to the master host."""

from __future__ import annotations

from pathlib import Path

import click

from .options import cluster_file_option, handle_errors, load_cluster_file


@click.command()
@cluster_file_option
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on this machine's 127.0.0.1 to forward from (0: a free one).")
@click.option("--no-browser", is_flag=True, help="Only print the URL; do not open a browser.")
@handle_errors
def flower(cluster_file: Path, port: int, no_browser: bool) -> None:
    """Forward Flower of the master host to this machine, and open it.

    Flower listens on the master host's loopback only (unless the cluster file sets
    roles.master.publish_flower), so nobody on the network reaches it. This forwards a port of
    this machine's 127.0.0.1 to it through infra's SSH connection (as `ssh -L`), prints the URL
    (https, issued by the cluster's CA; http with `tls: false`) and the login's user (the
    password is in the secrets file, never printed), opens the browser, and runs until Ctrl-C
    (exit 0). A master host that cannot be reached, or a Flower that is not running: one line,
    exit 1.

    \b
    Example:
      infra flower -f cluster.yaml
      infra flower -f cluster.yaml --port 5555 --no-browser
    """
    from ..workflows.flower import serve_flower

    cluster = load_cluster_file(cluster_file)
    open_browser = None
    if not no_browser:
        import webbrowser

        open_browser = webbrowser.open
    serve_flower(cluster, port=port, say=click.echo, open_browser=open_browser)
