"""JSONPath: kubectl's ``-o jsonpath`` dialect, compiled once and rendered per event.

Where it sits: ``templates.compile_template`` hands it the template text for the
``jsonpath``, ``jsonpath-as-json`` and ``jsonpath-file`` formats, in the parent at start-up
and in every worker's ``runner``; ``render`` then runs once per event in the worker.

In: template text; then decoded JSON objects. Out: the text kubectl's ``-o jsonpath=...``
printer would write for that object (no trailing newline). Bytes that are not UTF-8 (from
``{"\xff"}`` escapes) come out as surrogate escapes, which ``os.fsencode`` and
``subprocess`` turn back into the same bytes.

Invariants:

* Semantics follow ``k8s.io/client-go/util/jsonpath`` (parser and evaluator ported node for
  node, including its quirks: ``['a.b']`` means two fields, out-of-range indexes fail even
  when missing keys are allowed, an empty ``{range}`` still evaluates its body once, and
  error messages are the same text). Values print as Go prints them: strings raw, integers
  as integers, floats as ``fmt`` does (``1e+06``), ``null`` for null, maps and lists as
  compact JSON with sorted keys.
* Each render starts from a clean state. (kubectl's evaluator keeps ``{range}`` state between
  two objects printed by the same printer, so oc observe fails with "not in range, nothing to
  end" on the second event of any template holding ``{range}``; fastobs renders every event
  as kubectl renders a single object.)
* Where Go iterates a map in random order (``.*`` and ``..`` over maps), fastobs uses sorted
  key order, so output is stable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from fastobs.encoding import go_format_float, go_json, go_json_indented
from fastobs.errors import TemplateError
from fastobs.quoting import go_quote

__all__ = ["compile_jsonpath"]


def compile_jsonpath(text: str, *, allow_missing: bool, as_json: bool) -> JSONPathTemplate:
    """Parse ``text`` once; raise :class:`TemplateError` with kubectl's message when it does not parse."""
    try:
        root = _Parser(text).parse()
    except _ParseError as exc:
        raise TemplateError(f"error parsing jsonpath {text}, {exc.reason}") from None
    return JSONPathTemplate(text, root, allow_missing=allow_missing, as_json=as_json)


# ---------------------------------------------------------------------------------------------
# Values. Go distinguishes a nil interface (JSON null, printed "null") from the zero
# reflect.Value that a range body sees for a null item or an empty range ("<no value>").


class _Invalid:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid reflect.Value>"


_INVALID: Final = _Invalid()
_MISSING: Final = object()
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class _Byte(int):
    """A byte of a string reached through ``.*`` or ``..`` (Go ``uint8``)."""

    __slots__ = ()


class _GoInt(int):
    """An integer written in the template (Go ``int``, where object integers are ``int64``)."""

    __slots__ = ()


