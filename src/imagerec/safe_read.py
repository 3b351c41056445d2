"""Reading files that may be damaged or hostile (annotations, config files, run records): text that is not UTF-8,
JSON nested thousands deep, YAML whose aliases expand to billions of nodes, XML with entities, names longer than the
file system allows. Each failure is a UserError naming the file and what to do. Also: names whose bytes are not
UTF-8 as printable text (`printable`), as every output and error line writes them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET
import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from imagerec.errors import UserError

# Nodes a YAML document may hold once its aliases are expanded: an annotation yaml (names, split folders) has a
# few thousand at most, while nine aliases nested nine deep expand to 387 million.
MAX_YAML_NODES = 100_000
# Brackets a YAML document may nest: PyYAML's scanner takes time quadratic in the depth (5,000 levels: 8 s).
MAX_YAML_DEPTH = 100


def unreadable(path: Path, error: OSError) -> UserError:
    """The one line for a file or folder the system will not open (missing, a folder, no permission, a name
    longer than the file system allows, …)."""
    name = str(path) if len(str(path)) <= 200 else f"{str(path)[:200]}…"
    return UserError(f"{name}: cannot be read ({error.strerror or error}); check the path and its permissions")


def is_file(path: Path) -> bool:
    """Whether `path` is a file; a name the system refuses (too long, errno 36) is a UserError, not a crash."""
    try:
        return path.is_file()
    except OSError as error:
        raise unreadable(path, error) from None


def is_dir(path: Path) -> bool:
    """Whether `path` is a folder; a name the system refuses is a UserError, as for `is_file`."""
    try:
        return path.is_dir()
    except OSError as error:
        raise unreadable(path, error) from None


def read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as error:
        raise unreadable(file, error) from None


def read_text(file: Path, *, what: str) -> str:
    """`file` as UTF-8 text (a byte-order mark dropped); `what` the file should be, for the error line."""
    try:
        return read_bytes(file).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{file}: not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}); save {what} as UTF-8"
        ) from None


def load_json(file: Path) -> Any:
    """The JSON document in `file`."""
    text = read_text(file, what="the JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{file}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg}); fix or re-export it"
        ) from None
    except RecursionError:  # json recurses once per level of nesting
        raise UserError(f"{file}: JSON nested too deeply to read; fix or re-export it") from None


def _expanded_size(root: Node) -> int:
    """Nodes in the document with every alias expanded, without expanding them (each node counted once, times
    the number of places it appears); ValueError for a recursive alias."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise ValueError("a recursive alias (an anchor used inside itself)")
        visiting.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        visiting.discard(key)
        sizes[key] = min(total, MAX_YAML_NODES + 1)
        return sizes[key]

    return size(root)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand past MAX_YAML_NODES (a "billion laughs")
    before anything is constructed from them, and brackets nested past MAX_YAML_DEPTH as soon as they are met."""

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 - PyYAML's own signature
        if self.flow_level >= MAX_YAML_DEPTH:
            raise yaml.YAMLError(f"brackets nested more than {MAX_YAML_DEPTH} deep")
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def compose_document(self) -> Node:
        node = super().compose_document()
        try:
            size = _expanded_size(node)
        except ValueError as error:
            raise yaml.YAMLError(str(error)) from None
        if size > MAX_YAML_NODES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_NODES:,} values")
        return node


def load_yaml(file: Path) -> Any:
    """The YAML document in `file`, read with the bounded safe loader."""
    text = read_text(file, what="the YAML file")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{file}{where}: not valid YAML ({error.problem}); fix it") from None
    except yaml.YAMLError as error:
        raise UserError(f"{file}: not valid YAML ({error}); fix it") from None
    except RecursionError:  # the composer recurses once per level of nesting
        raise UserError(f"{file}: YAML nested too deeply to read; fix it") from None


def load_yaml_mapping(file: Path, *, needs: str) -> dict[str, Any]:
    """The mapping in YAML `file`; a UserError saying what the file `needs` when it holds something else."""
    data = load_yaml(file)
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected {needs}; fix it")
    return data


def parse_xml(file: Path) -> Any:
    """The root element of XML `file`, parsed with entity expansion, external entities and DTD fetching refused."""
    try:
        return SafeET.parse(file).getroot()
    except SafeET.ParseError as error:
        line, column = error.position
        reason = str(error).split(":")[0]
        raise UserError(
            f"{file}, line {line}, column {column}: not valid XML ({reason}); fix or re-export it"
        ) from None
    except defusedxml.DefusedXmlException as error:  # entity bombs and external entities (files, URLs)
        raise UserError(
            f"{file}: refused: the XML declares entities or external references ({type(error).__name__}); "
            "annotations need none, remove them"
        ) from None
    except OSError as error:
        raise unreadable(file, error) from None


def printable(path: str | Path) -> str:
    """`path` as text every UTF-8 writer and terminal accepts: bytes of a file name that are not UTF-8 (which
    Python holds as surrogate escapes) become `\\xNN`. Lossy on purpose: the output stays valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
