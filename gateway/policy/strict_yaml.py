"""One strict reading of YAML: the guard reads a compose file as Compose's go-yaml does, or refuses it.

Compose parses compose files with go-yaml v3, a port of libyaml. This module reads libyaml's own
event stream (PyYAML's C parser) and builds the values itself, so that every construct where the
two readings could part is refused instead of guessed:

- explicit tags other than YAML's core ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``,
  ``!!null``, ``!!map``, ``!!seq``) and Compose's merge tags ``!reset`` and ``!override``: no
  ``!!binary``, ``!!timestamp``, local or verbatim tags; no tag on a key. A tagged value is built as
  a :class:`Tagged` marker, so that the reader of file keys can refuse it there;
- ``%TAG`` and ``%YAML`` directives;
- duplicate keys (go-yaml and Compose refuse them too), complex keys, aliases as keys, and keys
  that go-yaml reads as a number, a bool or null;
- an anchor defined twice, and an alias to an anchor that is still open;
- NUL in any scalar, and control or bidi characters in a key.

A :class:`Budget` bounds nesting depth and alias expansion *while the events arrive*: an alias costs
the size of what it expands to, so a kilobyte-sized alias bomb is refused after a few hundred events
and never built. Plain scalars resolve as go-yaml v3 resolves them into an ``interface{}``: null,
``true``/``false`` (three spellings each), numbers (kept as :class:`Number` text); everything else
is a string (``yes`` and ``2024-01-01`` stay strings, as in Compose).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["Budget", "YamlRefused", "Tagged", "Number", "load_documents", "CONTROL_CHARACTERS"]

_CORE_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq"))
# Compose's own tags (compose-go's ResetProcessor): they only change how files and documents merge.
_COMPOSE_TAGS = frozenset({"!reset", "!override"})
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
# What go-yaml v3 reads as a number (Go's ParseInt/ParseFloat with base prefixes and underscores),
# drawn wide on purpose: a plain scalar that merely looks like one is never taken for a string.
_NUMBER = re.compile(
    r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?0[xX][0-9a-fA-F_]+|[-+]?0[oO][0-7_]+|[-+]?0[bB][01_]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
# C0 and C1 controls, DEL, and the bidi overrides that make a name read differently than it is.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Budget:
    """What one stack's compose files may cost the guard to read (and Compose to load)."""

    file_bytes: int = 1024 * 1024
    total_bytes: int = 4 * 1024 * 1024
    files: int = 64
    # Nodes after alias expansion, over all the stack's files: a 300-service stack is ~30 000.
    nodes: int = 200_000
    depth: int = 64


class YamlRefused(Exception):
    """The text is not YAML the guard reads the way Compose does. ``code`` names the reason."""

    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.code = code
        self.line = line


class Tagged(str):
    """A scalar written with an explicit tag; ``tag`` holds it. Never a file reference."""

    tag: str = ""


class TaggedMapping(dict[str, Any]):
    """A mapping written with an explicit tag (``!override``, ``!!map``...)."""

    tag: str = ""


class TaggedSequence(list[Any]):
    """A sequence written with an explicit tag (``!reset``, ``!!seq``...)."""

    tag: str = ""


class Number(str):
    """A plain scalar go-yaml reads as a number; kept as its text, never taken for a string."""


_MERGE = object()
# libyaml's parser (the one go-yaml was ported from) when PyYAML has it; its events, never its objects.
_EVENTS: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


@dataclass
class _Frame:
    value: dict[str, Any] | list[Any]
    mapping: bool
    anchor: str | None
    size: int = 1
    key: Any = None  # mappings: the key waiting for its value (None: the next scalar is a key)
    merged: bool = False
    merges: list[dict[str, Any]] = field(default_factory=list)


def _plain(value: str) -> Any:
    if value in _NULLS:
        return None
    if value in _BOOLS:
        return _BOOLS[value]
    if value[:1] in "0123456789+-." and _NUMBER.fullmatch(value):
        return Number(value)
    return value