class _ExecError(Exception):
    """An evaluation error; ``partial`` is what Go's function returned alongside the error."""

    def __init__(self, message: str, partial: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.partial = partial if partial is not None else []


class _State:
    """The range bookkeeping of one render (Go keeps it on the JSONPath object)."""

    __slots__ = ("allow_missing", "begin_range", "end_range", "in_range", "last_end")

    def __init__(self, allow_missing: bool) -> None:
        self.allow_missing = allow_missing
        self.begin_range = 0
        self.in_range = 0
        self.end_range = 0
        self.last_end = -1


# ---------------------------------------------------------------------------------------------
# Nodes: one class per client-go node type, each evaluating a list of values to a list.


class _Node:
    __slots__ = ()

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        raise NotImplementedError


class _List(_Node):
    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes: list[_Node] = []

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        # An error propagates with the failing node's partial result, as Go's evalList returns it.
        for node in self.nodes:
            values = node.eval(st, values)
        return values


class _Text(_Node):
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        return [self.text]


class _Literal(_Node):
    """IntNode, FloatNode and BoolNode: the constant once per input value."""

    __slots__ = ("value",)

    def __init__(self, value: int | float | bool) -> None:
        self.value = value

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        return [self.value] * len(values)


class _Field(_Node):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        if not values:
            return []
        name = self.name
        results = []
        for value in values:
            if type(value) is dict:
                found = value.get(name, _MISSING)
                if found is not _MISSING:
                    results.append(found)
        if not results and not st.allow_missing:
            raise _ExecError(f"{name} is not found")
        return results


class _Param:
    __slots__ = ("derived", "known", "value")

    def __init__(self, value: int = 0, known: bool = False, derived: bool = False) -> None:
        self.value = value
        self.known = known
        self.derived = derived


class _Array(_Node):
    __slots__ = ("params",)

    def __init__(self, params: tuple[_Param, _Param, _Param]) -> None:
        self.params = params

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        result: list[Any] = []
        first, second, third = self.params
        for value in values:
            if value is None or value is _INVALID:
                continue
            if type(value) is not list:
                raise _ExecError(f"{_go_type(value)} is not array or slice", values)
            length = len(value)
            start = first.value if first.known else 0
            if start < 0:
                start += length
            end = second.value if second.known else length
            if end < 0 or (end == 0 and second.derived):
                end += length
            if end == start:
                # Go returns at once here, dropping any later input values.
                return result
            if start >= length or start < 0:
                raise _ExecError(f"array index out of bounds: index {start}, length {length}", values)
            if end > length or end < 0:
                raise _ExecError(f"array index out of bounds: index {end - 1}, length {length}", values)
            if start > end:
                raise _ExecError(f"starting index {start} is greater than ending index {end}", values)
            step = 1
            if third.known:
                if third.value <= 0:
                    raise _ExecError("step must be > 0", values)
                step = third.value
            result.extend(value[start:end:step])
        return result


def _children(value: Any) -> list[Any]:
    kind = type(value)
    if kind is dict:
        return [value[key] for key in sorted(value)]
    if kind is list:
        return value  # type: ignore[no-any-return]
    if kind is str:
        # Go indexes a string by byte.
        return [_Byte(b) for b in value.encode("utf-8", "surrogateescape")]
    return []


class _Wildcard(_Node):
    __slots__ = ()

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        results: list[Any] = []
        for value in values:
            if value is not None:
                results.extend(_children(value))
        return results


class _Recursive(_Node):
    __slots__ = ()

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        result: list[Any] = []
        for value in values:
            if value is None:
                continue
            children = _children(value)
            if children:
                result.append(value)
                result.extend(self.eval(st, children))
        return result


class _Union(_Node):
    __slots__ = ("lists",)

    def __init__(self, lists: list[_List]) -> None:
        self.lists = lists

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        result: list[Any] = []
        for part in self.lists:
            try:
                result.extend(part.eval(st, values))
            except _ExecError as exc:
                raise _ExecError(exc.message, values) from None
        return result


class _Identifier(_Node):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        if self.name == "range":
            st.begin_range += 1
            return values
        if self.name == "end":
            if st.in_range > 0:
                st.end_range += 1
                return []
            raise _ExecError("not in range, nothing to end")
        raise _ExecError(f"unrecognized identifier {self.name}", values)


class _Filter(_Node):
    __slots__ = ("left", "op", "right")

    def __init__(self, left: _List, right: _List, op: str) -> None:
        self.left = left
        self.right = right
        self.op = op

    def eval(self, st: _State, values: list[Any]) -> list[Any]:
        results: list[Any] = []
        for value in values:
            if type(value) is not list:
                raise _ExecError(f"{_go_v(value)} is not array or slice and cannot be filtered", values)
            for item in value:
                if self._keep(st, item, values, results):
                    results.append(item)
        return results

    def _keep(self, st: _State, item: Any, values: list[Any], results: list[Any]) -> bool:
        temp = [item]
        if self.op == "exists":
            try:
                lefts = self.left.eval(st, temp)
            except _ExecError as exc:
                lefts = exc.partial  # Go tests what the failing step returned
            return len(lefts) > 0
        left = self._one_side(st, self.left, temp, values)
        if left is _MISSING:
            return False
        right = self._one_side(st, self.right, temp, values)
        if right is _MISSING:
            return False
        compare = _COMPARISONS.get(self.op)
        if compare is None:
            raise _ExecError(f"unrecognized filter operator {self.op}", results)
        try:
            return compare(left, right)
        except _ExecError as exc:
            raise _ExecError(exc.message, results) from None

    @staticmethod
    def _one_side(st: _State, side: _List, temp: list[Any], values: list[Any]) -> Any:
        try:
            found = side.eval(st, temp)
        except _ExecError as exc:
            raise _ExecError(exc.message, values) from None
        if not found:
            return _MISSING
        if len(found) > 1:
            raise _ExecError("can only compare one element at a time", values)
        return found[0]


# ---------------------------------------------------------------------------------------------
# Filter comparisons: client-go's fork of text/template's eq/lt helpers.


_KINDS: Final[dict[type, type]] = {bool: bool, int: int, _GoInt: int, float: float, str: str, _Byte: _Byte}


def _kind(value: Any) -> type:
    kind = _KINDS.get(type(value))
    if kind is None:
        raise _ExecError("invalid type for comparison")
    return kind


def _same_kind(left: Any, right: Any) -> type:
    """The common kind of two operands; Go compares signed and unsigned integers with each other."""
    kind, other = _kind(left), _kind(right)
    if kind is not other and {kind, other} != {int, _Byte}:
        raise _ExecError("incompatible types for comparison")
    return kind


def _equal(left: Any, right: Any) -> bool:
    _same_kind(left, right)
    return bool(left == right)


def _less(left: Any, right: Any) -> bool:
    kind = _same_kind(left, right)
    if kind is bool:
        raise _ExecError("invalid type for comparison")
    return bool(left < right)


def _less_equal(left: Any, right: Any) -> bool:
    return _less(left, right) or _equal(left, right)


_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": _less,
    "<=": _less_equal,
    ">": lambda a, b: not _less_equal(a, b),
    ">=": lambda a, b: not _less(a, b),
}


