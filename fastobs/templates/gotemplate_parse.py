"""Go text/template parser: Go's ``text/template/parse`` lexer and parser, ported.

Where it sits: :mod:`fastobs.templates.gotemplate` calls :func:`parse` once at start-up with
the ``--template`` text and the names of the functions kubectl's go-template printer defines;
the executor there walks the trees it returns, for every event.

In: template text (``str``; bytes that were not UTF-8 arrive as surrogate escapes and count as
one byte each, as Go's lexer counts a bad byte). Out: a dict of named :class:`Tree` objects,
``"output"`` for the top level plus one per ``{{define}}``/``{{block}}``, or a
:class:`ParseError` whose message is Go's, byte for byte (``template: output:1: ...``).

Invariants: the token stream, the node shapes, each node's ``str()`` (used in execution error
messages as ``<...>``) and each error message follow Go 1.26's ``text/template/parse``
(lex.go, parse.go, node.go). Positions are kept as character offsets and turned into Go's byte
offsets only when a message needs them (:func:`error_location`). Nothing here executes
anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Final, TypeAlias

from fastobs.gocompat import (
    go_is_print,
    go_quote,
    go_unicode_category,
    parse_go_float,
    parse_go_int,
    parse_go_uint,
)

__all__ = [
    "ActionNode", "BoolNode", "BreakNode", "ChainNode", "CommandNode", "ContinueNode",
    "DotNode", "FieldNode", "IdentifierNode", "IfNode", "ListNode", "NilNode", "Node",
    "NumberNode", "ParseError", "PipeNode", "RangeNode", "StringNode", "TemplateNode",
    "TextNode", "Tree", "VariableNode", "WithNode", "error_location", "go_sharp_u",
    "is_empty_tree", "parse", "unquote",
]

# ---------------------------------------------------------------------------------------------
# Items (lex.go)

ERROR, BOOL, CHAR, CHAR_CONSTANT, COMMENT, COMPLEX, ASSIGN, DECLARE, EOF, FIELD, IDENTIFIER, \
    LEFT_DELIM, LEFT_PAREN, NUMBER, PIPE, RAW_STRING, RIGHT_DELIM, RIGHT_PAREN, SPACE, STRING, \
    TEXT, VARIABLE, KEYWORD, BLOCK, BREAK, CONTINUE, DOT, DEFINE, ELSE, END, IF, NIL, RANGE, \
    TEMPLATE, WITH = range(35)

_KEYWORDS: Final = {
    ".": DOT, "block": BLOCK, "break": BREAK, "continue": CONTINUE, "define": DEFINE,
    "else": ELSE, "end": END, "if": IF, "range": RANGE, "nil": NIL, "template": TEMPLATE,
    "with": WITH,
}

_SPACE_CHARS: Final = " \t\r\n"
_LEFT_DELIM: Final = "{{"
_RIGHT_DELIM: Final = "}}"
_LEFT_COMMENT: Final = "/*"
_RIGHT_COMMENT: Final = "*/"


class Item:
    __slots__ = ("line", "pos", "typ", "val")

    def __init__(self, typ: int, pos: int, val: str, line: int) -> None:
        self.typ = typ
        self.pos = pos
        self.val = val
        self.line = line

    def __str__(self) -> str:
        if self.typ == EOF:
            return "EOF"
        if self.typ == ERROR:
            return self.val
        if self.typ > KEYWORD:
            return f"<{self.val}>"
        if len(self.val.encode("utf-8", "surrogateescape")) > 10:
            return _go_quote_prefix(self.val, 10) + "..."
        return go_quote(self.val)


def _is_space(ch: str) -> bool:
    return ch in (" ", "\t", "\r", "\n") and ch != ""


def is_alphanumeric(ch: str) -> bool:
    """Go's isAlphaNumeric: '_', a Unicode letter (L*) or a decimal digit (Nd)."""
    if ch == "_":
        return True
    if ch == "" or "\udc80" <= ch <= "\udcff":
        return False
    if ch.isascii():
        return ch.isalnum()
    category = go_unicode_category(ch)
    return category[0] == "L" or category == "Nd"


def _has_left_trim_marker(s: str, at: int) -> bool:
    return len(s) >= at + 2 and s[at] == "-" and s[at + 1] in _SPACE_CHARS


def _has_right_trim_marker(s: str, at: int) -> bool:
    return len(s) >= at + 2 and s[at] in _SPACE_CHARS and s[at + 1] == "-"


_State: TypeAlias = "Callable[[], _State] | None"


