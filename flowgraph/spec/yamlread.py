r"""Bounded YAML: bytes -> text -> nodes -> Python values, refusing hostile input early.

The composer is driven by the parser's events (libyaml's when available), so the limits of
`SpecLimits` are checked while the document is read: nesting depth, alias uses, and the size
of the document *after* alias expansion (an alias bomb is refused before anything expands it),
string length and integer digits. Every refusal is a located `SpecError`. Nothing here
recurses over the document, so no input can raise RecursionError.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    DocumentEndEvent,
    MappingStartEvent,
    ScalarEvent,
    StreamEndEvent,
)

from flowgraph.errors import Issue, Location, SpecError
from flowgraph.spec.limits import SpecLimits, limit_issue

__all__ = ["compose_text", "construct", "decode_text", "read_file_bytes"]

_INT_TAG = "tag:yaml.org,2002:int"


class _Refused(Exception):
    """Raised inside the loader with the issue to report."""

    def __init__(self, issue: Issue):
        self.issue = issue


def _fail(rule: str, message: str, file: str, line: int | None, **kw: Any) -> SpecError:
    return SpecError([Issue(rule, message, location=Location((), file, line), **kw)])


def read_file_bytes(path: str, limits: SpecLimits) -> bytes:
    """The bytes of a regular file of at most `max_file_bytes`; never blocks or reads more."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO"
                    if stat.S_ISFIFO(info.st_mode) else "a device or special file")
            raise _fail("file", f"a spec is a regular file, and this is {kind}", path, None)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the stat above
                raise _fail("file", "a spec is a regular file", path, None)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limits.max_file_bytes + 1)
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        why = getattr(e, "strerror", None) or str(e)
        raise _fail("file", f"cannot read spec file: {why}", path, None) from None
    if len(data) > limits.max_file_bytes:
        raise SpecError([limit_issue("max_file_bytes", "the spec file is larger than allowed",
                                     Location((), path), limits=limits)])
    return data


def decode_text(data: bytes, file: str) -> str:
    """UTF-8 text (a leading BOM dropped); other encodings are refused at the bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _fail("encoding", "a spec is UTF-8 text", file, line,
                    found=f"byte 0x{data[e.start]:02x} at offset {e.start}",
                    hint="save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader; value errors (bad dates, ...) become YAML errors at the node."""

    max_int_digits = 18

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {e}", node.start_mark) from None

    def _int(self, node: yaml.ScalarNode) -> int:
        value = yaml.constructor.SafeConstructor.construct_yaml_int(self, node)
        if abs(value) >= 10 ** self.max_int_digits:
            raise _Refused(Issue("limit", "", found=f"an integer of {len(str(abs(value)))} "
                                 "digits", location=Location((), None,
                                                             node.start_mark.line + 1)))
        return value


_Loader.add_constructor(_INT_TAG, _Loader._int)


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


def yaml_error(e: yaml.YAMLError, text: str, file: str) -> SpecError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = _line(mark)
    if line is None and isinstance(getattr(e, "position", None), int):
        line = text[: e.position].count("\n") + 1
    problem = getattr(e, "problem", None) or str(e)
    return _fail("yaml", f"not valid YAML: {problem}", file, line)