# ---------------------------------------------------------------------------------------------
# Go spellings of values: %v (text output, error messages), %#v (error dump), type names.


def _text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is _GoInt or kind is _Byte:
        if _INT64_MIN <= value <= _INT64_MAX:
            return str(value)
        return go_format_float(float(value))
    if kind is float:
        return go_format_float(value)
    if value is None:
        return "null"
    if value is _INVALID:
        return "<no value>"
    return go_json(value).decode("utf-8", "surrogateescape")


def _go_type(value: Any) -> str:
    names = {dict: "map[string]interface {}", list: "[]interface {}", str: "string", bool: "bool",
             int: "int64", float: "float64", _Byte: "uint8", _GoInt: "int"}
    return names.get(type(value), "interface {}")


def _go_v(value: Any) -> str:
    if value is None:
        return "<nil>"
    if value is _INVALID:
        return "<invalid reflect.Value>"
    if type(value) is dict:
        return "map[" + " ".join(f"{k}:{_go_v(value[k])}" for k in sorted(value)) + "]"
    if type(value) is list:
        return "[" + " ".join(_go_v(v) for v in value) + "]"
    if type(value) is str:
        return value
    return _text(value)


def _go_sharp_v(value: Any) -> str:
    if value is None:
        return "interface {}(nil)"
    if type(value) is dict:
        inner = ", ".join(f"{go_quote(k)}:{_go_sharp_v(value[k])}" for k in sorted(value))
        return "map[string]interface {}{" + inner + "}"
    if type(value) is list:
        return "[]interface {}{" + ", ".join(_go_sharp_v(v) for v in value) + "}"
    if type(value) is str:
        return go_quote(value)
    return _text(value)


# ---------------------------------------------------------------------------------------------
# Evaluation driver: FindResults and PrintResults.


