"""Reading the output of a probe script: one marker line per section, then that section's output.

Probes (`FACTS_SCRIPT`, bootstrap's `PROBE_SCRIPT`) ask a host many things in one round trip;
each prints `MARKER` + a section name on a line of its own before one answer.
"""

from __future__ import annotations


def split_sections(output: str, marker: str) -> dict[str, str]:
    """{section name: its output} in the order printed; text before the first marker is ignored.

    Only the blank lines around a section are dropped (the marker is printed after a newline
    of its own); its text stays as printed. A name printed twice keeps its last output.
    """
    sections: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for line in output.splitlines():
        if line.startswith(marker):
            if current is not None:
                sections[current] = "\n".join(lines).strip("\n")
            current, lines = line[len(marker):].strip(), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        sections[current] = "\n".join(lines).strip("\n")
    return sections


def last_line(text: str, default: str = "no output") -> str:
    """The last non-blank line of a command's output, stripped: usually the answer, or why it failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else default
