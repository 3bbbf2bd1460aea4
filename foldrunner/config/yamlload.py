"""The strict YAML loader of fold specs: text -> plain data, with the line of every key.

:func:`parse_yaml` reads one document with :class:`StrictLoader`: YAML 1.2 core scalars
(``yes``, ``no``, ``on``, ``off`` stay strings), no duplicate or non-string keys, no merge
keys, and limits on size, aliases, nodes and depth. It never raises for bad YAML: it returns
the data, the line of each key path, and one message per problem, so that
:mod:`foldrunner.config.spec` can report them with the validation's. :func:`read_spec_file` adds
the file's size limit and encoding; :func:`dump_yaml` writes data that reads back equal.

Nothing here knows the spec's models: :mod:`foldrunner.config.spec` builds on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from foldrunner.errors import SpecError

__all__ = [
    "MAX_SPEC_BYTES", "MAX_ALIASES", "MAX_NODES", "MAX_DEPTH", "Loc", "UNREADABLE",
    "LimitExceeded", "StrictLoader", "Dumper", "parse_yaml", "read_spec_file", "dump_yaml",
    "format_problem", "show_value",
]

MAX_SPEC_BYTES = 1 << 20  #: larger spec files are refused before parsing
MAX_ALIASES = 100  #: alias uses allowed in one YAML document
MAX_NODES = 100_000  #: YAML nodes allowed, counting every expansion of an alias
MAX_DEPTH = 32  #: nesting levels allowed in a YAML document

Loc = tuple[Union[str, int], ...]  # a key path, e.g. ("resources", "gpus", 1)


# ---------------------------------------------------------------- messages
def show_value(value: object) -> str:
    """A short, YAML-flavoured rendering of a value for messages."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, (str, int, float)):
        return repr(value)
    return "a mapping" if isinstance(value, Mapping) else "a list" if isinstance(
        value, (list, tuple)) else f"a {type(value).__name__}"


