"""The one YAML loader of dpd: job files (spool, REST, ``dpd submit``), the model catalog
and the OpenAPI document all go through ``load_yaml``.

PyYAML follows YAML 1.1, where a float needs a dot: ``lr: 5e-5`` (how every diffusion-pipe
example writes it, and what JSON writes) would be the string ``'5e-05'``, refused by the
validator or passed to the trainer as a TOML string. This loader resolves plain scalars
as YAML 1.2's core schema does for numbers: ``5e-5``, ``1E8``, ``-2.5e-3``, ``.5`` are
floats; ``0o17``/``0x1F`` are octal/hex; ``0755`` is decimal 755; ``1_000`` and ``12:30``
stay strings. Dates and times are never constructed: ``date: 2026-01-02`` is the string
``'2026-01-02'`` (an explicit ``!!timestamp`` too). Null and booleans keep PyYAML's rules.

Not trusted: the document. An alias bomb (a few lines whose aliases expand to billions of
nodes) is measured on the composed node graph, where every alias is one shared node, and
refused past ``MAX_EXPANDED_NODES`` before anything is constructed; so is a recursive
alias. Every failure is a ``yaml.YAMLError`` (``YamlRefused`` for these limits), never a
RecursionError or ValueError.
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_EXPANDED_NODES: Final = 100_000
INT_TAG: Final = "tag:yaml.org,2002:int"
FLOAT_TAG: Final = "tag:yaml.org,2002:float"
TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_REPLACED: Final = frozenset({INT_TAG, FLOAT_TAG, TIMESTAMP_TAG})
_CORE_INT: Final = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_CORE_FLOAT: Final = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BASE: Final[type[yaml.SafeLoader]] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlRefused(yaml.YAMLError):  # type: ignore[misc]
    """The document is well-formed but refused: it expands too far or refers to itself."""


class CoreSchemaLoader(_BASE):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's parser where present) with core-schema numbers, no
    timestamps, and the expansion check before construction."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        check_expansion(node)
        return self.construct_document(node)

    def construct_core_int(self, node: Node) -> int:
        text = str(self.construct_scalar(node))
        try:
            if text.startswith("0o"):
                return int(text[2:], 8)
            if text.startswith("0x"):
                return int(text[2:], 16)
            return int(text, 10)
        except ValueError as err:  # more digits than Python converts (4300)
            raise YamlRefused(f"integer {text[:20]}... is too long") from err

    def construct_core_float(self, node: Node) -> float:
        text = str(self.construct_scalar(node)).lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        if text.endswith(".nan"):
            return float("nan")
        return float(text)

    def construct_plain_string(self, node: Node) -> str:
        return str(self.construct_scalar(node))


def _core_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    """The base loader's implicit resolvers without 1.1's int, float and timestamp, plus
    the core schema's int and float (ints first: the float pattern matches ``42`` too)."""
    table = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in _REPLACED]
        for first, entries in _BASE.yaml_implicit_resolvers.items()
    }
    for tag, regexp, firsts in (
        (INT_TAG, _CORE_INT, "-+0123456789"),
        (FLOAT_TAG, _CORE_FLOAT, "-+.0123456789"),
    ):
        for first in firsts:
            table.setdefault(first, []).append((tag, regexp))
    return table


CoreSchemaLoader.yaml_implicit_resolvers = _core_resolvers()
CoreSchemaLoader.add_constructor(INT_TAG, CoreSchemaLoader.construct_core_int)
CoreSchemaLoader.add_constructor(FLOAT_TAG, CoreSchemaLoader.construct_core_float)
CoreSchemaLoader.add_constructor(TIMESTAMP_TAG, CoreSchemaLoader.construct_plain_string)


def check_expansion(root: Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """How many nodes ``root`` stands for once every alias is expanded; YamlRefused past
    ``limit`` or for a node that contains itself. Each distinct node is sized once
    (iteratively, so depth costs no stack)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > limit:
                raise YamlRefused(
                    f"the document is too large: its aliases expand past {limit} values"
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YamlRefused("the document refers to itself (a recursive alias)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def load_yaml(text: str) -> Any:
    """The one document in ``text``; ``yaml.YAMLError`` for anything unreadable or refused."""
    try:
        return yaml.load(text, Loader=CoreSchemaLoader)
    except RecursionError as err:
        raise YamlRefused("the document is nested too deeply") from err