def _check_tag(tag: str, line: int) -> None:
    if tag in _CORE_TAGS or tag in _COMPOSE_TAGS:
        return
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    raise YamlRefused(
        "yaml_tag",
        f"the tag {shown} is not allowed; the policy guard reads only plain YAML "
        "(the core tags and Compose's !reset/!override)",
        line,
    )


def load_documents(text: str, budget: Budget, spent: int = 0) -> tuple[list[Any], int]:
    """Every document of ``text`` as plain Python values, and the nodes spent so far (``spent`` + this text's).

    Raises:
        YamlRefused: the text is not valid YAML, uses a construct the guard does not read, or
            goes over ``budget``.
    """
    parser = _EVENTS(text)
    try:
        return _Composer(budget, spent).run(parser)
    except yaml.YAMLError as exc:
        raise YamlRefused("invalid_yaml", f"not valid YAML: {exc}") from None
    finally:
        parser.dispose()


def _line(event: Any) -> int:
    mark = event.start_mark
    return int(mark.line) + 1 if mark is not None else 0


class _Composer:
    """Builds values from events, one frame per open mapping or sequence, never recursing.

    The loop is written for speed (it runs once per node of every compose file judged): the common
    case, a plain scalar key or value, is handled inline; the line number is looked up only for errors.
    """

    def __init__(self, budget: Budget, spent: int) -> None:
        self.budget = budget
        self.nodes = spent
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.open_anchors: set[str] = set()
        self.stack: list[_Frame] = []
        self.root: list[Any] = []

    def run(self, parser: Any) -> tuple[list[Any], int]:
        scalar, alias = yaml.ScalarEvent, yaml.AliasEvent
        mapping_start, sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
        mapping_end, sequence_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
        stream_end = yaml.StreamEndEvent
        get, stack, limit = parser.get_event, self.stack, self.budget.nodes
        documents: list[Any] = []
        while True:
            event = get()
            kind = type(event)
            top = stack[-1] if stack else None
            if top is not None and top.mapping and top.key is None and kind is not mapping_end:
                self.take_key(top, event)
                continue
            if kind is scalar:
                self.nodes += 1
                if self.nodes > limit:
                    self.spend(0, event)
                value = event.value
                if "\x00" in value:
                    raise YamlRefused("control_characters", "a value holds a NUL character", _line(event))
                built: Any
                if event.tag is not None:
                    _check_tag(event.tag, _line(event))
                    built = Tagged(value)
                    built.tag = event.tag
                else:
                    built = _plain(value) if not event.style else value
                if event.anchor is not None:
                    self.opening(event.anchor, event)
                    self.open_anchors.discard(event.anchor)
                    self.anchors[event.anchor] = (built, 1)
                if top is not None and top.key is not _MERGE:
                    top.size += 1
                    if top.mapping:
                        top.value[top.key] = built
                        top.key = None
                    else:
                        top.value.append(built)  # type: ignore[union-attr]
                else:
                    self.place(built, 1, event)
            elif kind is alias:
                self.alias(event)
            elif kind is mapping_start or kind is sequence_start:
                self.start(event, kind is mapping_start)
            elif kind is mapping_end or kind is sequence_end:
                frame = stack.pop()
                if frame.merges:
                    _merge(frame)
                if frame.anchor is not None:
                    self.open_anchors.discard(frame.anchor)
                    self.anchors[frame.anchor] = (frame.value, frame.size)
                self.place(frame.value, frame.size, event)
            elif kind is yaml.DocumentStartEvent:
                if event.tags or event.version:
                    raise YamlRefused("yaml_directive", "YAML directives (%TAG, %YAML) are not allowed", _line(event))
                self.anchors.clear()
            elif kind is yaml.DocumentEndEvent:
                documents.append(self.root.pop() if self.root else None)
            elif kind is stream_end:
                return documents, self.nodes

    def spend(self, size: int, event: Any) -> None:
        self.nodes += size
        if self.nodes > self.budget.nodes:
            raise YamlRefused(
                "yaml_budget",
                f"the compose files expand to more than {self.budget.nodes} nodes (an alias bomb, or a file far "
                "larger than a stack needs)",
                _line(event),
            )

    def place(self, value: Any, size: int, event: Any) -> None:
        """Hand a finished node to its parent: a sequence item, a mapping's value, or a document."""
        if not self.stack:
            self.root.append(value)
            return
        parent = self.stack[-1]
        parent.size += size
        target = parent.value
        if not parent.mapping:
            target.append(value)  # type: ignore[union-attr]
            return
        key, parent.key = parent.key, None
        if key is _MERGE:
            sources = value if isinstance(value, list) else [value]
            if not sources or not all(isinstance(source, dict) for source in sources):
                raise YamlRefused(
                    "invalid_yaml", "a merge key (<<) takes a mapping or a list of mappings", _line(event)
                )
            parent.merges.extend(sources)
        else:
            target[key] = value

    def take_key(self, frame: _Frame, event: Any) -> None:
        mapping = frame.value
        assert isinstance(mapping, dict)
        self.spend(1, event)
        if type(event) is not yaml.ScalarEvent:
            what = "an alias" if type(event) is yaml.AliasEvent else "a mapping or sequence"
            raise YamlRefused("yaml_key", f"{what} as a mapping key is not allowed; keys are plain names", _line(event))
        key = event.value
        if event.tag is not None:
            raise YamlRefused("yaml_tag", f"the key {key[:60]!r} carries a tag; keys carry no tags", _line(event))
        if event.anchor is not None:
            raise YamlRefused("yaml_key", f"the key {key[:60]!r} carries an anchor; keys carry none", _line(event))
        plain = not event.style
        if key == "<<" and (frame.merged or "<<" in mapping):
            # Compose compares keys as written: a quoted "<<" clashes with the merge key too.
            raise YamlRefused("duplicate_key", "the key << appears twice in one mapping", _line(event))
        if plain and key == "<<":
            frame.merged = True
            frame.key = _MERGE
            return
        if plain and _plain(key) is not key:
            raise YamlRefused(
                "yaml_key", f"the key {key[:60]!r} reads as a number, bool or null; quote it", _line(event)
            )
        if CONTROL_CHARACTERS.search(key):
            raise YamlRefused("control_characters", f"the key {key[:60]!r} holds a control character", _line(event))
        if key in mapping:
            raise YamlRefused("duplicate_key", f"the key {key[:60]!r} is defined twice in one mapping", _line(event))
        frame.key = key

    def opening(self, anchor: str | None, event: Any) -> None:
        if anchor is None:
            return
        if anchor in self.anchors or anchor in self.open_anchors:
            raise YamlRefused("yaml_anchor", f"the anchor &{anchor} is defined twice", _line(event))
        self.open_anchors.add(anchor)

    def alias(self, event: Any) -> None:
        anchor = event.anchor
        if anchor in self.open_anchors:
            raise YamlRefused("yaml_anchor", f"the alias *{anchor} refers to a node that contains it", _line(event))
        if anchor not in self.anchors:
            raise YamlRefused("invalid_yaml", f"the alias *{anchor} names no anchor", _line(event))
        value, size = self.anchors[anchor]
        self.spend(size, event)
        self.place(value, size, event)

    def start(self, event: Any, mapping: bool) -> None:
        self.spend(1, event)
        if len(self.stack) >= self.budget.depth:
            raise YamlRefused("yaml_budget", f"the YAML nests deeper than {self.budget.depth} levels", _line(event))
        container: dict[str, Any] | list[Any]
        if event.tag is not None:
            _check_tag(event.tag, _line(event))
            tagged: TaggedMapping | TaggedSequence = TaggedMapping() if mapping else TaggedSequence()
            tagged.tag = event.tag
            container = tagged
        else:
            container = {} if mapping else []
        self.opening(event.anchor, event)
        self.stack.append(_Frame(container, mapping, event.anchor))


def _merge(frame: _Frame) -> None:
    """Apply a mapping's ``<<`` sources as go-yaml does: its own keys win, then the first source that has a key."""
    mapping = frame.value
    assert isinstance(mapping, dict)
    own = set(mapping)
    for source in frame.merges:
        for key, value in source.items():
            if key not in own and key not in mapping:
                mapping[key] = value