class _Composer:
    """Nodes from events, with the counts the limits need (size counts aliases expanded)."""

    def __init__(self, loader: Any, file: str, limits: SpecLimits):
        self.loader, self.file, self.limits = loader, file, limits
        self.stack: list[list] = []  # [node, size, height, pending key]
        self.info: dict[int, tuple[int, int]] = {}  # id(node) -> (size, height)
        self.anchors: dict[str, yaml.Node] = {}
        self.open: set[int] = set()
        self.total = self.aliases = 0
        self.root: yaml.Node | None = None

    def refuse(self, name: str, what: str, mark: Any, found: str | None = None) -> None:
        raise SpecError([limit_issue(name, what, Location((), self.file, _line(mark)), found,
                                     self.limits)])

    def attach(self, node: yaml.Node, size: int, height: int) -> None:
        if not self.stack:
            self.root = node
            return
        frame = self.stack[-1]
        frame[1] += size
        frame[2] = max(frame[2], height + 1)
        parent = frame[0]
        if isinstance(parent, yaml.SequenceNode):
            parent.value.append(node)
        elif frame[3] is None:
            frame[3] = node
        else:
            parent.value.append((frame[3], node))
            frame[3] = None

    def grow(self, n: int, mark: Any) -> None:
        self.total += n
        if self.total > self.limits.max_yaml_nodes:
            self.refuse("max_yaml_nodes", "the document has more values than allowed "
                        "(aliases counted as copies)", mark)

    def event(self, ev: Any) -> None:
        lim, loader = self.limits, self.loader
        if isinstance(ev, CollectionEndEvent):
            node, size, height, _ = self.stack.pop()
            self.open.discard(id(node))
            node.end_mark = ev.end_mark
            self.info[id(node)] = (size, height)
            self.attach(node, size, height)
        elif isinstance(ev, AliasEvent):
            self.aliases += 1
            if self.aliases > lim.max_aliases:
                self.refuse("max_aliases", "the document uses more aliases than allowed",
                            ev.start_mark)
            target = self.anchors.get(ev.anchor)
            if target is None:
                raise _fail("yaml", f"not valid YAML: undefined alias {ev.anchor!r}",
                            self.file, _line(ev.start_mark))
            if id(target) in self.open:
                raise _fail("yaml", f"alias *{ev.anchor} refers to a value that contains it "
                            "(a recursive alias)", self.file, _line(ev.start_mark))
            size, height = self.info[id(target)]
            self.grow(size, ev.start_mark)
            if len(self.stack) + height > lim.max_depth:
                self.refuse("max_depth", "alias *" + str(ev.anchor)[:40] + " nests values "
                            "deeper than allowed", ev.start_mark)
            self.attach(target, size, height)
        elif isinstance(ev, ScalarEvent):
            self.grow(1, ev.start_mark)
            if len(ev.value) > lim.max_str_len:
                self.refuse("max_str_len", "a string is longer than allowed", ev.start_mark,
                            f"{len(ev.value):,} characters")
            tag = ev.tag
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, ev.value, ev.implicit)
            if tag == _INT_TAG and len(ev.value) > lim.max_int_digits + 8:  # sign, _, 0x
                self.refuse("max_int_digits", "an integer has more digits than allowed",
                            ev.start_mark, f"{len(ev.value):,} characters")
            node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style)
            if ev.anchor is not None:
                self.anchors[ev.anchor] = node
            self.info[id(node)] = (1, 1)
            self.attach(node, 1, 1)
        else:  # a collection starts
            self.grow(1, ev.start_mark)
            if len(self.stack) >= lim.max_depth:
                self.refuse("max_depth", "values nest deeper than allowed", ev.start_mark)
            cls = yaml.MappingNode if isinstance(ev, MappingStartEvent) else yaml.SequenceNode
            tag = ev.tag
            if tag is None or tag == "!":
                tag = loader.resolve(cls, None, ev.implicit)
            node = cls(tag, [], ev.start_mark, None, flow_style=ev.flow_style)
            if ev.anchor is not None:
                self.anchors[ev.anchor] = node
            self.stack.append([node, 1, 1, None])
            self.open.add(id(node))

    def run(self) -> yaml.Node | None:
        loader = self.loader
        loader.get_event()  # stream start
        if loader.check_event(StreamEndEvent):
            return None
        loader.get_event()  # document start
        while not loader.check_event(DocumentEndEvent):
            self.event(loader.get_event())
        loader.get_event()
        if not loader.check_event(StreamEndEvent):
            ev = loader.peek_event()
            raise _fail("yaml", "a spec is one YAML document (found a second '---')",
                        self.file, _line(ev.start_mark))
        return self.root


def compose_text(text: str, file: str, limits: SpecLimits) -> tuple[Any, yaml.Node | None]:
    """(loader, root node) of one YAML document, every limit checked on the way."""
    loader = _Loader(text)
    loader.max_int_digits = limits.max_int_digits
    try:
        return loader, _Composer(loader, file, limits).run()
    except yaml.YAMLError as e:
        loader.dispose()
        raise yaml_error(e, text, file) from None
    except SpecError:
        loader.dispose()
        raise


def construct(loader: Any, root: yaml.Node | None, text: str, file: str,
              limits: SpecLimits) -> Any:
    """Python values of a composed document (aliases stay shared objects)."""
    try:
        return None if root is None else loader.construct_document(root)
    except yaml.YAMLError as e:
        raise yaml_error(e, text, file) from None
    except _Refused as r:
        loc = Location((), file, r.issue.location.line if r.issue.location else None)
        raise SpecError([limit_issue("max_int_digits", "an integer is larger than allowed",
                                     loc, r.issue.found, limits)]) from None
    finally:
        loader.dispose()
