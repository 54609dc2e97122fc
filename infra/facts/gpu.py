"""A host's NVIDIA GPUs, as `nvidia-smi --query-gpu` lists them (nothing where it is not installed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int | None
    utilization: int | None  # percent, as the driver last measured it

    def describe(self) -> str:
        memory = f" {self.memory_mib // 1024} GiB" if self.memory_mib else ""
        busy = f" {self.utilization}%" if self.utilization is not None else ""
        return f"{self.index}: {self.name}{memory}{busy}"


def _number(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_gpu_query(text: str) -> list[Gpu]:
    """Lines `index, name, memory.total, utilization.gpu` (csv, noheader, nounits); others are skipped."""
    gpus = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        gpus.append(Gpu(int(parts[0]), parts[1], _number(parts[2]), _number(parts[3])))
    return gpus


def summarize(gpus: list[Gpu]) -> str:
    """`2× NVIDIA A100 (3%, 97%)` for the status table; `-` for none."""
    if not gpus:
        return "-"
    names = sorted({gpu.name for gpu in gpus})
    busy = ", ".join(f"{gpu.utilization}%" if gpu.utilization is not None else "?" for gpu in gpus)
    return f"{len(gpus)}× {' + '.join(names)} ({busy})"
