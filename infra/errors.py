"""One error tree: the CLI turns every InfraError into a one-line message and an exit code."""

import re


class InfraError(Exception):
    """Base of every error infra reports to a user (never shown as a traceback)."""

    exit_code = 1


class ConfigError(InfraError):
    """The cluster file is missing, malformed or inconsistent; nothing was touched."""

    exit_code = 2


class StateError(InfraError):
    """The local state (manifest, secrets) is missing or unreadable."""

    exit_code = 2


class ConnectError(InfraError):
    """A host could not be reached over SSH."""


class RemoteCommandError(InfraError):
    """A command on a host failed."""

    def __init__(self, host: str, argv_text: str, exit_code: int, output: str):
        self.host = host
        self.argv_text = argv_text
        self.returncode = exit_code
        self.output = output
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        super().__init__(f"{host}: `{argv_text}` failed (exit {exit_code}): {last}")


class DockerMissingError(InfraError):
    """Docker is not installed or not running on a host."""


class EngineUnavailableError(InfraError):
    """A host's Docker engine cannot be reached; `problem` says why in a user's words
    ("the Docker engine is not running", "Docker is not installed", ...)."""

    def __init__(self, host: str, problem: str):
        self.host = host
        self.problem = problem
        super().__init__(f"{host}: {problem}")


class HostsFailedError(InfraError):
    """Some hosts failed while others succeeded; the message names each failed host."""

    def __init__(self, action: str, failures: dict[str, BaseException], *, note: str = ""):
        self.failures = failures
        parts = "; ".join(_with_host(host, one_line(err)) for host, err in sorted(failures.items()))
        super().__init__(f"{action} failed on {len(failures)} host(s): {parts}" + (f" — {note}" if note else ""))


def _with_host(host: str, message: str) -> str:
    """`host: message`, without repeating the host when the message already starts with it."""
    return f"{host}: {without_host(host, message)}"


def without_host(host: str, message: str) -> str:
    """The message without a leading `host: ` (for lines already prefixed with the host)."""
    return message[len(host) + 2:] if message.startswith(f"{host}: ") else message


def one_line(err: BaseException) -> str:
    """The first line of an error's message, prefixed by the host name it already carries."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


_URL_CREDENTIALS = re.compile(r"(://)[^@/\s]*@")


def redact(text: str) -> str:
    """Hide `user:password@` in URLs of error messages."""
    return _URL_CREDENTIALS.sub(r"\1****@", text)
