"""JSONPath nodes: client-go's evaluator, one class per node type, and Go's spelling of values.

Where it sits: ``jsonpath_parser`` builds a tree of these nodes from the template text once;
``jsonpath`` evaluates it for every event (in the worker), node by node, and prints the
values it finds with :func:`print_value`.

In: a list of decoded JSON values (each node maps the values before it to the values after
it). Out: a list of values, or :class:`ExecError` with client-go's message and the partial
result Go returns beside its error.

Invariant: each node does what its ``k8s.io/client-go/util/jsonpath`` counterpart does,
quirks included (``.*`` and ``..`` over a map walk its keys in sorted order where Go's order
is random); the only state is the :class:`State` of one render.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fastobs.encoding import go_json
from fastobs.gocompat import go_format_float, go_quote

# ---------------------------------------------------------------------------------------------
# Values. Go distinguishes a nil interface (JSON null, printed "null") from the zero
# reflect.Value that a range body sees for a null item or an empty range ("<no value>").


class _Invalid:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid reflect.Value>"


INVALID: Final = _Invalid()
MISSING: Final = object()
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


class _Byte(int):
    """A byte of a string reached through ``.*`` or ``..`` (Go ``uint8``)."""

    __slots__ = ()


class GoInt(int):
    """An integer written in the template (Go ``int``, where object integers are ``int64``)."""

    __slots__ = ()


class ExecError(Exception):
    """An evaluation error; ``partial`` is what Go's function returned alongside the error.

    ``message`` is client-go's text; a message that quotes object data must also give
    ``redacted``, the same reason without it (the object may be a Secret). ``path`` is the
    template text up to the failing step, filled in by the enclosing action.
    """

    def __init__(self, message: str, partial: list[Any] | None = None, *, redacted: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.partial = partial if partial is not None else []
        self.redacted = message if redacted is None else redacted
        self.path = path

    def with_partial(self, partial: list[Any]) -> ExecError:
        """The same error, returned beside another partial result (Go's re-wrapped error)."""
        return ExecError(self.message, partial, redacted=self.redacted, path=self.path)


class State:
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


class Node:
    __slots__ = ()

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        raise NotImplementedError


class ListNode(Node):
    __slots__ = ("ends", "nodes", "text")

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.text = ""
        """The action's text between its braces (set by the parser)."""
        self.ends: list[int] = []
        """Where each node's text ends in ``text``: an error names the path up to its node."""

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        # An error propagates with the failing node's partial result, as Go's evalList returns it.
        node = None
        try:
            for node in self.nodes:
                values = node.eval(st, values)
        except ExecError as exc:
            if self.ends and node is not None:  # the outermost action names the path: it runs last
                exc.path = self.text[: self.ends[self.nodes.index(node)]].strip()
            raise
        return values


class TextNode(Node):
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        return [self.text]


class LiteralNode(Node):
    """IntNode, FloatNode and BoolNode: the constant once per input value."""

    __slots__ = ("value",)

    def __init__(self, value: int | float | bool) -> None:
        self.value = value

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        return [self.value] * len(values)


class FieldNode(Node):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        if not values:
            return []
        name = self.name
        results = []
        for value in values:
            if type(value) is dict:
                found = value.get(name, MISSING)
                if found is not MISSING:
                    results.append(found)
        if not results and not st.allow_missing:
            raise ExecError(f"{name} is not found")
        return results


class Param:
    __slots__ = ("derived", "known", "value")

    def __init__(self, value: int = 0, known: bool = False, derived: bool = False) -> None:
        self.value = value
        self.known = known
        self.derived = derived


class ArrayNode(Node):
    __slots__ = ("params",)

    def __init__(self, params: tuple[Param, Param, Param]) -> None:
        self.params = params

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        result: list[Any] = []
        first, second, third = self.params
        for value in values:
            if value is None or value is INVALID:
                continue
            if type(value) is not list:
                raise ExecError(f"{_go_type(value)} is not array or slice", values)
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
                raise ExecError(f"array index out of bounds: index {start}, length {length}", values)
            if end > length or end < 0:
                raise ExecError(f"array index out of bounds: index {end - 1}, length {length}", values)
            if start > end:
                raise ExecError(f"starting index {start} is greater than ending index {end}", values)
            step = 1
            if third.known:
                if third.value <= 0:
                    raise ExecError("step must be > 0", values)
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


class WildcardNode(Node):
    __slots__ = ()

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        results: list[Any] = []
        for value in values:
            if value is not None:
                results.extend(_children(value))
        return results


class RecursiveNode(Node):
    __slots__ = ()

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        result: list[Any] = []
        for value in values:
            if value is None:
                continue
            children = _children(value)
            if children:
                result.append(value)
                result.extend(self.eval(st, children))
        return result


class UnionNode(Node):
    __slots__ = ("lists",)

    def __init__(self, lists: list[ListNode]) -> None:
        self.lists = lists

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        result: list[Any] = []
        for part in self.lists:
            try:
                result.extend(part.eval(st, values))
            except ExecError as exc:
                raise exc.with_partial(values) from None
        return result


class IdentifierNode(Node):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        if self.name == "range":
            st.begin_range += 1
            return values
        if self.name == "end":
            if st.in_range > 0:
                st.end_range += 1
                return []
            raise ExecError("not in range, nothing to end")
        raise ExecError(f"unrecognized identifier {self.name}", values)


class FilterNode(Node):
    __slots__ = ("left", "op", "right")

    def __init__(self, left: ListNode, right: ListNode, op: str) -> None:
        self.left = left
        self.right = right
        self.op = op

    def eval(self, st: State, values: list[Any]) -> list[Any]:
        results: list[Any] = []
        for value in values:
            if type(value) is not list:
                raise ExecError(f"{_go_v(value)} is not array or slice and cannot be filtered", values,
                                redacted=f"{_go_type(value)} is not array or slice and cannot be filtered")
            for item in value:
                if self._keep(st, item, values, results):
                    results.append(item)
        return results

    def _keep(self, st: State, item: Any, values: list[Any], results: list[Any]) -> bool:
        temp = [item]
        if self.op == "exists":
            try:
                lefts = self.left.eval(st, temp)
            except ExecError as exc:
                lefts = exc.partial  # Go tests what the failing step returned
            return len(lefts) > 0
        left = self._one_side(st, self.left, temp, values)
        if left is MISSING:
            return False
        right = self._one_side(st, self.right, temp, values)
        if right is MISSING:
            return False
        compare = _COMPARISONS.get(self.op)
        if compare is None:
            raise ExecError(f"unrecognized filter operator {self.op}", results)
        try:
            return compare(left, right)
        except ExecError as exc:
            raise exc.with_partial(results) from None

    @staticmethod
    def _one_side(st: State, side: ListNode, temp: list[Any], values: list[Any]) -> Any:
        try:
            found = side.eval(st, temp)
        except ExecError as exc:
            raise exc.with_partial(values) from None
        if not found:
            return MISSING
        if len(found) > 1:
            raise ExecError("can only compare one element at a time", values)
        return found[0]


# ---------------------------------------------------------------------------------------------
# Filter comparisons: client-go's fork of text/template's eq/lt helpers.


_KINDS: Final[dict[type, type]] = {bool: bool, int: int, GoInt: int, float: float, str: str, _Byte: _Byte}


def _kind(value: Any) -> type:
    kind = _KINDS.get(type(value))
    if kind is None:
        raise ExecError("invalid type for comparison")
    return kind


def _same_kind(left: Any, right: Any) -> type:
    """The common kind of two operands; Go compares signed and unsigned integers with each other."""
    kind, other = _kind(left), _kind(right)
    if kind is not other and {kind, other} != {int, _Byte}:
        raise ExecError("incompatible types for comparison")
    return kind


def _equal(left: Any, right: Any) -> bool:
    _same_kind(left, right)
    return bool(left == right)


def _less(left: Any, right: Any) -> bool:
    kind = _same_kind(left, right)
    if kind is bool:
        raise ExecError("invalid type for comparison")
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


def print_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is GoInt or kind is _Byte:
        if INT64_MIN <= value <= INT64_MAX:
            return str(value)
        return go_format_float(float(value))
    if kind is float:
        return go_format_float(value)
    if value is None:
        return "null"
    if value is INVALID:
        return "<no value>"
    return go_json(value).decode("utf-8", "surrogateescape")


def _go_type(value: Any) -> str:
    names = {dict: "map[string]interface {}", list: "[]interface {}", str: "string", bool: "bool",
             int: "int64", float: "float64", _Byte: "uint8", GoInt: "int"}
    return names.get(type(value), "interface {}")


def _go_v(value: Any) -> str:
    if value is None:
        return "<nil>"
    if value is INVALID:
        return "<invalid reflect.Value>"
    if type(value) is dict:
        return "map[" + " ".join(f"{k}:{_go_v(value[k])}" for k in sorted(value)) + "]"
    if type(value) is list:
        return "[" + " ".join(_go_v(v) for v in value) + "]"
    if type(value) is str:
        return value
    return print_value(value)


def go_sharp_v(value: Any) -> str:
    if value is None:
        return "interface {}(nil)"
    if type(value) is dict:
        inner = ", ".join(f"{go_quote(k)}:{go_sharp_v(value[k])}" for k in sorted(value))
        return "map[string]interface {}{" + inner + "}"
    if type(value) is list:
        return "[]interface {}{" + ", ".join(go_sharp_v(v) for v in value) + "}"
    if type(value) is str:
        return go_quote(value)
    return print_value(value)
