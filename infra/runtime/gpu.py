"""Which GPUs each concurrent run on a GPU worker gets.

A worker container started with `--gpus` sees its devices numbered from 0, whatever their
numbers on the host, so a run is given container-local indexes in CUDA_VISIBLE_DEVICES. The
devices are cut into slots of `per_task` devices each (`gpu_slots`); a run takes a free slot
with an exclusive lock on each of its devices' files (`SlotLocks`), which the worker's
processes share through the container's /tmp and which the kernel releases when a process
dies, so a device is never lost with a crashed run. When every slot is taken, a run waits.

Several worker containers on one host each see the GPUs they were given: give each group its
own devices (`gpus: [0, 1]`, `gpus: [2, 3]`) rather than `all` to each of several containers.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

_DEVICE_NODE = re.compile(r"^nvidia(\d+)$")
LOCK_DIR = "/tmp"
SLOT_POLL_SECONDS = 0.5


class GpuError(Exception):
    """A run asks for more GPUs than its worker has."""


def gpu_slots(device_count: int, per_task: int) -> list[tuple[int, ...]]:
    """The slots of a worker: consecutive groups of `per_task` devices; leftover devices stay idle.

    No GPUs, or `per_task` 0 (the runs share whatever the container has): no slots.
    """
    if device_count <= 0 or per_task <= 0:
        return []
    if per_task > device_count:
        raise GpuError(f"a run asks for {per_task} GPUs, this worker has {device_count}")
    return [tuple(range(start, start + per_task)) for start in range(0, device_count - per_task + 1, per_task)]


def visible_gpu_count(dev_dir: str = "/dev") -> int:
    """The NVIDIA GPUs this container was given: the runtime mounts one /dev/nvidiaN node per device."""
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return 0
    return sum(1 for name in names if _DEVICE_NODE.match(name))


def cuda_visible_devices(slot: tuple[int, ...]) -> str:
    return ",".join(str(device) for device in slot)


@dataclass
class HeldSlot:
    """A slot in use: its devices and the lock descriptors (one per device) that keep it ours."""

    devices: tuple[int, ...]
    fds: list[int]

    def release(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)  # closing the descriptor drops its lock
            except OSError:
                pass
        self.fds = []


class SlotLocks:
    """Exclusive use of one slot at a time per run, across the processes of a container.

    Each device has its own lock file, so runs asking for different numbers of GPUs per task
    still never share a device.
    """

    def __init__(self, slots: list[tuple[int, ...]], lock_dir: str = LOCK_DIR, prefix: str = "infra-gpu"):
        self.slots = slots
        self.lock_dir = lock_dir
        self.prefix = prefix

    def _path(self, device: int) -> str:
        return os.path.join(self.lock_dir, f"{self.prefix}-{device}.lock")

    def try_acquire(self) -> HeldSlot | None:
        """A free slot, locked; None when every slot is taken."""
        for slot in self.slots:
            held = HeldSlot(slot, [])
            try:
                for device in slot:
                    fd = os.open(self._path(device), os.O_RDWR | os.O_CREAT, 0o666)
                    held.fds.append(fd)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.release()
                continue
            return held
        return None

    def acquire(self, should_stop: Callable[[], bool], on_wait: Callable[[], None] | None = None,
                poll: float = SLOT_POLL_SECONDS) -> HeldSlot | None:
        """Wait for a free slot; None when `should_stop` says so first."""
        waited = False
        while True:
            held = self.try_acquire()
            if held is not None:
                return held
            if should_stop():
                return None
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(poll)