class _Lexer:
    """The state machine of Go's lexer; ``next_item`` runs it until one item is ready."""

    __slots__ = ("at_eof", "input", "inside_action", "item", "line", "paren_depth", "pos",
                 "start", "start_line")

    def __init__(self, text: str) -> None:
        self.input = text
        self.pos = 0
        self.start = 0
        self.at_eof = False
        self.paren_depth = 0
        self.line = 1
        self.start_line = 1
        self.item = Item(EOF, 0, "EOF", 1)
        self.inside_action = False

    # -- helpers --

    def next(self) -> str:
        if self.pos >= len(self.input):
            self.at_eof = True
            return ""
        ch = self.input[self.pos]
        self.pos += 1
        if ch == "\n":
            self.line += 1
        return ch

    def peek(self) -> str:
        return self.input[self.pos] if self.pos < len(self.input) else ""

    def backup(self) -> None:
        if not self.at_eof and self.pos > 0:
            self.pos -= 1
            if self.input[self.pos] == "\n":
                self.line -= 1

    def this_item(self, typ: int) -> Item:
        item = Item(typ, self.start, self.input[self.start : self.pos], self.start_line)
        self.start = self.pos
        self.start_line = self.line
        return item

    def emit(self, typ: int) -> None:
        self.item = self.this_item(typ)

    def ignore(self) -> None:
        self.line += self.input.count("\n", self.start, self.pos)
        self.start = self.pos
        self.start_line = self.line

    def accept(self, valid: str) -> bool:
        ch = self.next()
        if ch != "" and ch in valid:
            return True
        self.backup()
        return False

    def accept_run(self, valid: str) -> None:
        while True:
            ch = self.next()
            if ch == "" or ch not in valid:
                break
        self.backup()

    def errorf(self, message: str) -> None:
        self.item = Item(ERROR, self.start, message, self.start_line)
        self.start = 0
        self.pos = 0
        self.input = ""

    def next_item(self) -> Item:
        self.item = Item(EOF, self.pos, "EOF", self.start_line)
        state: _State = self.lex_inside_action if self.inside_action else self.lex_text
        while state is not None:
            state = state()
        return self.item

    def at_right_delim(self) -> tuple[bool, bool]:
        text, pos = self.input, self.pos
        if _has_right_trim_marker(text, pos) and text.startswith(_RIGHT_DELIM, pos + 2):
            return True, True
        if text.startswith(_RIGHT_DELIM, pos):
            return True, False
        return False, False

    def at_terminator(self) -> bool:
        ch = self.peek()
        if _is_space(ch):
            return True
        if ch in ("", ".", ",", "|", ":", ")", "("):
            return True
        return self.input.startswith(_RIGHT_DELIM, self.pos)

    # -- states; each returns the next state, or None once an item is ready --

    def lex_text(self) -> _State:
        text = self.input
        x = text.find(_LEFT_DELIM, self.pos)
        if x >= 0:
            if x > self.pos:
                self.pos = x
                trim = 0
                if _has_left_trim_marker(text, x + len(_LEFT_DELIM)):
                    chunk = text[self.start : self.pos]
                    trim = len(chunk) - len(chunk.rstrip(_SPACE_CHARS))
                self.pos -= trim
                self.line += text.count("\n", self.start, self.pos)
                item = self.this_item(TEXT)
                self.pos += trim
                self.ignore()
                if item.val:
                    self.item = item
                    return None
            return self.lex_left_delim
        self.pos = len(text)
        if self.pos > self.start:
            self.line += text.count("\n", self.start, self.pos)
            self.emit(TEXT)
            return None
        self.emit(EOF)
        return None

    def lex_left_delim(self) -> _State:
        self.pos += len(_LEFT_DELIM)
        trim = _has_left_trim_marker(self.input, self.pos)
        after_marker = 2 if trim else 0
        if self.input.startswith(_LEFT_COMMENT, self.pos + after_marker):
            self.pos += after_marker
            self.ignore()
            return self.lex_comment
        item = self.this_item(LEFT_DELIM)
        self.inside_action = True
        self.pos += after_marker
        self.ignore()
        self.paren_depth = 0
        self.item = item
        return None

    def lex_comment(self) -> _State:
        self.pos += len(_LEFT_COMMENT)
        x = self.input.find(_RIGHT_COMMENT, self.pos)
        if x < 0:
            self.errorf("unclosed comment")
            return None
        self.pos = x + len(_RIGHT_COMMENT)
        delim, trim = self.at_right_delim()
        if not delim:
            self.errorf("comment ends before closing delimiter")
            return None
        self.line += self.input.count("\n", self.start, self.pos)
        self.this_item(COMMENT)  # comments are not emitted (no ParseComments mode)
        if trim:
            self.pos += 2
        self.pos += len(_RIGHT_DELIM)
        if trim:
            rest = self.input[self.pos :]
            self.pos += len(rest) - len(rest.lstrip(_SPACE_CHARS))
        self.ignore()
        return self.lex_text

    def lex_right_delim(self) -> _State:
        _, trim = self.at_right_delim()
        if trim:
            self.pos += 2
            self.ignore()
        self.pos += len(_RIGHT_DELIM)
        item = self.this_item(RIGHT_DELIM)
        if trim:
            rest = self.input[self.pos :]
            self.pos += len(rest) - len(rest.lstrip(_SPACE_CHARS))
            self.ignore()
        self.inside_action = False
        self.item = item
        return None

    def lex_inside_action(self) -> _State:
        delim, _ = self.at_right_delim()
        if delim:
            if self.paren_depth == 0:
                return self.lex_right_delim
            self.errorf("unclosed left paren")
            return None
        ch = self.next()
        if ch == "":
            self.errorf("unclosed action")
            return None
        if _is_space(ch):
            self.backup()
            return self.lex_space
        if ch == "=":
            self.emit(ASSIGN)
            return None
        if ch == ":":
            if self.next() != "=":
                self.errorf("expected :=")
                return None
            self.emit(DECLARE)
            return None
        if ch == "|":
            self.emit(PIPE)
            return None
        if ch == '"':
            return self.lex_quote
        if ch == "`":
            return self.lex_raw_quote
        if ch == "$":
            return self.lex_variable
        if ch == "'":
            return self.lex_char
        if ch == ".":
            if self.pos < len(self.input):
                following = self.input[self.pos]
                if not "0" <= following <= "9":
                    return self.lex_field
            self.backup()
            return self.lex_number
        if ch in "+-" or "0" <= ch <= "9":
            self.backup()
            return self.lex_number
        if is_alphanumeric(ch):
            self.backup()
            return self.lex_identifier
        if ch == "(":
            self.paren_depth += 1
            self.emit(LEFT_PAREN)
            return None
        if ch == ")":
            self.paren_depth -= 1
            if self.paren_depth < 0:
                self.errorf("unexpected right paren")
                return None
            self.emit(RIGHT_PAREN)
            return None
        if ch.isascii() and ch.isprintable():
            self.emit(CHAR)
            return None
        self.errorf(f"unrecognized character in action: {go_sharp_u(ch)}")
        return None

    def lex_space(self) -> _State:
        spaces = 0
        while _is_space(self.peek()):
            self.next()
            spaces += 1
        text, pos = self.input, self.pos
        if _has_right_trim_marker(text, pos - 1) and text.startswith(_RIGHT_DELIM, pos + 1):
            self.backup()
            if spaces == 1:
                return self.lex_right_delim
        self.emit(SPACE)
        return None

    def lex_identifier(self) -> _State:
        while True:
            ch = self.next()
            if is_alphanumeric(ch):
                continue
            self.backup()
            word = self.input[self.start : self.pos]
            if not self.at_terminator():
                self.errorf(f"bad character {go_sharp_u(ch)}")
                return None
            keyword = _KEYWORDS.get(word, 0)
            if keyword > KEYWORD:
                self.emit(keyword)
            elif word[0] == ".":
                self.emit(FIELD)
            elif word in ("true", "false"):
                self.emit(BOOL)
            else:
                self.emit(IDENTIFIER)
            return None

    def lex_field(self) -> _State:
        return self._lex_field_or_variable(FIELD)

    def lex_variable(self) -> _State:
        if self.at_terminator():
            self.emit(VARIABLE)
            return None
        return self._lex_field_or_variable(VARIABLE)

    def _lex_field_or_variable(self, typ: int) -> _State:
        if self.at_terminator():
            self.emit(VARIABLE if typ == VARIABLE else DOT)
            return None
        while True:
            ch = self.next()
            if not is_alphanumeric(ch):
                self.backup()
                break
        if not self.at_terminator():
            self.errorf(f"bad character {go_sharp_u(ch)}")
            return None
        self.emit(typ)
        return None

    def lex_char(self) -> _State:
        return self._lex_quoted("'", CHAR_CONSTANT, "unterminated character constant")

    def _lex_quoted(self, quote: str, typ: int, unterminated: str) -> _State:
        """A quoted string or character constant; the opening quote is already scanned."""
        while True:
            ch = self.next()
            if ch == "\\":
                if self.next() not in ("", "\n"):
                    continue
                ch = ""
            if ch in ("", "\n"):
                self.errorf(unterminated)
                return None
            if ch == quote:
                break
        self.emit(typ)
        return None

    def lex_number(self) -> _State:
        if not self._scan_number():
            self.errorf(f"bad number syntax: {go_quote(self.input[self.start : self.pos])}")
            return None
        sign = self.peek()
        if sign in ("+", "-") and sign != "":
            if not self._scan_number() or self.input[self.pos - 1] != "i":
                self.errorf(f"bad number syntax: {go_quote(self.input[self.start : self.pos])}")
                return None
            self.emit(COMPLEX)
            return None
        self.emit(NUMBER)
        return None

    def _scan_number(self) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            if self.accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self.accept("oO"):
                digits = "01234567_"
            elif self.accept("bB"):
                digits = "01_"
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 11 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 23 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if is_alphanumeric(self.peek()):
            self.next()
            return False
        return True

    def lex_quote(self) -> _State:
        return self._lex_quoted('"', STRING, "unterminated quoted string")

    def lex_raw_quote(self) -> _State:
        while True:
            ch = self.next()
            if ch == "":
                self.errorf("unterminated raw quoted string")
                return None
            if ch == "`":
                break
        self.emit(RAW_STRING)
        return None