def format_problem(loc: Loc, note: str | None, message: str) -> str:
    """``resources.gpus[1] (note): message``, leaving out what is unknown."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    where = f"{path} ({note})" if path and note else path or note
    return f"{where}: {message}" if where else message


# ---------------------------------------------------------------- the loader
class LimitExceeded(Exception):
    """A YAML document over the alias, node or depth limits."""


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader with YAML 1.2 core scalars and limits on aliases, nodes and depth.

    ``true``/``false`` (also ``True``, ``TRUE``...) are the only booleans: ``yes``, ``no``,
    ``on``, ``off`` stay strings. No sexagesimal numbers (``1:30`` is a string), no
    timestamps, no ``=`` value tag. Integers are decimal, ``0o17`` or ``0x1F``; a decimal
    with a leading zero (``0755``) stays a STRING: YAML 1.1 reads it as octal 493 and YAML
    1.2 as 755, and either would surprise someone. Floats include ``1e-4`` (YAML 1.2).
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = self._nodes = self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> Any:
        line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
        self._aliases += self.check_event(yaml.AliasEvent)
        self._nodes += 1
        if self._aliases > MAX_ALIASES or self._nodes > MAX_NODES:
            raise LimitExceeded(f"line {line}: too many YAML aliases/nodes"
                                 f" (at most {MAX_ALIASES} aliases and {MAX_NODES} nodes)")
        if self._depth >= MAX_DEPTH:
            raise LimitExceeded(f"line {line}: YAML nested deeper than {MAX_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class Dumper(yaml.SafeDumper):
    """A SafeDumper that also quotes strings the strict loader would read as numbers."""


Dumper.add_representer(tuple, yaml.SafeDumper.represent_list)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    return int(str(loader.construct_scalar(node)), 0)


_RESOLVERS = (
    ("null", r"~|null|Null|NULL|", "~nN"), ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?(?:0|[1-9][0-9]*)|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    ("float", r"[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)", "-+0123456789."))
for _tag, _pattern, _first in _RESOLVERS:
    for _cls in (StrictLoader, Dumper) if _tag in ("int", "float") else (StrictLoader,):
        _cls.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(rf"^(?:{_pattern})$"),
                                   list(_first) + ([""] if _tag == "null" else []))
StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


UNREADABLE = object()  # stands for a value the walker reported: validation skips it


class _Walker:
    """Turns composed nodes into plain data, recording the line of every key and item,
    refusing duplicate and non-string keys, and bounding what aliases expand to."""

    def __init__(self, loader: StrictLoader) -> None:
        self.loader, self.nodes = loader, 0
        self.lines: dict[Loc, int] = {}
        self.problems: list[str] = []

    def build(self, node: yaml.Node, loc: Loc, depth: int = 1) -> Any:
        line, self.nodes = node.start_mark.line + 1, self.nodes + 1
        if self.nodes > MAX_NODES:
            raise LimitExceeded(f"too many YAML aliases/nodes: aliases expand past {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise LimitExceeded(f"line {line}: YAML nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node)
            except (yaml.YAMLError, ValueError) as exc:
                why = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else exc
                self.problems.append(format_problem(loc, f"line {line}", f"cannot read this value: {why}"))
                return UNREADABLE
        if node.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
            self.problems.append(format_problem(loc, f"line {line}", f"unsupported YAML tag {node.tag}"))
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[loc + (i,)] = item.start_mark.line + 1
                items.append(self.build(item, loc + (i,), depth + 1))
            return items
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            scalar = isinstance(key_node, yaml.ScalarNode)  # a complex key (`? [a]`) is no string
            key = self.build(key_node, loc, depth + 1) if scalar else None
            if key is UNREADABLE:
                continue
            if not isinstance(key, str) or key == "<<":
                self.problems.append(format_problem(loc, f"line {key_line}", "merge keys (<<) are not supported"
                                          if key == "<<" else f"key {show_value(key)} is not a string"))
            elif key in mapping:
                lines = f"lines {self.lines[loc + (key,)]} and {key_line}"
                self.problems.append(format_problem(loc + (key,), lines, "duplicate key"))
            else:
                self.lines[loc + (key,)] = key_line
                mapping[key] = self.build(value_node, loc + (key,), depth + 1)
        return mapping


def parse_yaml(text: str) -> tuple[Any, dict[Loc, int], list[str]]:
    """Parse one YAML document: (data, the line of each key path, problems)."""
    loader: StrictLoader | None = None
    try:
        loader = StrictLoader(text)
        node = loader.get_single_node()
        walker = _Walker(loader)
        return (None if node is None else walker.build(node, ())), walker.lines, walker.problems
    except LimitExceeded as exc:
        return None, {}, [str(exc)]
    except yaml.YAMLError as exc:
        if not isinstance(exc, yaml.MarkedYAMLError):
            return None, {}, [f"invalid YAML: {' '.join(str(exc).split())}"]
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = "; ".join(filter(None, (exc.context, exc.problem)))
        return None, {}, [f"{where}invalid YAML: {what}"]
    finally:
        if loader is not None:
            loader.dispose()


def read_spec_file(path: Path) -> tuple[Any, dict[Loc, int], list[str]]:
    """Read and parse a spec file; a file that cannot be read raises SpecError at once."""
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            data = stream.read(MAX_SPEC_BYTES + 1) if size <= MAX_SPEC_BYTES else b""
    except FileNotFoundError:
        raise SpecError([f"no such file: {path}"], str(path)) from None
    except OSError as exc:
        raise SpecError([f"cannot read {path}: {exc.strerror or exc}"], str(path)) from None
    if max(size, len(data)) > MAX_SPEC_BYTES:
        raise SpecError([f"spec file is {max(size, len(data))} bytes; the limit is 1 MiB"], str(path))
    try:
        return parse_yaml(data.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError([f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the"
                         " spec as UTF-8"], str(path)) from None

def dump_yaml(data: Any) -> str:
    """``data`` as block-style YAML (flow style for leaf lists) that :func:`parse_yaml`
    reads back equal: strings that look like numbers are quoted, key order is kept."""
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=None)
