"""JSONPath: kubectl's ``-o jsonpath`` dialect, compiled once and rendered per event.

Where it sits: ``templates.compile_template`` hands it the template text for the
``jsonpath``, ``jsonpath-as-json`` and ``jsonpath-file`` formats, in the parent at start-up
and in every worker's ``runner``; ``render`` then runs once per event in the worker. The
text is parsed by ``jsonpath_parser`` into ``jsonpath_nodes``; this module drives their
evaluation (client-go's ``FindResults`` and ``PrintResults``) and has a fast path for
templates made only of text and plain field chains (``{.a.b[0].c}``), which never build
intermediate lists.

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
* A render error is a :class:`~fastobs.errors.TemplateError` with kubectl's message (which
  dumps the whole object) and a ``summary`` that never quotes object data: the template,
  the path up to the failing step and the reason (``x is not found``).
"""

from __future__ import annotations

from typing import Any, Final

from fastobs.encoding import go_json_indented
from fastobs.errors import TemplateError
from fastobs.gocompat import go_quote
from fastobs.templates.jsonpath_nodes import (
    INVALID,
    MISSING,
    ArrayNode,
    ExecError,
    FieldNode,
    ListNode,
    Node,
    State,
    TextNode,
    go_sharp_v,
    print_value,
)
from fastobs.templates.jsonpath_parser import ParseError, parse

__all__ = ["JSONPathTemplate", "compile_jsonpath"]


def compile_jsonpath(text: str, *, allow_missing: bool, as_json: bool) -> JSONPathTemplate:
    """Parse ``text`` once; raise :class:`TemplateError` with kubectl's message when it does not parse."""
    try:
        root = parse(text)
    except ParseError as exc:
        raise TemplateError(f"error parsing jsonpath {text}, {exc.reason}") from None
    return JSONPathTemplate(text, root, allow_missing=allow_missing, as_json=as_json)


# ---------------------------------------------------------------------------------------------
# Evaluation driver: FindResults and PrintResults.


class JSONPathTemplate:
    """A parsed JSONPath template; ``render`` prints one object as kubectl's printer does."""

    __slots__ = ("_as_json", "_nodes", "_simple", "allow_missing", "text")

    def __init__(self, text: str, root: list[Node], *, allow_missing: bool, as_json: bool) -> None:
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
            groups = self._find(State(self.allow_missing), obj, 0)
        except ExecError as exc:
            where = f" at {exc.path}" if exc.path else ""
            raise TemplateError(
                self._error_message(exc.message, obj),
                summary=f"error executing jsonpath {go_quote(self.text)}{where}: {exc.redacted}",
            ) from None
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
            if value is MISSING:
                if not self.allow_missing:
                    return None  # the general path raises kubectl's error
                continue
            if value is _FALLBACK:
                return None
            parts.append(print_value(value))
        return "".join(parts)

    def _find(self, st: State, data: Any, start: int) -> list[list[Any]]:
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
                        full.extend(self._find(st, INVALID if value is None else value, i + 1))
                else:
                    # Go still walks the body once (on no value) to find where the range ends.
                    self._find(st, INVALID, i + 1)
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
            f"\tobject given to jsonpath engine was:\n\t\t{go_sharp_v(obj)}"
        )


def _group_text(group: list[Any]) -> str:
    """PrintResults: the values of one action, separated by one space."""
    return print_value(group[0]) if len(group) == 1 else " ".join(map(print_value, group))


def _json_group(group: list[Any]) -> str:
    values = [None if value is INVALID else value for value in group]
    return go_json_indented(values).decode("utf-8", "surrogateescape") + "\n"


_FALLBACK: Final = object()


def _follow(value: Any, path: tuple[str | int, ...]) -> Any:
    """Walk field names and single indexes; MISSING when nothing is found, _FALLBACK on errors."""
    for step in path:
        if isinstance(step, str):
            if type(value) is not dict:
                return MISSING
            value = value.get(step, MISSING)
            if value is MISSING:
                return MISSING
            continue
        if value is None:
            return MISSING
        if type(value) is not list:
            return _FALLBACK  # kubectl fails: "... is not array or slice"
        index = step + len(value) if step < 0 else step
        if not 0 <= index < len(value):
            return _FALLBACK  # kubectl fails: "array index out of bounds"
        value = value[index]
    return value


def _simple_step(node: Node) -> str | int | None:
    if type(node) is FieldNode:
        return node.name
    if type(node) is ArrayNode:
        first, second, third = node.params
        if first.known and second.derived and not third.known:
            return first.value
    return None


def _simple_plan(root: list[Node]) -> list[str | tuple[str | int, ...]] | None:
    """Plan for templates made only of text and ``{.a.b[0].c}`` actions, else None."""
    plan: list[str | tuple[str | int, ...]] = []
    for node in root:
        if isinstance(node, TextNode):
            plan.append(node.text)
            continue
        if not isinstance(node, ListNode) or not node.nodes:
            return None
        steps = tuple(_simple_step(n) for n in node.nodes)
        if any(step is None for step in steps):
            return None
        plan.append(tuple(step for step in steps if step is not None))
    return plan