class JSONPathTemplate:
    __slots__ = ("_as_json", "_nodes", "_simple", "allow_missing", "text")

    def __init__(self, text: str, root: list[_Node], *, allow_missing: bool, as_json: bool) -> None:
        self.text = text
        self._nodes = root
        self.allow_missing = allow_missing
        self._as_json = as_json
        self._simple = _simple_plan(root) if not as_json else None

    def render(self, obj: Any) -> str:
        if self._simple is not None:
            out = self._render_simple(obj, self._simple)
            if out is not None:
                return out
        try:
            groups = self._find(_State(self.allow_missing), obj, 0)
        except _ExecError as exc:
            raise TemplateError(self._error_message(exc.message, obj)) from None
        if self._as_json:
            return "".join(_json_group(group) for group in groups)
        return "".join(map(_group_text, groups))

    def _render_simple(self, obj: Any, plan: list[str | tuple[str | int, ...]]) -> str | None:
        """Text and ``{.a.b[0].c}`` chains: no state, no lists built. None: use the general path."""
        parts = []
        for step in plan:
            if isinstance(step, str):
                parts.append(step)
                continue
            value = _follow(obj, step)
            if value is _MISSING:
                if not self.allow_missing:
                    return None  # the general path raises kubectl's error
                continue
            if value is _FALLBACK:
                return None
            parts.append(_text(value))
        return "".join(parts)

    def _find(self, st: _State, data: Any, start: int) -> list[list[Any]]:
        """Port of JSONPath.FindResults over the top-level nodes from index ``start``."""
        nodes = self._nodes
        cur = [data]
        full: list[list[Any]] = []
        i = start
        while i < len(nodes):
            results = nodes[i].eval(st, cur)
            if st.end_range > 0 and st.end_range <= st.in_range:
                st.end_range -= 1
                st.last_end = i
                break
            if st.begin_range > 0:
                st.begin_range -= 1
                st.in_range += 1
                if results:
                    for value in results:
                        full.extend(self._find(st, _INVALID if value is None else value, i + 1))
                else:
                    # Go still walks the body once (on no value) to find where the range ends.
                    self._find(st, _INVALID, i + 1)
                st.in_range -= 1
                if i < st.last_end < len(nodes):
                    i = st.last_end
                i += 1
                continue
            full.append(results)
            i += 1
        return full

    def _error_message(self, reason: str, obj: Any) -> str:
        return (
            f"unable to write arguments: error executing jsonpath {go_quote(self.text)}: "
            f"Error executing template: {reason}. Printing more information for debugging the template:\n"
            f"\ttemplate was:\n\t\t{self.text}\n"
            f"\tobject given to jsonpath engine was:\n\t\t{_go_sharp_v(obj)}"
        )


def _group_text(group: list[Any]) -> str:
    """PrintResults: the values of one action, separated by one space."""
    return _text(group[0]) if len(group) == 1 else " ".join(map(_text, group))


def _json_group(group: list[Any]) -> str:
    values = [None if value is _INVALID else value for value in group]
    return go_json_indented(values).decode("utf-8", "surrogateescape") + "\n"


_FALLBACK: Final = object()


def _follow(value: Any, path: tuple[str | int, ...]) -> Any:
    """Walk field names and single indexes; _MISSING when nothing is found, _FALLBACK on errors."""
    for step in path:
        if isinstance(step, str):
            if type(value) is not dict:
                return _MISSING
            value = value.get(step, _MISSING)
            if value is _MISSING:
                return _MISSING
            continue
        if value is None:
            return _MISSING
        if type(value) is not list:
            return _FALLBACK  # kubectl fails: "... is not array or slice"
        index = step + len(value) if step < 0 else step
        if not 0 <= index < len(value):
            return _FALLBACK  # kubectl fails: "array index out of bounds"
        value = value[index]
    return value


def _simple_step(node: _Node) -> str | int | None:
    if type(node) is _Field:
        return node.name
    if type(node) is _Array:
        first, second, third = node.params
        if first.known and second.derived and not third.known:
            return first.value
    return None


def _simple_plan(root: list[_Node]) -> list[str | tuple[str | int, ...]] | None:
    """Plan for templates made only of text and ``{.a.b[0].c}`` actions, else None."""
    plan: list[str | tuple[str | int, ...]] = []
    for node in root:
        if isinstance(node, _Text):
            plan.append(node.text)
            continue
        if not isinstance(node, _List) or not node.nodes:
            return None
        steps = tuple(_simple_step(n) for n in node.nodes)
        if any(step is None for step in steps):
            return None
        plan.append(tuple(step for step in steps if step is not None))
    return plan


# ---------------------------------------------------------------------------------------------
# Parser: a loop-based port of client-go's recursive-descent jsonpath parser.


class _ParseError(Exception):
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
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _parse_action(text: str) -> _List:
    """client-go's parseAction: parse ``{text}`` and return its first action."""
    root = _Parser("{" + text + "}").parse()
    first = root[0]
    assert isinstance(first, _List)
    return first


