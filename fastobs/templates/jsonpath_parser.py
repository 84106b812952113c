"""JSONPath parser: the template text → a tree of JSONPath nodes, once at start-up.

Where it sits: called by ``jsonpath.compile_jsonpath`` (in the parent at start-up and in
each worker's ``runner``); the tree it returns is made of ``jsonpath_nodes`` classes.

In: template text such as ``{.metadata.name}{range .items[*]}[{.n}]{end}``. Out: the
top-level node list (text and actions), or :class:`ParseError` whose ``reason`` is
client-go's message (``unclosed action``, ``invalid array index x``...).

Invariant: a loop-based port of client-go's recursive-descent parser that accepts and
rejects the same texts and builds the same trees, string escapes included (``UnquoteExtend``:
Go's ``strconv.Unquote`` that also takes single quotes).
"""

from __future__ import annotations

import re
from typing import Final

from fastobs.templates.jsonpath_nodes import (
    INT64_MAX,
    INT64_MIN,
    ArrayNode,
    FieldNode,
    FilterNode,
    GoInt,
    IdentifierNode,
    ListNode,
    LiteralNode,
    Node,
    Param,
    RecursiveNode,
    TextNode,
    UnionNode,
    WildcardNode,
)

__all__ = ["ParseError", "parse"]


def parse(text: str) -> list[Node]:
    """The top-level nodes of ``text``; raises :class:`ParseError`."""
    return Parser(text).parse()



class ParseError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_DICT_KEY = re.compile(r"'([^']*)'")
_SLICE = re.compile(r"(-?[0-9]*)(:-?[0-9]*)?(:-?[0-9]*)?")
_FILTER = re.compile(r"([^!<>=]+)([!<>=]+)(.+?)")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_TERMINATORS = frozenset(" \t\r\n.,[]$@{}")


def _is_terminator(ch: str) -> bool:
    return ch == "" or ch in _TERMINATORS


def _is_digit(ch: str) -> bool:
    return ch != "" and ch.isdecimal()


def _is_alnum(ch: str) -> bool:
    return ch == "_" or (ch != "" and (ch.isalpha() or ch.isdecimal()))


def _parse_int(text: str) -> int | None:
    """strconv.Atoi: ASCII digits with an optional sign, within int64."""
    if _INT.fullmatch(text) is None:
        return None
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else None


def _parse_action(text: str) -> ListNode:
    """client-go's parseAction: parse ``{text}`` and return its first action."""
    root = Parser("{" + text + "}").parse()
    first = root[0]
    assert isinstance(first, ListNode)
    return first


