"""Sending the images built here to the hosts (`images.source: ship`), by layers.

`ImageSender` starts the registry on this machine once per `up` that has images to send, pushes
the images there, and lets each host's engine pull through its own SSH connection
(`infra.transport.registry`): a host fetches only the layers it lacks. Where that cannot work (no
`docker-registry` here, a host's sshd that refuses forwarding) the image goes whole, as
`docker save | docker load` through the Engine API, and a warning says why.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

from ..commands.engine import PullImage, PushImage, TagImage, UntagImage
from ..config import Cluster
from ..errors import InfraError
from ..transport.connection import Connection
from ..transport.registry import LocalRegistry, RegistryUnavailable
from ..ui.reporter import Reporter

if TYPE_CHECKING:
    from ..engine.api import Engine

REFRESH_INTERVAL = 0.2  # seconds between two updates of the progress bars


@dataclass(frozen=True)
class ShippedImage:
    tag: str  # the cluster's name of the image (`cluster.image_tag(role)`)
    repository: str  # its name in the registry here
    image_id: str


@dataclass
class HostTransfer:
    """What one host receives: bytes so far, and the compressed size of the layers it asked for."""

    host: str
    expected: int = 0
    received_before: int = 0  # images already sent over a closed tunnel
    forward: object | None = None  # the open RemoteForward, whose count runs

    @property
    def received(self) -> int:
        return self.received_before + (self.forward.received if self.forward is not None else 0)


class TransferBars:
    """One bar per host while images travel (bytes, rate, time left), when a terminal watches."""

    def __init__(self, reporter: Reporter):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        enabled = not reporter.quiet and reporter.console.is_terminal
        self._progress = Progress(TextColumn("[bold]{task.description:<12}[/bold] images"), BarColumn(),
                                  DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                  console=reporter.console, disable=not enabled, transient=True)
        self._enabled = enabled
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple[object, HostTransfer]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TransferBars":
        if self._enabled:
            self._progress.start()
            self._thread = threading.Thread(target=self._refresh, name="infra-transfer-bars", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._progress.stop()

    def watch(self, transfer: HostTransfer) -> None:
        with self._lock:
            if transfer.host not in self._tasks:
                self._tasks[transfer.host] = (self._progress.add_task(transfer.host, total=None), transfer)

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            with self._lock:
                tasks = list(self._tasks.values())
            for task, transfer in tasks:
                total = max(transfer.expected, transfer.received) or None
                self._progress.update(task, completed=transfer.received, total=total)


class ImageSender:
    """Sends images from this machine's engine to hosts: through the registry here when it can."""

    def __init__(self, cluster: Cluster, local: Connection, reporter: Reporter, images: list[ShippedImage]):
        self.cluster = cluster
        self.local = local
        self.reporter = reporter
        self.images = {image.tag: image for image in images}
        self.registry: LocalRegistry | None = None
        self.bars = TransferBars(reporter)
        self._layer_sizes: dict[str, dict[str, int]] = {}  # tag -> the registry's sizes, read once after the push
        # The push runs while the hosts receive the project's files; hosts wait for it to end.
        self._pushed = threading.Event()
        self._push_error: BaseException | None = None
        self._pusher: threading.Thread | None = None

    def __enter__(self) -> "ImageSender":
        registry = LocalRegistry(self.cluster.registry_dir)
        try:
            registry.start()  # here, in the thread that lives as long as infra (see LocalRegistry.start)
        except RegistryUnavailable as exc:
            self.reporter.warn(str(exc))
            self._pushed.set()
        else:
            self.registry = registry
            self._pusher = threading.Thread(target=self._push_all, name="infra-push", daemon=True)
            self._pusher.start()
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)
        if self._pusher is not None and exc[0] is None:  # after an error or Ctrl-C, nobody waits for it
            self._pusher.join()
        if self.registry is not None:
            self.registry.stop()
            if exc[0] is None and self._push_error is None:
                self._prune()

    def _prune(self) -> None:
        """Keep only the images just sent: the store does not grow with every change."""
        keep: dict[str, set[str]] = {}
        for image in self.images.values():
            keep.setdefault(image.repository, set()).add(_registry_tag(image))
        try:
            self.registry.prune(keep)
        except (OSError, subprocess.SubprocessError) as exc:
            self.reporter.warn(f"local: the registry's old layers in {self.registry.storage} were not removed "
                               f"({' '.join(str(exc).split())})")

    def _push_all(self) -> None:
        try:
            self._push_images()
        except BaseException as exc:  # handed to every host that waits for the images
            self._push_error = exc
        finally:
            self._pushed.set()

    def _push_images(self) -> None:
        """Into the registry here; layers it has already are not pushed again."""
        engine = self.local.engine
        for image in self.images.values():
            started = time.monotonic()
            ref = self.registry.ref(image.repository, _registry_tag(image))
            engine.apply(TagImage(image.image_id, ref))
            try:
                engine.apply(PushImage(ref, login=self.registry.login))
            finally:
                engine.apply(UntagImage(ref))
            self._layer_sizes[image.tag] = self.registry.layer_sizes(image.repository, _registry_tag(image))
            self.reporter.host("local", f"image {image.tag} ready to send ({time.monotonic() - started:.1f} s)",
                               style="dim")

    def send(self, conn: Connection, tags: list[str]) -> int:
        """Put these images on the host; returns the bytes it received."""
        self._pushed.wait()
        if self._push_error is not None:
            raise InfraError(f"local: the images could not be made ready to send: {self._push_error}")
        transfer = HostTransfer(conn.host.name)
        forward = None
        if self.registry is not None:
            try:
                forward = conn.forward_remote_port(("127.0.0.1", self.registry.port))
            except Exception as exc:  # refused by the host's sshd (AllowTcpForwarding no), or unsupported
                self.reporter.warn(f"{conn.host.name}: the SSH server refuses port forwarding "
                                   f"({' '.join(str(exc).split()) or type(exc).__name__}), so images are sent whole")
        self.bars.watch(transfer)
        if forward is None:
            for tag in tags:
                transfer.received_before += ship_images(self.local.engine, conn.engine, [tag])
            return transfer.received
        transfer.forward = forward
        try:
            for tag in tags:
                self._pull(conn, tag, forward.port, transfer)
        finally:
            forward.close()
            transfer.received_before, transfer.forward = transfer.received, None
        return transfer.received

    def _pull(self, conn: Connection, tag: str, port: int, transfer: HostTransfer) -> None:
        image = self.images[tag]
        registry_tag = _registry_tag(image)
        sizes = self._layer_sizes[tag]
        ref = self.registry.ref(image.repository, registry_tag, port=port)

        def on_line(line: str) -> None:
            layer, _, status = line.partition(": ")
            if status == "Pulling fs layer":  # one the host lacks ("Already exists" for the others)
                transfer.expected += sizes.get(layer, 0)

        answer = conn.engine.apply(PullImage(ref, login=self.registry.login), on_line=on_line)
        if answer != image.image_id:
            raise InfraError(f"{conn.host.name}: the image pulled for {tag} is {answer}, not {image.image_id} "
                             f"as built here")
        conn.engine.apply(TagImage(ref, tag))
        conn.engine.apply(UntagImage(ref))


def _registry_tag(image: ShippedImage) -> str:
    """Images are named by their id in the registry: a tag there never changes what it names."""
    return image.image_id.partition(":")[2][:32] or image.image_id


def ship_images(source: Engine, target: Engine, tags: list[str]) -> int:
    """Copy images from one engine to another (`docker save | docker load`, through the Engine API).

    The tar stream passes through in chunks as the target takes them, never whole in
    memory. Returns the number of bytes sent.
    """
    from ..commands.engine import LoadImages, SaveImages

    sent = 0

    def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal sent
        for chunk in chunks:
            sent += len(chunk)
            yield chunk

    target.load(LoadImages(), counted(source.save(SaveImages(tuple(tags)))))
    return sent
