"""The rules every value of the cluster file follows, and how a value is quoted in an error.

Values of the cluster file reach env files (KEY=value lines), labels, the commands `--dry-run` and
error messages show, Docker's API and, as paths, the hosts' shells. The commands quote what they send;
these rules see to it that no value can mean more than it says anyway: no line break, no shell syntax
where a name is expected, no leading '-' that a program would take for an option. Each rule is a
function telling why a value is refused (None: accepted), so the messages say what to fix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic_core import PydanticCustomError

LOCAL = "local"  # the machine running infra: a host of every cluster, with no entry under `hosts`
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,254}$"  # AMQP allows 255; a first '-' reads as an option
GPU_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,99}$"  # an index, or a UUID: GPU-..., MIG-...
# What `celery --app` takes: a dotted module path, optionally `:` and a dotted attribute path.
APP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?::[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?$"


INVALID_VALUE = "infra_invalid_value"  # the type of the errors below; their message is used as it is

# A character that breaks a line or hides text: the C0 controls but tab, DEL, the C1 controls (U+0085
# among them), U+2028 and U+2029 (line breaks to Python's splitlines() and to many editors), and the
# bidirectional overrides and isolates, which make text display in another order than it is read.
# The YAML reader refuses them in the raw text only; escapes ("a\nb", "\0", "\u2028") still make them.
_CONTROL_CHARACTER = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# Docker image references, after the grammar of distribution's `reference` package (what Docker parses
# image names with): [registry/]path[:tag][@digest]. The registry is host[:port], the host a DNS name
# (letters of either case), an IPv4 address or an IPv6 address in brackets; the path is '/'-separated
# components of lowercase letters and digits, joined inside a component by '.', '_', '__' or a run of '-'.
_REGISTRY_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
_REPOSITORY_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")  # Docker refuses it as a name: it would read as an image id
IMAGE_NAME_MAX = 255  # registry and path together (distribution's NameTotalLengthMax)

# Host names: dot-separated labels of letters, digits and '-' (RFC 1123), at most 253 characters, with
# an optional final dot. '_' is accepted too: aliases of ~/.ssh/config often have one, and it means
# nothing to a shell or an env file.
_HOST_NAME_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_NAME_LABEL}(?:\.{_HOST_NAME_LABEL})*\.?")
HOST_NAME_MAX = 253
_IPV6_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # fe80::1%eth0: a network interface name

# SSH user names: POSIX-like, as useradd accepts them (a trailing '$' marks Samba machine accounts).
_SSH_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
SSH_USER_MAX = 32


def invalid_value(reason: str, *, within: tuple = ()) -> PydanticCustomError:
    """A validation error whose message is `reason` as it is. `within` is the key path, below the field
    or model being validated, of the value at fault, so the message names the key itself."""
    # The reason goes into the context, not the template, as a value quoted in it may hold '{...}';
    # the loader's `_pydantic_message` reads it from there. (The context is also substituted into the
    # template in order, `within` first: the rendered message is the reason too.)
    return PydanticCustomError(INVALID_VALUE, "{reason}", {"within": within, "reason": reason})


_Text = TypeVar("_Text", bound="str | None")


def checked(value: _Text, problem_of: Callable[[str], str | None], what: str) -> _Text:
    """`value` if `problem_of` finds nothing wrong with it; else an error: `'value' is not WHAT (why)`."""
    if value is not None:
        problem = problem_of(value)
        if problem:
            raise invalid_value(f"{quoted(value)} is not {what} ({problem})")
    return value


def clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(value: Any) -> str:
    """repr() of a value quoted in an error: one line, clipped to stay readable."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's int-to-str limit (YAML's base 60 makes them: 1:2:3:...)
        text = f"<{type(value).__name__} too large to show>"
    return clipped(text, 60)


def _character(character: str) -> str:
    """A character quoted in a message: repr() escapes the invisible ones; a look-alike of an ASCII
    character (Cyrillic 'о' for 'o') shows its code point."""
    shown = repr(character)
    return shown if character.isascii() or not character.isprintable() else f"{shown} (U+{ord(character):04X})"


def _stray_character(text: str, allowed: str) -> str | None:
    """The first character of `text` that is neither an ASCII letter or digit nor one of `allowed`."""
    for character in text:
        if not (character.isascii() and (character.isalnum() or character in allowed)):
            return character
    return None


def _word_problem(text: str, *, empty: str, program: str, allowed: str) -> str | None:
    """What names and references passed to a program share: not empty, no leading '-' that the
    program would read as an option, only ASCII letters, digits and `allowed`."""
    if not text:
        return empty
    if text.startswith("-"):
        return f"it starts with '-', which {program} would take for an option"
    stray = _stray_character(text, allowed)
    if stray is not None:
        return f"it contains {_character(stray)}"
    return None


def control_character_problem(text: str) -> str | None:
    found = _CONTROL_CHARACTER.search(text)
    return f"contains a control character (U+{ord(found.group()):04X})" if found else None