# ---------------------------------------------------------------------------------------------
# Nodes (node.go). ``pos`` is a character offset into the template text.

NODE_TEXT, NODE_ACTION, NODE_BOOL, NODE_CHAIN, NODE_COMMAND, NODE_DOT, NODE_ELSE, NODE_END, \
    NODE_FIELD, NODE_IDENTIFIER, NODE_IF, NODE_LIST, NODE_NIL, NODE_NUMBER, NODE_PIPE, \
    NODE_RANGE, NODE_STRING, NODE_TEMPLATE, NODE_VARIABLE, NODE_WITH, NODE_COMMENT, \
    NODE_BREAK, NODE_CONTINUE = range(23)


class Node:
    """A parse node. ``str(node)`` is Go's ``node.String()`` (built without recursing through str())."""

    __slots__ = ("pos",)
    type: int = -1

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def write(self, out: list[str]) -> None:
        raise NotImplementedError

    def __str__(self) -> str:
        out: list[str] = []
        self.write(out)
        return "".join(out)


class ListNode(Node):
    __slots__ = ("nodes",)
    type = NODE_LIST

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.nodes: list[Node] = []

    def write(self, out: list[str]) -> None:
        for node in self.nodes:
            node.write(out)


class TextNode(Node):
    __slots__ = ("text",)
    type = NODE_TEXT

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.text = text

    def write(self, out: list[str]) -> None:
        out.append(self.text)


class PipeNode(Node):
    __slots__ = ("cmds", "decl", "is_assign", "line")
    type = NODE_PIPE

    def __init__(self, pos: int, line: int) -> None:
        super().__init__(pos)
        self.line = line
        self.is_assign = False
        self.decl: list[VariableNode] = []
        self.cmds: list[CommandNode] = []

    def write(self, out: list[str]) -> None:
        if self.decl:
            for i, var in enumerate(self.decl):
                if i > 0:
                    out.append(", ")
                var.write(out)
            out.append(" = " if self.is_assign else " := ")
        for i, cmd in enumerate(self.cmds):
            if i > 0:
                out.append(" | ")
            cmd.write(out)


class ActionNode(Node):
    __slots__ = ("line", "pipe")
    type = NODE_ACTION

    def __init__(self, pos: int, line: int, pipe: PipeNode) -> None:
        super().__init__(pos)
        self.line = line
        self.pipe = pipe

    def write(self, out: list[str]) -> None:
        out.append("{{")
        self.pipe.write(out)
        out.append("}}")


