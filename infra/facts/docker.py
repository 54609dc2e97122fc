"""Why a host's Docker does not answer, told from what the `docker` command printed.

Read from what `docker system dial-stdio` printed, the command that carries infra's Engine API
requests over SSH (`docker version` says the same words). Pure: text in, a reason out.
"""

from __future__ import annotations

NOT_INSTALLED = "Docker is not installed"
NOT_RUNNING = "the Docker engine is not running"
NO_PERMISSION = "the SSH user may not use Docker (not in the 'docker' group)"
NO_ANSWER = "Docker does not answer"

# The shell's exit status for a command it cannot find.
COMMAND_NOT_FOUND = 127

# Phrases that mean the docker client runs but finds no daemon behind the socket. Docker 28+
# says "failed to connect to the docker API at unix:///var/run/docker.sock; check if ... the
# daemon is running: ... no such file or directory"; `dial-stdio` says "failed to open the raw
# stream connection: dial unix /var/run/docker.sock: connect: no such file or directory".
# They are checked before "not installed" because they, too, mention a missing file.
_DAEMON_ABSENT = (
    "cannot connect",
    "failed to connect",
    "daemon running",
    "daemon is running",
    "raw stream connection",
    "dial unix",
    "connection refused",
)
_CLIENT_ABSENT = ("not found", "no such file")


def docker_problem(text: str, exit_code: int | None = None) -> str:
    """The reason, in a user's words, that `docker` failed with this output (and exit status)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    joined = " ".join(lines).lower()
    if "permission denied" in joined:
        return NO_PERMISSION
    if any(phrase in joined for phrase in _DAEMON_ABSENT):
        return NOT_RUNNING
    if exit_code == COMMAND_NOT_FOUND or any(phrase in joined for phrase in _CLIENT_ABSENT):
        return NOT_INSTALLED
    return lines[-1] if lines else NO_ANSWER

