"""Reading the cluster file: safe YAML, with the line of every key, validated by the models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .cluster import Cluster
from .cluster_file import ClusterFile
from .consistency import check_consistency
from .located import Located, format_path
from .values import INVALID_VALUE, clipped, quoted

# Limits far above any real cluster file (a few kB, a few hundred values, 5 levels deep) that keep
# a hostile or mistaken file from hanging or crashing the loader: the composer recurses once per
# level, and every value costs time and memory.
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 64
MAX_NODES = 100_000

# What PyYAML's pure-Python constructor (and, for a few inputs, its scanner) raises on hostile
# scalars instead of a YAMLError: `2024-13-45` (read as a date), `!!int x`, `!!bool x`,
# `!!timestamp x`, an integer of more than 4,300 digits...
_PYYAML_CRASHES = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


class _ClusterFileLoader(yaml.SafeLoader):
    """SafeLoader that refuses, event by event before any node is composed, what could make loading
    explode: anchors and aliases (an alias repeats a whole subtree, so a few hundred bytes can stand
    for billions of values), nesting deeper than MAX_DEPTH and more than MAX_NODES values.
    """

    def __init__(self, text: str, filename: str):
        super().__init__(text)
        self.filename = filename
        self.depth = 0
        self.node_count = 0

    def get_event(self) -> yaml.Event:
        # The composer takes every event through here, and a node's start event before its children.
        event = super().get_event()
        if isinstance(event, yaml.NodeEvent):
            self.node_count += 1
            if event.anchor is not None:
                sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
                self._refuse(event, "anchors and aliases (&name, *name) are not allowed in a cluster file "
                                    f"(found {sign}{clipped(event.anchor, 40)})")
            if self.node_count > MAX_NODES:
                self._refuse(event, f"more than {MAX_NODES:,} values are not allowed in a cluster file")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    self._refuse(event, f"nesting deeper than {MAX_DEPTH} levels is not allowed in a cluster file")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            self.depth -= 1
        return event

    def _refuse(self, event: yaml.Event, message: str) -> NoReturn:
        raise ConfigError(f"{self.filename}:{event.start_mark.line + 1}: {message}")

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _PYYAML_CRASHES as exc:
            # Raised for the innermost node first: the scalar that could not be read, with its line.
            what = quoted(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            tag = clipped(node.tag.replace("tag:yaml.org,2002:", "!!"), 40)
            # A KeyError's text is only the key, which `what` already shows.
            detail = "" if isinstance(exc, KeyError) else f": {clipped(str(exc), 100)}"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what} as {tag}{detail}", node.start_mark) from None


def _read_yaml(text: str, filename: str) -> tuple[Any, dict[tuple, int]]:
    """The document's data and the 1-based line of each key path; any failure is a one-line ConfigError."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{filename}: files over {MAX_FILE_BYTES:,} bytes are not allowed as cluster files "
                          "(is this the right file?)")
    loader = None
    try:
        loader = _ClusterFileLoader(text, filename)  # refuses non-printable characters (NUL...) at once
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(f"{filename}: the file is empty (start from config.example.yaml)")
        # Before construction, which silently keeps the last of duplicate keys.
        lines = _key_lines(root, filename)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError(_invalid_yaml_message(exc, text, filename)) from None
    except _PYYAML_CRASHES as exc:
        where = f"{filename}:{loader.get_mark().line + 1}" if loader else filename
        raise ConfigError(f"{where}: invalid YAML: {clipped(str(exc), 100)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _invalid_yaml_message(exc: yaml.YAMLError, text: str, filename: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        # Raised for the whole text before scanning: it knows the position, not the line.
        line = text.count("\n", 0, exc.position) + 1
        return f"{filename}:{line}: invalid YAML: character #x{exc.character:04x} is not allowed in YAML text"
    mark = getattr(exc, "problem_mark", None)
    where = f"{filename}:{mark.line + 1}" if mark else filename
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and problem.startswith("but "):  # "but found another document" needs what was expected
        problem = f"{context}, {problem}"
    return f"{where}: invalid YAML: {clipped(problem, 200)}"


def _key_lines(root: yaml.Node, filename: str) -> dict[tuple, int]:
    """Map every key path of a composed document to its 1-based line, refusing duplicate keys (naming
    both lines). Recursion is bounded by MAX_DEPTH, and no alias can make a node appear twice.
    """
    lines: dict[tuple, int] = {(): root.start_mark.line + 1}

    def visit(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a complex key: construction refuses it as invalid YAML
                key, line = key_node.value, key_node.start_mark.line + 1
                if (key_node.tag, key) in first_lines:
                    raise ConfigError(f"{format_path(path + (key,))}: duplicate key "
                                      f"(also at line {first_lines[(key_node.tag, key)]}) ({filename}:{line})")
                first_lines[(key_node.tag, key)] = line
                lines[path + (key,)] = line
                visit(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[path + (index,)] = item.start_mark.line + 1
                visit(item, path + (index,))

    visit(root, ())
    return lines


def _pydantic_message(err: dict) -> str:
    kind = err["type"]
    if kind == INVALID_VALUE:
        return err["ctx"]["reason"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch" and err["loc"] == ("name",):
        return "must be lowercase letters, digits and '-', at most 40 characters, e.g. 'lab'"
    if kind == "string_pattern_mismatch" and err["loc"] == ("project", "app"):
        return (f"{quoted(err['input'])} is not a Python module path (a module such as 'wordcount' or "
                "'proj.tasks', or module:attribute such as 'proj.tasks:app')")
    message = err["msg"]
    if kind.endswith("_type") or kind in ("literal_error",):
        got = err.get("input")
        if not isinstance(got, (dict, list)):
            message += f", got {quoted(got)}"
    return message[0].lower() + message[1:] if message else kind


def read_text_file(path: str | os.PathLike, kind: str, missing: str) -> str:
    """A small UTF-8 file infra reads (a cluster or parameters file), or ConfigError in one line.

    `kind` names it in errors ("cluster file"); `missing` is the message for a file that is not there.
    """
    filename = str(path)
    try:
        with Path(path).expanduser().open("rb") as stream:
            # One byte over the limit is enough to refuse; never read a huge file (or /dev/zero) whole.
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{filename}: {missing}") from None
    except IsADirectoryError:
        raise ConfigError(f"{filename}: is a folder, not a {kind}") from None
    except OSError as exc:
        raise ConfigError(f"{filename}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{filename}: files over {MAX_FILE_BYTES:,} bytes are not allowed as {kind}s "
                          "(is this the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{filename}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          "save the file as UTF-8") from None


def load_cluster(path: str | os.PathLike) -> Cluster:
    """Read and validate a cluster file. Raises ConfigError with a one-line, located message."""
    text = read_text_file(path, "cluster file", "no such file (write one from config.example.yaml)")
    return parse_cluster(text, filename=str(path), base_dir=Path(path).expanduser().resolve().parent)


def parse_cluster(text: str, *, filename: str = "cluster.yaml", base_dir: Path | None = None) -> Cluster:
    base_dir = base_dir or Path.cwd()
    data, lines = _read_yaml(text, filename)
    if data is None:
        raise ConfigError(f"{filename}: the file is empty (start from config.example.yaml)")
    located = Located(filename, lines)
    if not isinstance(data, dict):
        raise located.error((), "the cluster file must be a mapping of keys (name, hosts, project, roles, ...)")
    data = _yaml_lists_to_tuples(data)
    try:
        spec = ClusterFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A rule checking a whole list or model names the key inside it that holds the value at fault.
        within = tuple((first.get("ctx") or {}).get("within", ())) if first["type"] == INVALID_VALUE else ()
        raise located.error(first["loc"] + within, _pydantic_message(first)) from None
    return check_consistency(spec, located, Path(filename), base_dir)


def _yaml_lists_to_tuples(value: Any) -> Any:
    # Strict mode wants tuples for tuple fields; YAML gives lists.
    if isinstance(value, dict):
        return {k: _yaml_lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_yaml_lists_to_tuples(v) for v in value)
    return value