class CommandNode(Node):
    __slots__ = ("args",)
    type = NODE_COMMAND

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.args: list[Node] = []

    def write(self, out: list[str]) -> None:
        for i, arg in enumerate(self.args):
            if i > 0:
                out.append(" ")
            if isinstance(arg, PipeNode):
                out.append("(")
                arg.write(out)
                out.append(")")
            else:
                arg.write(out)


class IdentifierNode(Node):
    __slots__ = ("ident",)
    type = NODE_IDENTIFIER

    def __init__(self, pos: int, ident: str) -> None:
        super().__init__(pos)
        self.ident = ident

    def write(self, out: list[str]) -> None:
        out.append(self.ident)


class VariableNode(Node):
    __slots__ = ("ident",)
    type = NODE_VARIABLE

    def __init__(self, pos: int, ident: str) -> None:
        super().__init__(pos)
        self.ident = ident.split(".")

    def write(self, out: list[str]) -> None:
        out.append(".".join(self.ident))


class DotNode(Node):
    __slots__ = ()
    type = NODE_DOT

    def write(self, out: list[str]) -> None:
        out.append(".")


class NilNode(Node):
    __slots__ = ()
    type = NODE_NIL

    def write(self, out: list[str]) -> None:
        out.append("nil")


class FieldNode(Node):
    __slots__ = ("ident",)
    type = NODE_FIELD

    def __init__(self, pos: int, ident: str) -> None:
        super().__init__(pos)
        self.ident = ident[1:].split(".")

    def write(self, out: list[str]) -> None:
        out.append("".join("." + name for name in self.ident))


class ChainNode(Node):
    __slots__ = ("field", "node")
    type = NODE_CHAIN

    def __init__(self, pos: int, node: Node) -> None:
        super().__init__(pos)
        self.node = node
        self.field: list[str] = []

    def add(self, field: str) -> None:
        self.field.append(field[1:])

    def write(self, out: list[str]) -> None:
        if isinstance(self.node, PipeNode):
            out.append("(")
            self.node.write(out)
            out.append(")")
        else:
            self.node.write(out)
        out.append("".join("." + name for name in self.field))


class BoolNode(Node):
    __slots__ = ("true",)
    type = NODE_BOOL

    def __init__(self, pos: int, true: bool) -> None:
        super().__init__(pos)
        self.true = true

    def write(self, out: list[str]) -> None:
        out.append("true" if self.true else "false")


class NumberNode(Node):
    """A numeric constant, held under every type that can represent it (Go's ideal constants)."""

    __slots__ = ("complex128", "float64", "int64", "is_complex", "is_float", "is_int", "is_uint",
                 "text", "uint64")
    type = NODE_NUMBER

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.text = text
        self.is_int = self.is_uint = self.is_float = self.is_complex = False
        self.int64 = 0
        self.uint64 = 0
        self.float64 = 0.0
        self.complex128 = 0j

    def write(self, out: list[str]) -> None:
        out.append(self.text)


class StringNode(Node):
    __slots__ = ("quoted", "text")
    type = NODE_STRING

    def __init__(self, pos: int, quoted: str, text: str) -> None:
        super().__init__(pos)
        self.quoted = quoted
        self.text = text

    def write(self, out: list[str]) -> None:
        out.append(self.quoted)


class _EndNode(Node):
    __slots__ = ()
    type = NODE_END

    def write(self, out: list[str]) -> None:
        out.append("{{end}}")


class _ElseNode(Node):
    __slots__ = ("line",)
    type = NODE_ELSE

    def __init__(self, pos: int, line: int) -> None:
        super().__init__(pos)
        self.line = line

    def write(self, out: list[str]) -> None:
        out.append("{{else}}")


class _BranchNode(Node):
    __slots__ = ("else_list", "line", "list", "pipe")
    keyword = ""

    def __init__(self, pos: int, line: int, pipe: PipeNode, list_: ListNode,
                 else_list: ListNode | None) -> None:
        super().__init__(pos)
        self.line = line
        self.pipe = pipe
        self.list = list_
        self.else_list = else_list

    def write(self, out: list[str]) -> None:
        out.append("{{" + self.keyword + " ")
        self.pipe.write(out)
        out.append("}}")
        self.list.write(out)
        if self.else_list is not None:
            out.append("{{else}}")
            self.else_list.write(out)
        out.append("{{end}}")


class IfNode(_BranchNode):
    __slots__ = ()
    type = NODE_IF
    keyword = "if"


class RangeNode(_BranchNode):
    __slots__ = ()
    type = NODE_RANGE
    keyword = "range"


class WithNode(_BranchNode):
    __slots__ = ()
    type = NODE_WITH
    keyword = "with"


class BreakNode(Node):
    __slots__ = ("line",)
    type = NODE_BREAK

    def __init__(self, pos: int, line: int) -> None:
        super().__init__(pos)
        self.line = line

    def write(self, out: list[str]) -> None:
        out.append("{{break}}")


class ContinueNode(Node):
    __slots__ = ("line",)
    type = NODE_CONTINUE

    def __init__(self, pos: int, line: int) -> None:
        super().__init__(pos)
        self.line = line

    def write(self, out: list[str]) -> None:
        out.append("{{continue}}")


class TemplateNode(Node):
    __slots__ = ("line", "name", "pipe")
    type = NODE_TEMPLATE

    def __init__(self, pos: int, line: int, name: str, pipe: PipeNode | None) -> None:
        super().__init__(pos)
        self.line = line
        self.name = name
        self.pipe = pipe

    def write(self, out: list[str]) -> None:
        out.append("{{template " + go_quote(self.name))
        if self.pipe is not None:
            out.append(" ")
            self.pipe.write(out)
        out.append("}}")


