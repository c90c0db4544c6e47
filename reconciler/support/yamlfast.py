"""Fast YAML loading: ruamel's C parser composes the nodes, a small constructor builds plain values.

ruamel's own constructor is pure Python and was 80% of the time to read 10,000 certificate specs.
This one implements what desired-state files use: the YAML 1.2 core schema (null, bool, int, float,
str), anchors and aliases, merge keys, and the standard !!str/!!int/!!float/!!bool/!!null/!!map/!!seq
tags; anything else is an error with its position. Duplicate keys are errors, as in ruamel.

Input is untrusted (a pull request, a file someone is editing): nesting deeper than MAX_DEPTH and
aliases that expand to more than MAX_ALIAS_NODES nodes are refused with their position before anything
is composed (the C composer recurses per level and a deep enough document crashes the process;
a few hundred bytes of nested aliases expand to billions of nodes).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from _ruamel_yaml import CParser  # ruamel.yaml.clib, the C extension ruamel.yaml itself uses
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

STR, INT, FLOAT, BOOL, NULL = (f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))
MAP, SEQ, MERGE = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:merge"

_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
MAX_DEPTH = 64  # collections inside collections; desired-state documents use fewer than 10
MAX_ALIAS_NODES = 100_000  # nodes a document may hold once its aliases are expanded
# Text that cannot nest deeper than MAX_DEPTH and has no anchors needs no scan (the common case, kept fast):
# no anchor, few flow brackets, no deep indentation, no long run of compact "- - -" entries on one line.
_MAY_NEST = re.compile(r"^ {48}|(?:[-?] +){16}", re.MULTILINE)
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


class ConstructorError(MarkedYAMLError):
    pass


def _plain_tag(value: str) -> str:
    if value in _NULLS:
        return NULL
    if value in _BOOLS:
        return BOOL
    if value == "<<":
        return MERGE
    if value[:1] in "0123456789-+.":
        if _INT.match(value):
            return INT
        if _FLOAT.match(value):
            return FLOAT
    return STR


class _Parser(CParser):  # type: ignore[misc]
    """The C composer asks its host for tags; plain scalars get the YAML 1.2 core schema (memoised)."""

    _memo: ClassVar[dict[str, str]] = {}

    def descend_resolver(self, *_: Any) -> None:
        return None

    def ascend_resolver(self, *_: Any) -> None:
        return None

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            if implicit[0]:
                tag = self._memo.get(value)
                if tag is None:
                    tag = _plain_tag(value)
                    if len(self._memo) < 50_000:
                        self._memo[value] = tag
                return tag
            return STR
        return MAP if kind is MappingNode else SEQ


def load_all(text: str) -> list[Any]:
    if "&" in text or text.count("[") + text.count("{") > MAX_DEPTH // 2 or _MAY_NEST.search(text):
        check_bounds(text)
    parser = _Parser(text)
    out = []
    try:
        while parser.check_node():
            out.append(_construct(parser.get_node(), {}, 0))
    finally:
        parser.dispose()
    return out


def check_bounds(text: str) -> None:
    """Raise ConstructorError at the first place the text nests too deep or its aliases expand too far.

    Reads only events (the C parser keeps its own stack, so any depth is safe to scan) and stops at
    the first violation, so a hostile document costs no more than MAX_DEPTH levels of scanning.
    """
    parser = CParser(text)
    try:
        open_: list[
            tuple[str | None, int]
        ] = []  # per open collection: its anchor, nodes so far (aliases expanded)
        anchors: dict[str, int] = {}  # anchor -> nodes it expands to
        total = 0
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, CollectionStartEvent):
                if len(open_) >= MAX_DEPTH:
                    raise ConstructorError(
                        problem=f"nesting deeper than {MAX_DEPTH} levels is not allowed",
                        problem_mark=event.start_mark,
                    )
                open_.append((event.anchor, 1))
                continue
            if isinstance(event, CollectionEndEvent):
                anchor, size = open_.pop()
                if anchor is not None:
                    anchors[anchor] = size
            elif isinstance(event, AliasEvent):
                size = anchors.get(event.anchor, 1)
            elif isinstance(event, NodeEvent):
                size = 1
                if event.anchor is not None:
                    anchors[event.anchor] = 1
            else:
                continue
            if open_:
                open_[-1] = (open_[-1][0], open_[-1][1] + size)
            else:
                total += size
            if total + sum(n for _, n in open_) > MAX_ALIAS_NODES:
                raise ConstructorError(
                    problem=f"aliases expand this document to more than {MAX_ALIAS_NODES:,} nodes",
                    problem_mark=event.start_mark,
                )
    finally:
        parser.dispose()


def _tag(node: Any) -> str:
    ctag = node.ctag  # Node.tag formats a Tag object on every access; the raw suffix is what we need
    return str(ctag.suffix) if ctag.handle is None else str(ctag)


def _error(node: Any, problem: str) -> ConstructorError:
    return ConstructorError(problem=problem, problem_mark=node.start_mark)


def _construct(node: Any, seen: dict[int, Any], depth: int) -> Any:
    known = seen.get(id(node))
    if known is not None:
        return known
    if depth >= MAX_DEPTH and not isinstance(node, ScalarNode):
        raise _error(node, f"nesting deeper than {MAX_DEPTH} levels is not allowed")
    if isinstance(node, ScalarNode):
        return _scalar(node)
    if isinstance(node, SequenceNode):
        if _tag(node) != SEQ:
            raise _error(node, f"unsupported tag {_tag(node)}")
        items: list[Any] = []
        seen[id(node)] = items
        items.extend(_construct(child, seen, depth + 1) for child in node.value)
        return items
    if isinstance(node, MappingNode):
        if _tag(node) != MAP:
            raise _error(node, f"unsupported tag {_tag(node)}")
        mapping: dict[Any, Any] = {}
        seen[id(node)] = mapping
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if _tag(key_node) == MERGE:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in reversed(sources):
                    value = _construct(source, seen, depth + 1)
                    if not isinstance(value, dict):
                        raise _error(source, "a merge key (<<) takes a mapping or a list of mappings")
                    merged.update(value)
                continue
            key = _construct(key_node, seen, depth + 1)
            if isinstance(key, dict | list):
                raise _error(key_node, "a mapping key must be a scalar")
            if key in mapping:
                raise _error(key_node, f"duplicate key {key!r}")
            mapping[key] = _construct(value_node, seen, depth + 1)
        for key, value in merged.items():
            mapping.setdefault(key, value)
        return mapping
    raise _error(node, "unsupported node")


def _scalar(node: Any) -> Any:
    tag, value = _tag(node), node.value
    if tag == STR or tag == "!":
        return value
    if tag == NULL:
        return None
    if tag == BOOL:
        if value not in _BOOLS:
            raise _error(node, f"{value!r} is not a boolean")
        return _BOOLS[value]
    if tag == INT:
        try:
            if value.startswith("0o"):
                return int(value[2:], 8)
            return int(value, 16) if value.startswith("0x") else int(value)
        except ValueError:
            raise _error(node, f"{value!r} is not an integer") from None
    if tag == FLOAT:
        lowered = value.lower()
        if lowered.endswith(".inf"):
            return float("-inf") if lowered.startswith("-") else float("inf")
        if lowered == ".nan":
            return float("nan")
        try:
            return float(value)
        except ValueError:
            raise _error(node, f"{value!r} is not a number") from None
    raise _error(node, f"unsupported tag {tag}")