class _Parser:
    __slots__ = ("input", "pos", "root", "start", "width")

    def __init__(self, text: str) -> None:
        self.input = text
        self.pos = 0
        self.start = 0
        self.width = 0
        self.root: list[_Node] = []

    def parse(self) -> list[_Node]:
        text = self.input
        while True:
            brace = text.find("{", self.pos)
            if brace < 0:
                if len(text) > self.start:
                    self.root.append(_Text(text[self.start :]))
                return self.root
            if brace > self.start:
                self.root.append(_Text(text[self.start : brace]))
            self.pos = brace + 1
            self.start = self.pos
            action = _List()
            self.root.append(action)
            self._parse_inside_action(action)

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

    def _parse_inside_action(self, cur: _List) -> None:
        while True:
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

    def _parse_token(self, cur: _List, ch: str) -> None:
        if ch == "" or ch in "\r\n":
            raise _ParseError("unclosed action")
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
            raise _ParseError(f"unrecognized character in action: {_go_sharp_u(ch)}")

    def _parse_identifier(self, cur: _List) -> None:
        while not _is_terminator(self._next()):
            pass
        self._backup()
        value = self._consume()
        if value in ("true", "false"):
            cur.nodes.append(_Literal(value == "true"))
        else:
            cur.nodes.append(_Identifier(value))

    def _parse_recursive(self, cur: _List) -> None:
        if cur.nodes and isinstance(cur.nodes[-1], _Recursive):
            raise _ParseError("invalid multiple recursive descent")
        self.pos += 2
        self._consume()
        cur.nodes.append(_Recursive())
        if _is_alnum(self._peek()):
            self._parse_field(cur)

    def _parse_number(self, cur: _List) -> None:
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
            cur.nodes.append(_Literal(_GoInt(as_int)))
            return
        if _FLOAT.fullmatch(value) is not None:
            as_float = float(value)
            if as_float not in (float("inf"), float("-inf")):
                cur.nodes.append(_Literal(as_float))
                return
        raise _ParseError(f"cannot parse number {value}")

    def _parse_array(self, cur: _List) -> None:
        while True:
            ch = self._next()
            if ch in ("", "\n"):
                raise _ParseError("unterminated array")
            if ch == "]":
                break
        text = self._consume()[1:-1]
        if text == "*":
            text = ":"
        parts = text.split(",")
        if len(parts) > 1:
            cur.nodes.append(_Union([_parse_action("[" + part.strip(" ") + "]") for part in parts]))
            return
        key = _DICT_KEY.fullmatch(text)
        if key is not None:
            cur.nodes.extend(_parse_action("." + key.group(1)).nodes)
            return
        cur.nodes.append(_Array(_slice_params(text)))

    def _parse_filter(self, cur: _List) -> None:
        self.pos += 3
        self._consume()
        begin = end = False
        pair = ""
        while True:
            ch = self._next()
            if ch in ("", "\n"):
                raise _ParseError("unterminated filter")
            if ch in "\"'":
                if not begin:
                    begin, pair = True, ch
                    continue
                if self.input[self.pos - 2] != "\\" and ch == pair:
                    end = True
            elif ch == ")" and begin == end:
                break
        if self._next() != "]":
            raise _ParseError("unclosed array expect ]")
        text = self._consume()[:-2]
        match = _FILTER.fullmatch(text)
        if match is None:
            cur.nodes.append(_Filter(_parse_action(text), _List(), "exists"))
        else:
            left, op, right = match.groups()
            cur.nodes.append(_Filter(_parse_action(left), _parse_action(right), op))

    def _parse_quote(self, cur: _List, quote: str) -> None:
        while True:
            ch = self._next()
            if ch in ("", "\n"):
                raise _ParseError("unterminated quoted string")
            if ch == quote and self.input[self.pos - 2] != "\\":
                break
        value = self._consume()
        unquoted = _unquote_extend(value)
        if unquoted is None:
            raise _ParseError(f"unquote string {value} error invalid syntax")
        cur.nodes.append(_Text(unquoted))

    def _parse_field(self, cur: _List) -> None:
        self._consume()
        while self._advance():
            pass
        value = self._consume()
        cur.nodes.append(_Wildcard() if value == "*" else _Field(value.replace("\\", "")))

    def _advance(self) -> bool:
        ch = self._next()
        if ch == "\\":
            self._next()
        elif _is_terminator(ch):
            self._backup()
            return False
        return True


def _slice_params(text: str) -> tuple[_Param, _Param, _Param]:
    match = _SLICE.fullmatch(text)
    if match is None:
        raise _ParseError(f"invalid array index {text}")
    raw = [group or "" for group in match.groups()]
    params = (_Param(), _Param(), _Param())
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
                raise _ParseError(f"array index {value} is not a number")
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