# unicode.IsSpace, which bytes.TrimSpace uses (Python's str.strip() also strips \x1c-\x1f).
_GO_SPACE: Final = (" \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
                    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def is_empty_tree(node: Node | None) -> bool:
    """Go's IsEmptyTree: nothing but space (and comments, which are never kept here)."""
    if node is None:
        return True
    if isinstance(node, ListNode):
        return all(is_empty_tree(n) for n in node.nodes)
    if isinstance(node, TextNode):
        return not node.text.strip(_GO_SPACE)
    return False


def error_location(text: str, parse_name: str, pos: int) -> str:
    """``name:line:col`` as Go's ErrorContext spells it (col: bytes since the line start)."""
    line_start = text.rfind("\n", 0, pos) + 1
    column = len(text[line_start:pos].encode("utf-8", "surrogateescape"))
    return f"{parse_name}:{1 + text.count(chr(10), 0, pos)}:{column}"


# ---------------------------------------------------------------------------------------------
# Parser (parse.go)


class ParseError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Tree:
    """One named template: its root list (``None`` once parsing failed)."""

    __slots__ = ("name", "parse_name", "root", "text")

    def __init__(self, name: str, parse_name: str, text: str) -> None:
        self.name = name
        self.parse_name = parse_name
        self.text = text
        self.root: ListNode | None = None


MAX_STACK_DEPTH: Final = 10000


class _Parser:
    """Go's Tree parsing state; a ``{{define}}`` or ``{{block}}`` gets its own, sharing the lexer."""

    __slots__ = ("action_line", "funcs", "lex", "peek_count", "range_depth", "stack_depth", "token",
                 "tree", "tree_set", "vars")

    def __init__(self, tree: Tree, lex: _Lexer, funcs: Collection[str], tree_set: dict[str, Tree]) -> None:
        self.tree = tree
        self.lex = lex
        self.funcs = funcs
        self.tree_set = tree_set
        self.token: list[Item] = [Item(EOF, 0, "", 0)] * 3
        self.peek_count = 0
        self.vars = ["$"]
        self.action_line = 0
        self.range_depth = 0
        self.stack_depth = 0

    # -- token stream --

    def next(self) -> Item:
        if self.peek_count > 0:
            self.peek_count -= 1
        else:
            self.token[0] = self.lex.next_item()
        return self.token[self.peek_count]

    def backup(self) -> None:
        self.peek_count += 1

    def backup2(self, t1: Item) -> None:
        self.token[1] = t1
        self.peek_count = 2

    def backup3(self, t2: Item, t1: Item) -> None:
        self.token[1] = t1
        self.token[2] = t2
        self.peek_count = 3

    def peek(self) -> Item:
        if self.peek_count > 0:
            return self.token[self.peek_count - 1]
        self.peek_count = 1
        self.token[0] = self.lex.next_item()
        return self.token[0]

    def next_non_space(self) -> Item:
        while True:
            token = self.next()
            if token.typ != SPACE:
                return token

    def peek_non_space(self) -> Item:
        token = self.next_non_space()
        self.backup()
        return token

    # -- errors --

    def errorf(self, message: str) -> ParseError:
        self.tree.root = None
        return ParseError(f"template: {self.tree.parse_name}:{self.token[0].line}: {message}")

    def expect(self, expected: int, context: str) -> Item:
        token = self.next_non_space()
        if token.typ != expected:
            raise self.unexpected(token, context)
        return token

    def expect_one_of(self, expected1: int, expected2: int, context: str) -> Item:
        token = self.next_non_space()
        if token.typ not in (expected1, expected2):
            raise self.unexpected(token, context)
        return token

    def unexpected(self, token: Item, context: str) -> ParseError:
        if token.typ == ERROR:
            extra = ""
            if self.action_line != 0 and self.action_line != token.line:
                extra = f" in action started at {self.tree.parse_name}:{self.action_line}"
                if token.val.endswith(" action"):
                    extra = extra[len(" in action") :]
            return self.errorf(f"{token}{extra}")
        return self.errorf(f"unexpected {token} in {context}")

    # -- grammar --

    def add(self) -> None:
        existing = self.tree_set.get(self.tree.name)
        if existing is None or is_empty_tree(existing.root):
            self.tree_set[self.tree.name] = self.tree
            return
        if not is_empty_tree(self.tree.root):
            raise self.errorf(f"template: multiple definition of template {go_quote(self.tree.name)}")

    def parse(self) -> None:
        root = ListNode(self.peek().pos)
        self.tree.root = root
        while self.peek().typ != EOF:
            if self.peek().typ == LEFT_DELIM:
                delim = self.next()
                if self.next_non_space().typ == DEFINE:
                    definition = _Parser(Tree("definition", self.tree.parse_name, self.tree.text),
                                         self.lex, self.funcs, self.tree_set)
                    definition.parse_definition()
                    continue
                self.backup2(delim)
            node = self.text_or_action()
            if node.type in (NODE_END, NODE_ELSE):
                raise self.errorf(f"unexpected {node}")
            root.nodes.append(node)

    def parse_definition(self) -> None:
        context = "define clause"
        name = self.expect_one_of(STRING, RAW_STRING, context)
        unquoted = unquote(name.val)
        if unquoted is None:
            raise self.errorf("invalid syntax")
        self.tree.name = unquoted
        self.expect(RIGHT_DELIM, context)
        root, end = self.item_list()
        self.tree.root = root
        if end.type != NODE_END:
            raise self.errorf(f"unexpected {end} in {context}")
        self.add()

    def item_list(self) -> tuple[ListNode, Node]:
        list_ = ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ != EOF:
            node = self.text_or_action()
            if node.type in (NODE_END, NODE_ELSE):
                return list_, node
            list_.nodes.append(node)
        raise self.errorf("unexpected EOF")

    def text_or_action(self) -> Node:
        token = self.next_non_space()
        if token.typ == TEXT:
            return TextNode(token.pos, token.val)
        if token.typ == LEFT_DELIM:
            self.action_line = token.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        raise self.unexpected(token, "input")

    def action(self) -> Node:
        token = self.next_non_space()
        typ = token.typ
        if typ == BLOCK:
            return self.block_control()
        if typ == BREAK:
            return self.break_control(token.pos, token.line, "break")
        if typ == CONTINUE:
            return self.break_control(token.pos, token.line, "continue")
        if typ == ELSE:
            return self.else_control()
        if typ == END:
            return _EndNode(self.expect(RIGHT_DELIM, "end").pos)
        if typ == IF:
            return IfNode(*self.parse_control("if"))
        if typ == RANGE:
            return RangeNode(*self.parse_control("range"))
        if typ == TEMPLATE:
            return self.template_control()
        if typ == WITH:
            return WithNode(*self.parse_control("with"))
        self.backup()
        token = self.peek()
        return ActionNode(token.pos, token.line, self.pipeline("command", RIGHT_DELIM))

    def break_control(self, pos: int, line: int, word: str) -> Node:
        token = self.next_non_space()
        if token.typ != RIGHT_DELIM:
            raise self.unexpected(token, "{{" + word + "}}")
        if self.range_depth == 0:
            raise self.errorf("{{" + word + "}} outside {{range}}")
        return BreakNode(pos, line) if word == "break" else ContinueNode(pos, line)

    def pipeline(self, context: str, end: int) -> PipeNode:
        token = self.peek_non_space()
        pipe = PipeNode(token.pos, token.line)
        while True:  # decls: Go's goto loop
            v = self.peek_non_space()
            if v.typ != VARIABLE:
                break
            self.next()
            token_after_variable = self.peek()
            following = self.peek_non_space()
            if following.typ in (ASSIGN, DECLARE):
                pipe.is_assign = following.typ == ASSIGN
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, v.val))
                self.vars.append(v.val)
                break
            if following.typ == CHAR and following.val == ",":
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, v.val))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in (VARIABLE, RIGHT_DELIM, RIGHT_PAREN):
                        continue
                    raise self.errorf("range can only initialize variables")
                raise self.errorf(f"too many declarations in {context}")
            if token_after_variable.typ == SPACE:
                self.backup3(v, token_after_variable)
            else:
                self.backup2(v)
            break
        while True:
            token = self.next_non_space()
            if token.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if token.typ in (BOOL, CHAR_CONSTANT, COMPLEX, DOT, FIELD, IDENTIFIER, NUMBER, NIL,
                             RAW_STRING, STRING, VARIABLE, LEFT_PAREN):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                raise self.unexpected(token, context)

    def check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            raise self.errorf(f"missing value for {context}")
        for i, cmd in enumerate(pipe.cmds[1:]):
            if cmd.args[0].type in (NODE_BOOL, NODE_DOT, NODE_NIL, NODE_NUMBER, NODE_STRING):
                raise self.errorf(f"non executable command in pipeline stage {i + 2}")

    def parse_control(self, context: str) -> tuple[int, int, PipeNode, ListNode, ListNode | None]:
        mark = len(self.vars)
        try:
            pipe = self.pipeline(context, RIGHT_DELIM)
            if context == "range":
                self.range_depth += 1
            list_, following = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list: ListNode | None = None
            if following.type == NODE_ELSE:
                if context == "if" and self.peek().typ == IF:
                    self.next()
                    else_list = ListNode(following.pos)
                    else_list.nodes.append(IfNode(*self.parse_control("if")))
                elif context == "with" and self.peek().typ == WITH:
                    self.next()
                    else_list = ListNode(following.pos)
                    else_list.nodes.append(WithNode(*self.parse_control("with")))
                else:
                    else_list, following = self.item_list()
                    if following.type != NODE_END:
                        raise self.errorf(f"expected end; found {following}")
            return pipe.pos, pipe.line, pipe, list_, else_list
        finally:
            del self.vars[mark:]

    def else_control(self) -> Node:
        peek = self.peek_non_space()
        if peek.typ in (IF, WITH):
            return _ElseNode(peek.pos, peek.line)
        token = self.expect(RIGHT_DELIM, "else")
        return _ElseNode(token.pos, token.line)

    def block_control(self) -> Node:
        context = "block clause"
        token = self.next_non_space()
        name = self.parse_template_name(token, context)
        pipe = self.pipeline(context, RIGHT_DELIM)
        block = _Parser(Tree(name, self.tree.parse_name, self.tree.text), self.lex, self.funcs,
                        self.tree_set)
        root, end = block.item_list()
        block.tree.root = root
        if end.type != NODE_END:
            raise self.errorf(f"unexpected {end} in {context}")
        block.add()
        return TemplateNode(token.pos, token.line, name, pipe)

    def template_control(self) -> Node:
        context = "template clause"
        token = self.next_non_space()
        name = self.parse_template_name(token, context)
        pipe: PipeNode | None = None
        if self.next_non_space().typ != RIGHT_DELIM:
            self.backup()
            pipe = self.pipeline(context, RIGHT_DELIM)
        return TemplateNode(token.pos, token.line, name, pipe)

    def parse_template_name(self, token: Item, context: str) -> str:
        if token.typ in (STRING, RAW_STRING):
            name = unquote(token.val)
            if name is None:
                raise self.errorf("invalid syntax")
            return name
        raise self.unexpected(token, context)

    def command(self) -> CommandNode:
        cmd = CommandNode(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            token = self.next()
            if token.typ == SPACE:
                continue
            if token.typ in (RIGHT_DELIM, RIGHT_PAREN):
                self.backup()
            elif token.typ != PIPE:
                raise self.unexpected(token, "operand")
            break
        if not cmd.args:
            raise self.errorf("empty command")
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == FIELD:
            chain = ChainNode(self.peek().pos, node)
            while self.peek().typ == FIELD:
                chain.add(self.next().val)
            if node.type == NODE_FIELD:
                return FieldNode(chain.pos, str(chain))
            if node.type == NODE_VARIABLE:
                return VariableNode(chain.pos, str(chain))
            if node.type in (NODE_BOOL, NODE_STRING, NODE_NUMBER, NODE_NIL, NODE_DOT):
                raise self.errorf(f"unexpected . after term {go_quote(str(node))}")
            return chain
        return node

    def term(self) -> Node | None:
        token = self.next_non_space()
        typ = token.typ
        if typ == IDENTIFIER:
            if token.val not in self.funcs:
                raise self.errorf(f"function {go_quote(token.val)} not defined")
            return IdentifierNode(token.pos, token.val)
        if typ == DOT:
            return DotNode(token.pos)
        if typ == NIL:
            return NilNode(token.pos)
        if typ == VARIABLE:
            return self.use_var(token.pos, token.val)
        if typ == FIELD:
            return FieldNode(token.pos, token.val)
        if typ == BOOL:
            return BoolNode(token.pos, token.val == "true")
        if typ in (CHAR_CONSTANT, COMPLEX, NUMBER):
            return self.new_number(token.pos, token.val, typ)
        if typ == LEFT_PAREN:
            if self.stack_depth >= MAX_STACK_DEPTH:
                raise self.errorf("max expression depth exceeded")
            self.stack_depth += 1
            try:
                return self.pipeline("parenthesized pipeline", RIGHT_PAREN)
            finally:
                self.stack_depth -= 1
        if typ in (STRING, RAW_STRING):
            text = unquote(token.val)
            if text is None:
                raise self.errorf("invalid syntax")
            return StringNode(token.pos, token.val, text)
        self.backup()
        return None

    def use_var(self, pos: int, name: str) -> Node:
        node = VariableNode(pos, name)
        if node.ident[0] in self.vars:
            return node
        raise self.errorf(f"undefined variable {go_quote(node.ident[0])}")

    def new_number(self, pos: int, text: str, typ: int) -> NumberNode:
        try:
            return new_number(pos, text, typ)
        except ParseError as exc:
            raise self.errorf(exc.message) from None


def parse(text: str, funcs: Collection[str], name: str = "output") -> dict[str, Tree]:
    """Parse ``text`` as template ``name``; every identifier must be in ``funcs``."""
    tree_set: dict[str, Tree] = {}
    parser = _Parser(Tree(name, name, text), _Lexer(text), funcs, tree_set)
    parser.parse()
    parser.add()
    return tree_set


# ---------------------------------------------------------------------------------------------
# Numbers: NumberNode construction (node.go newNumber) and the strconv/fmt parsing it uses.

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1


def new_number(pos: int, text: str, typ: int) -> NumberNode:
    n = NumberNode(pos, text)
    if typ == CHAR_CONSTANT:
        decoded = _unquote_char(text[1:], text[0])
        if decoded is None:
            raise ParseError("invalid syntax")
        code, _, tail = decoded
        if tail != "'":
            raise ParseError(f"malformed character constant: {text}")
        n.int64 = n.uint64 = code
        n.float64 = float(code)
        n.is_int = n.is_uint = n.is_float = True
        return n
    if typ == COMPLEX:
        n.complex128 = _scan_complex(text)
        n.is_complex = True
        _simplify_complex(n)
        return n
    if text.endswith("i"):
        imag = parse_float(text[:-1])
        if imag is not None:
            n.is_complex = True
            n.complex128 = complex(0.0, imag)
            _simplify_complex(n)
            return n
    unsigned = _parse_uint(text)
    if unsigned is not None:
        n.is_uint = True
        n.uint64 = unsigned
    signed = _parse_int(text)
    if signed is not None:
        n.is_int = True
        n.int64 = signed
        if signed == 0:
            n.is_uint = True
            n.uint64 = unsigned or 0
    if n.is_int:
        n.is_float = True
        n.float64 = float(n.int64)
    elif n.is_uint:
        n.is_float = True
        n.float64 = float(n.uint64)
    else:
        value = parse_float(text)
        if value is not None:
            if not any(c in text for c in ".eEpP"):
                raise ParseError(f"integer overflow: {go_quote(text)}")
            n.is_float = True
            n.float64 = value
            if value == math.trunc(value) and _INT64_MIN <= value < 2**63:
                n.is_int = True
                n.int64 = int(value)
            if value == math.trunc(value) and 0 <= value < 2**64:
                n.is_uint = True
                n.uint64 = int(value)
    if not (n.is_int or n.is_uint or n.is_float):
        raise ParseError(f"illegal number syntax: {go_quote(text)}")
    return n


def _simplify_complex(n: NumberNode) -> None:
    n.is_float = n.complex128.imag == 0
    if n.is_float:
        real = n.complex128.real
        n.float64 = real
        finite = math.isfinite(real)
        n.is_int = finite and real == math.trunc(real) and _INT64_MIN <= real < 2**63
        if n.is_int:
            n.int64 = int(real)
        n.is_uint = finite and real == math.trunc(real) and 0 <= real < 2**64
        if n.is_uint:
            n.uint64 = int(real)


def _parse_uint(s: str) -> int | None:
    """strconv.ParseUint(s, 0, 64); None on a syntax or range error."""
    try:
        return parse_go_uint(s)
    except ValueError:
        return None


def _parse_int(s: str) -> int | None:
    """strconv.ParseInt(s, 0, 64); None on a syntax or range error."""
    try:
        return parse_go_int(s)
    except ValueError:
        return None


def parse_float(s: str) -> float | None:
    """strconv.ParseFloat(s, 64); None on a syntax or range error."""
    try:
        return parse_go_float(s)
    except ValueError:
        return None


class _ScanError(Exception):
    pass


def _float_token(s: str, pos: int) -> tuple[str, int]:
    """fmt's floatToken: the longest prefix that looks like a float."""
    start = pos

    def accept(chars: str) -> bool:
        nonlocal pos
        if pos < len(s) and s[pos] in chars:
            pos += 1
            return True
        return False

    if accept("nN") and accept("aA") and accept("nN"):
        return s[start:pos], pos
    accept("+-")
    if accept("iI") and accept("nN") and accept("fF"):
        return s[start:pos], pos
    digits, exp = "0123456789_", "eEpP"
    if accept("0") and accept("xX"):
        digits, exp = "0123456789aAbBcCdDeEfF_", "pP"
    while accept(digits):
        pass
    if accept("."):
        while accept(digits):
            pass
    if accept(exp):
        accept("+-")
        while accept("0123456789_"):
            pass
    return s[start:pos], pos


def _convert_float(text: str) -> float:
    """fmt's convertFloat: ParseFloat, plus its own decimal mantissa with a ``p`` exponent."""
    try:
        p = text.find("p")
        if p >= 0 and "x" not in text and "X" not in text:
            try:
                mantissa = parse_go_float(text[:p])
                exponent = parse_go_int(text[p + 1 :], base=10)
            except ValueError as exc:  # fmt puts the whole token into the message
                reason = str(exc).rsplit(": ", 1)[1]
                raise ValueError(f"strconv.ParseFloat: parsing {go_quote(text)}: {reason}") from None
            return math.ldexp(mantissa, exponent)
        return parse_go_float(text)
    except ValueError as exc:
        raise _ScanError(str(exc)) from None


def _scan_complex(text: str) -> complex:
    """fmt.Sscan into a complex128, as newNumber does for ``1+2i``."""
    try:
        pos = 0
        parens = text.startswith("(")
        pos += parens
        real, pos = _float_token(text, pos)
        if pos >= len(text) or text[pos] not in "+-":
            raise _ScanError("syntax error scanning complex number")
        sign = text[pos]
        imag, pos = _float_token(text, pos + 1)
        if pos >= len(text) or text[pos] != "i":
            raise _ScanError("syntax error scanning complex number")
        pos += 1
        if parens and (pos >= len(text) or text[pos] != ")"):
            raise _ScanError("syntax error scanning complex number")
        return complex(_convert_float(real), _convert_float(sign + imag))
    except _ScanError as exc:
        raise ParseError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Quoting: strconv.Unquote, strconv.UnquoteChar and the quoting used in messages.

_SIMPLE_ESCAPES: Final = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                          "v": "\v", "\\": "\\"}