class Parser:
    __slots__ = ("input", "pos", "root", "start", "width")

    def __init__(self, text: str) -> None:
        self.input = text
        self.pos = 0
        self.start = 0
        self.width = 0
        self.root: list[Node] = []

    def parse(self) -> list[Node]:
        text = self.input
        while True:
            brace = text.find("{", self.pos)
            if brace < 0:
                if len(text) > self.start:
                    self.root.append(TextNode(text[self.start :]))
                return self.root
            if brace > self.start:
                self.root.append(TextNode(text[self.start : brace]))
            self.pos = brace + 1
            self.start = self.pos
            action = ListNode()
            self.root.append(action)
            self._parse_inside_action(action)
            action.text = text[brace + 1 : self.pos - 1]
            action.ends = [end - brace - 1 for end in action.ends]

    # -- scanning helpers (Go's next/peek/backup/consumeText) --

    def _next(self) -> str:
        if self.pos >= len(self.input):
            self.width = 0
            return ""
        self.width = 1
        self.pos += 1
        return self.input[self.pos - 1]

    def _peek(self) -> str:
        ch = self._next()
        self._backup()
        return ch

    def _backup(self) -> None:
        self.pos -= self.width

    def _consume(self) -> str:
        value = self.input[self.start : self.pos]
        self.start = self.pos
        return value

    def _rest_startswith(self, prefix: str) -> bool:
        return self.input.startswith(prefix, self.pos)

    # -- grammar --

    def _parse_inside_action(self, cur: ListNode) -> None:
        while True:
            # Where each node's text ends (absolute here; made relative to the action by parse).
            cur.ends += [self.pos] * (len(cur.nodes) - len(cur.ends))
            if self._rest_startswith("}"):
                self.pos += 1
                self._consume()
                return
            if self._rest_startswith("[?("):
                self._parse_filter(cur)
                continue
            if self._rest_startswith(".."):
                self._parse_recursive(cur)
                continue
            self._parse_token(cur, self._next())

    def _parse_token(self, cur: ListNode, ch: str) -> None:
        if ch == "" or ch in "\r\n":
            raise ParseError("unclosed action")
        if ch in " @$":
            self._consume()
        elif ch == "[":
            self._parse_array(cur)
        elif ch in "\"'":
            self._parse_quote(cur, ch)
        elif ch == ".":
            self._parse_field(cur)
        elif ch in "+-" or _is_digit(ch):
            self._backup()
            self._parse_number(cur)
        elif _is_alnum(ch):
            self._backup()
            self._parse_identifier(cur)
        else:
            raise ParseError(f"unrecognized character in action: {_go_sharp_u(ch)}")

    def _parse_identifier(self, cur: ListNode) -> None:
        while not _is_terminator(self._next()):
            pass
        self._backup()
        value = self._consume()
        if value in ("true", "false"):
            cur.nodes.append(LiteralNode(value == "true"))
        else:
            cur.nodes.append(IdentifierNode(value))

    def _parse_recursive(self, cur: ListNode) -> None:
        if cur.nodes and isinstance(cur.nodes[-1], RecursiveNode):
            raise ParseError("invalid multiple recursive descent")
        self.pos += 2
        self._consume()
        cur.nodes.append(RecursiveNode())
        if _is_alnum(self._peek()):
            self._parse_field(cur)

    def _parse_number(self, cur: ListNode) -> None:
        if self._peek() in ("+", "-"):
            self._next()
        while True:
            ch = self._next()
            if ch != "." and not _is_digit(ch):
                self._backup()
                break
        value = self._consume()
        as_int = _parse_int(value)
        if as_int is not None:
            cur.nodes.append(LiteralNode(GoInt(as_int)))
            return
        if _FLOAT.fullmatch(value) is not None:
            as_float = float(value)
            if as_float not in (float("inf"), float("-inf")):
                cur.nodes.append(LiteralNode(as_float))
                return
        raise ParseError(f"cannot parse number {value}")

    def _parse_array(self, cur: ListNode) -> None:
        while True:
            ch = self._next()
            if ch in ("", "\n"):
                raise ParseError("unterminated array")
            if ch == "]":
                break
        text = self._consume()[1:-1]
        if text == "*":
            text = ":"
        parts = text.split(",")
        if len(parts) > 1:
            cur.nodes.append(UnionNode([_parse_action("[" + part.strip(" ") + "]") for part in parts]))
            return
        key = _DICT_KEY.fullmatch(text)
        if key is not None:
            cur.nodes.extend(_parse_action("." + key.group(1)).nodes)
            return
        cur.nodes.append(ArrayNode(_slice_params(text)))

    def _parse_filter(self, cur: ListNode) -> None:
        self.pos += 3
        self._consume()
        begin = end = False
        pair = ""
        while True:
            ch = self._next()
            if ch in ("", "\n"):
                raise ParseError("unterminated filter")
            if ch in "\"'":
                if not begin:
                    begin, pair = True, ch
                    continue
                if self.input[self.pos - 2] != "\\" and ch == pair:
                    end = True
            elif ch == ")" and begin == end:
                break
        if self._next() != "]":
            raise ParseError("unclosed array expect ]")
        text = self._consume()[:-2]
        match = _FILTER.fullmatch(text)
        if match is None:
            cur.nodes.append(FilterNode(_parse_action(text), ListNode(), "exists"))
        else:
            left, op, right = match.groups()
            cur.nodes.append(FilterNode(_parse_action(left), _parse_action(right), op))

    def _parse_quote(self, cur: ListNode, quote: str) -> None:
        while True:
            ch = self._next()
            if ch in ("", "\n"):
                raise ParseError("unterminated quoted string")
            if ch == quote and self.input[self.pos - 2] != "\\":
                break
        value = self._consume()
        unquoted = _unquote_extend(value)
        if unquoted is None:
            raise ParseError(f"unquote string {value} error invalid syntax")
        cur.nodes.append(TextNode(unquoted))

    def _parse_field(self, cur: ListNode) -> None:
        self._consume()
        while self._advance():
            pass
        value = self._consume()
        cur.nodes.append(WildcardNode() if value == "*" else FieldNode(value.replace("\\", "")))

    def _advance(self) -> bool:
        ch = self._next()
        if ch == "\\":
            self._next()
        elif _is_terminator(ch):
            self._backup()
            return False
        return True