def strings_in(value: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    """(key path, string) of every string in a field's value, dict keys included. Models are left out:
    each checks its own strings."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from strings_in(item, path + (index,))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key, path + (key,))
            yield from strings_in(item, path + (key,))


def image_reference_problem(reference: str) -> str | None:
    problem = _word_problem(reference, empty="it is empty", program="docker", allowed="._-:/@[]")
    if problem:
        return problem
    if _IMAGE_ID.fullmatch(reference):
        return "64 hex digits are an image id, not a name"
    rest, at, digest = reference.partition("@")
    if at and not _IMAGE_DIGEST.fullmatch(digest):
        return "a digest is 'sha256:' and 64 lowercase hex digits"
    name, tag = rest, None
    if rest.rfind(":") > rest.rfind("/"):  # a ':' after the last '/' starts the tag; one before, a port
        name, _, tag = rest.rpartition(":")
    if tag is not None and not _IMAGE_TAG.fullmatch(tag):
        return "a tag is 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    if len(name) > IMAGE_NAME_MAX:
        return f"names are at most {IMAGE_NAME_MAX} characters"
    first, slash, path = name.partition("/")
    # Docker's rule: the first component names a registry when a path follows and it holds '.' or ':',
    # is 'localhost' or has an uppercase letter; otherwise it is part of the path (`team/image`).
    if slash and (any(c in first for c in ".:[") or first == "localhost" or first != first.lower()):
        problem = _registry_problem(first)
        if problem:
            return problem
    else:
        path = name
    for component in path.split("/"):
        if not _REPOSITORY_COMPONENT.fullmatch(component):
            if "[" in component or "]" in component:
                return "brackets only enclose an IPv6 registry address, as in '[::1]:5000/image'"
            if component != component.lower():
                return "repository names are lowercase"
            if not component:
                return "a name has no empty component: no '//', no '/' at either end"
            return (f"name components such as {quoted(component)} are lowercase letters and digits, "
                    "joined by '.', '_', '__' or '-'")
    return None


def _registry_problem(registry: str) -> str | None:
    host, port = registry, None
    if registry.startswith("["):  # [IPv6]:port
        end = registry.find("]")
        if end < 0:
            return f"the registry {quoted(registry)} opens a '[' it does not close"
        host, after = registry[1:end], registry[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"the registry {quoted(registry)} is not an IPv6 address in brackets"
        if after:
            if not after.startswith(":"):
                return f"the registry {quoted(registry)} is an IPv6 address in brackets, then :port"
            port = after[1:]
    else:
        host, colon, port = registry.partition(":")
        port = port if colon else None
        if not _REGISTRY_HOST.fullmatch(host):
            return f"the registry {quoted(registry)} is not a host name or IPv4 address, with an optional :port"
    if port is not None and not (port.isascii() and port.isdigit()):
        return f"the registry port of {quoted(registry)} is not a number"
    return None


def bind_address_problem(address: str) -> str | None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "Docker publishes ports on addresses, not host names"
    return None


def host_address_problem(address: str) -> str | None:
    if not address:
        return "it is empty"
    if address.startswith("-"):
        return "it starts with '-', which ssh would take for an option"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        pass
    else:
        zone = getattr(ip, "scope_id", None)
        if zone is not None and not _IPV6_ZONE.fullmatch(zone):
            return f"the zone after '%' is a network interface name, not {quoted(zone)}"
        return None
    stray = _stray_character(address, "._-")
    if stray is not None:
        if stray in ":%" and address.count(":") >= 2:
            return "it is not a valid IPv6 address"
        hints = {":": "the SSH port goes under `port`", "@": "the user name goes under `user`",
                 "[": "write an IPv6 address without brackets", "]": "write an IPv6 address without brackets"}
        return hints.get(stray) or f"it contains {_character(stray)}"
    if len(address) > HOST_NAME_MAX:
        return f"host names are at most {HOST_NAME_MAX} characters"
    if all(c.isdigit() or c == "." for c in address):
        return "it is not a valid IPv4 address"
    if not _HOST_NAME.fullmatch(address):
        return ("host names are dot-separated labels of 1 to 63 letters, digits, '-' or '_', "
                "not starting or ending with '-'")
    return None


def ssh_user_problem(user: str) -> str | None:
    problem = _word_problem(user, empty="it is empty; leave the key out for the default", program="ssh",
                            allowed="_.-$")
    if problem:
        return problem
    if len(user) > SSH_USER_MAX:
        return f"user names are at most {SSH_USER_MAX} characters"
    if not _SSH_USER.fullmatch(user):
        return "a user name starts with a letter or '_', and only its last character may be '$'"
    return None


def path_problem(path: str) -> str | None:
    # Any other printable name is a valid folder or file name, and is quoted wherever it is sent.
    if path.startswith("-"):
        return "it starts with '-', which a command would take for an option; write ./-name"
    return None


def mounted_path_problem(path: str) -> str | None:
    """A path under which the project is bind-mounted into containers (`SOURCE:/project:ro`)."""
    if ":" in path:
        return "it contains ':', which separates the parts of a Docker bind mount"
    return path_problem(path)


def project_file_problem(path: str) -> str | None:
    """A file named relative to the project folder, which must stay inside it."""
    if path.startswith("/") or path.startswith("~"):
        return "it names a file of the project folder, relative to it"
    if ".." in path.split("/"):
        return "it names a file of the project folder: no '..'"
    return path_problem(path)