def _unquote_char(s: str, quote: str) -> tuple[int, bool, str] | None:
    """strconv.UnquoteChar: (code, multibyte, tail), or None on a syntax error."""
    if not s:
        return None
    ch = s[0]
    if ch == quote and quote in "'\"":
        return None
    if not ch.isascii():
        return _rune_of(ch), True, s[1:]
    if ch != "\\":
        return ord(ch), False, s[1:]
    if len(s) <= 1:
        return None
    esc, rest = s[1], s[2:]
    if esc in _SIMPLE_ESCAPES:
        return ord(_SIMPLE_ESCAPES[esc]), False, rest
    if esc in "xuU":
        width = {"x": 2, "u": 4, "U": 8}[esc]
        digits = rest[:width]
        if len(digits) < width or any(d not in "0123456789abcdefABCDEF" for d in digits):
            return None
        code = int(digits, 16)
        if esc == "x":
            return code, False, rest[width:]
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return None
        return code, True, rest[width:]
    if "0" <= esc <= "7":
        digits = s[1:4]
        if len(digits) < 3 or any(not "0" <= d <= "7" for d in digits) or int(digits, 8) > 255:
            return None
        return int(digits, 8), False, s[4:]
    if esc in "'\"":
        if esc != quote:
            return None
        return ord(esc), False, rest
    return None