def _slice_params(text: str) -> tuple[Param, Param, Param]:
    match = _SLICE.fullmatch(text)
    if match is None:
        raise ParseError(f"invalid array index {text}")
    raw = [group or "" for group in match.groups()]
    params = (Param(), Param(), Param())
    for i in range(3):
        value = raw[i]
        if value:
            if i > 0:
                value = value[1:]
            if i > 0 and not value:
                params[i].known = False
                continue
            number = _parse_int(value)
            if number is None:
                raise ParseError(f"array index {value} is not a number")
            params[i].known, params[i].value = True, number
        elif i == 1:
            params[i].known, params[i].value, params[i].derived = True, params[0].value + 1, True
    return params


def _go_sharp_u(ch: str) -> str:
    """Go's %#U: ``U+0023 '#'``, without the quoted character when it is not printable."""
    code = ord(ch)
    return f"U+{code:04X} '{ch}'" if ch.isprintable() else f"U+{code:04X}"


_SIMPLE_ESCAPES: Final = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
_HEX_LENGTHS: Final = {"x": 2, "u": 4, "U": 8}


def _unquote_extend(value: str) -> str | None:
    """client-go's UnquoteExtend (strconv.Unquote that also takes single quotes); None: syntax error."""
    if len(value) < 2 or value[0] != value[-1] or value[0] not in "\"'":
        return None
    quote, body = value[0], value[1:-1]
    if "\\" not in body and quote not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        step = _unquote_char(body, i, quote, out)
        if step is None:
            return None
        i = step
    # \x and octal escapes give raw bytes, which may not be UTF-8 (Go strings are bytes).
    return out.decode("utf-8", "surrogateescape")


def _unquote_char(body: str, i: int, quote: str, out: bytearray) -> int | None:
    ch = body[i]
    if ch == quote:
        return None
    if ch != "\\":
        out += ch.encode("utf-8", "surrogateescape")
        return i + 1
    if i + 1 >= len(body):
        return None
    esc = body[i + 1]
    if esc in _SIMPLE_ESCAPES:
        out.append(_SIMPLE_ESCAPES[esc])
        return i + 2
    if esc in _HEX_LENGTHS:
        return _unquote_hex(body, i + 2, esc, out)
    if "0" <= esc <= "7":
        digits = body[i + 1 : i + 4]
        if len(digits) < 3 or any(not "0" <= d <= "7" for d in digits) or int(digits, 8) > 255:
            return None
        out.append(int(digits, 8))
        return i + 4
    if esc in "'\"" and esc == quote:
        out += esc.encode()
        return i + 2
    return None


def _unquote_hex(body: str, start: int, esc: str, out: bytearray) -> int | None:
    width = _HEX_LENGTHS[esc]
    digits = body[start : start + width]
    if len(digits) < width or any(d not in "0123456789abcdefABCDEF" for d in digits):
        return None
    code = int(digits, 16)
    if esc == "x":
        out.append(code)
    elif code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    else:
        out += chr(code).encode("utf-8")
    return start + width