def _rune_of(ch: str) -> int:
    if "\udc80" <= ch <= "\udcff":
        return 0xFFFD  # a byte that is not UTF-8 decodes to RuneError
    return ord(ch)


def _has_bad_bytes(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def unquote(s: str) -> str | None:
    """strconv.Unquote for ``"..."``, raw and ``'.'`` literals; None on a syntax error."""
    if len(s) < 2:
        return None
    quote = s[0]
    end = s.find(quote, 1)
    if end < 0:
        return None
    end += 1
    if quote == "`":
        return s[1 : end - 1].replace("\r", "") if end == len(s) else None
    if quote not in "\"'":
        return None
    head = s[:end]
    if "\\" not in head and "\n" not in head:
        body = s[1 : end - 1]
        valid = not _has_bad_bytes(body) if quote == '"' else (len(body) == 1 and not _has_bad_bytes(body))
        if valid:
            return body if end == len(s) else None
    out = bytearray()
    rest = s[1:]
    while rest and rest[0] != quote:
        decoded = _unquote_char(rest, quote)
        if rest[0] == "\n" or decoded is None:
            return None
        code, multibyte, rest = decoded
        if code < 0x80 or not multibyte:
            out.append(code)
        else:
            out += chr(code).encode("utf-8")
        if quote == "'":
            break
    if not rest or rest[0] != quote or len(rest) != 1:
        return None
    return out.decode("utf-8", "surrogateescape")


def _go_quote_prefix(s: str, runes: int) -> str:
    """fmt's ``%.Nq``: quote the first N runes."""
    return go_quote(s[:runes])


def go_sharp_u(ch: str) -> str:
    """fmt's ``%#U`` of one rune: ``U+0023 '#'``, without the character when it is not printable."""
    code = _rune_of(ch)
    if go_is_print(chr(code)):
        return f"U+{code:04X} '{chr(code)}'"
    return f"U+{code:04X}"
