"""Label and field selector syntax: the Kubernetes grammars, checked before the first list.

Where it sits: ``daemon.check_after_discovery`` calls :func:`validate_label_selector` on
``-l/--selector`` and :func:`validate_field_selector` on ``--field-selector`` once the
resource is resolved (oc's order), so a typo fails at start-up with exit 1 instead of as a
server error on every list. The selector text itself is sent to the server unchanged.

In: the selector string (``app=web,tier in (a,b),!canary,release``; ``metadata.name!=x``).
Out: the parsed :class:`Requirement` list, or :class:`SelectorError`.

Invariant: accepts exactly what ``k8s.io/apimachinery/pkg/labels.Parse`` and
``fields.ParseSelector`` accept and words their errors the same way (``unable to parse
requirement: ...``, ``found ',', expected: ...``; ``invalid selector: ...``), so messages
match kubectl and oc. Which field labels a resource supports only the server knows: it
answers the first list with 400, which :func:`unable_to_find` words as kubectl does.

Grammar::

    <selector>    ::= <requirement> | <requirement> "," <selector>
    <requirement> ::= ["!"] KEY [ ("in" | "notin") "(" VALUES ")" | ("=" | "==" | "!=" | ">" | "<") VALUE ]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

from fastobs.gocompat import go_quote

__all__ = [
    "Requirement",
    "SelectorError",
    "parse_label_selector",
    "unable_to_find",
    "validate_field_selector",
    "validate_label_selector",
]


class SelectorError(ValueError):
    """A label selector labels.Parse would reject; the message is kubectl's."""


class _Tok(Enum):
    ERROR = auto()
    END = auto()
    CLOSE_PAREN = auto()
    COMMA = auto()
    NOT = auto()
    DOUBLE_EQUALS = auto()
    EQUALS = auto()
    GREATER = auto()
    IDENTIFIER = auto()
    IN = auto()
    LESS = auto()
    NOT_EQUALS = auto()
    NOT_IN = auto()
    OPEN_PAREN = auto()


_LITERALS = {
    ")": _Tok.CLOSE_PAREN, ",": _Tok.COMMA, "!": _Tok.NOT, "==": _Tok.DOUBLE_EQUALS, "=": _Tok.EQUALS,
    ">": _Tok.GREATER, "in": _Tok.IN, "<": _Tok.LESS, "!=": _Tok.NOT_EQUALS, "notin": _Tok.NOT_IN,
    "(": _Tok.OPEN_PAREN,
}
_BINARY_OPERATORS = {
    _Tok.IN: "in", _Tok.NOT_IN: "notin", _Tok.EQUALS: "=", _Tok.DOUBLE_EQUALS: "==",
    _Tok.NOT_EQUALS: "!=", _Tok.GREATER: "gt", _Tok.LESS: "lt",
}
_WHITESPACE = " \t\r\n"
_SPECIAL = "=!(),><"
_WORD_END = _SPECIAL + _WHITESPACE + "\0"

# Validation texts of k8s.io/apimachinery/pkg/api/validate/content, verbatim.
_LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY_MSG = ("must consist of alphanumeric characters, '-', '_' or '.', "
                  "and must start and end with an alphanumeric character")
_LABEL_VALUE_FMT = "(" + _LABEL_KEY_FMT + ")?"
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, "
                    "'-', '_' or '.', and must start and end with an alphanumeric character")
_DNS_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN_FMT = _DNS_LABEL_FMT + "(\\." + _DNS_LABEL_FMT + ")*"
_DNS_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                      "'-' or '.', and must start and end with an alphanumeric character")
_LABEL_KEY_RE = re.compile(_LABEL_KEY_FMT, re.ASCII)
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT, re.ASCII)
_DNS_SUBDOMAIN_RE = re.compile(_DNS_SUBDOMAIN_FMT, re.ASCII)
_INT64_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class Requirement:
    """One parsed requirement: ``key``, operator (``in``, ``notin``, ``=``, ``==``, ``!=``,
    ``gt``, ``lt``, ``exists``, ``!``) and its sorted values."""

    key: str
    operator: str
    values: tuple[str, ...] = ()


# --- validation messages ---------------------------------------------------------------


def _byte_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _regex_error(message: str, regex: str, *examples: str) -> str:
    quoted = "".join((" or " if i else "") + f"'{example}', " for i, example in enumerate(examples))
    return f"{message} (e.g. {quoted}regex used for validation is '{regex}')"


_KEY_REGEX_ERROR = _regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName", "my.name", "123-abc")


def _label_key_problems(key: str) -> list[str]:
    parts = key.split("/")
    problems: list[str] = []
    if len(parts) > 2:
        return ["a valid label key " + _KEY_REGEX_ERROR
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    name = parts[-1]
    if len(parts) == 2:
        problems += [f"prefix part {problem}" for problem in _subdomain_problems(parts[0])]
    if not name:
        problems.append("name part must be non-empty")
    elif _byte_len(name) > 63:
        problems.append("name part must be no more than 63 bytes")
    if not _LABEL_KEY_RE.fullmatch(name):
        problems.append("name part " + _KEY_REGEX_ERROR)
    return problems


def _subdomain_problems(prefix: str) -> list[str]:
    if not prefix:
        return ["must be non-empty"]
    problems = []
    if _byte_len(prefix) > 253:
        problems.append("must be no more than 253 bytes")
    if not _DNS_SUBDOMAIN_RE.fullmatch(prefix):
        problems.append(_regex_error(_DNS_SUBDOMAIN_MSG, _DNS_SUBDOMAIN_FMT, "example.com"))
    return problems


def _label_value_problems(value: str) -> list[str]:
    problems = []
    if _byte_len(value) > 63:
        problems.append("must be no more than 63 bytes")
    if not _LABEL_VALUE_RE.fullmatch(value):
        problems.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return problems


def _invalid(path: str, value: str, problems: list[str]) -> str:
    """field.Invalid(path, value, detail).Error()."""
    return f"{path}: Invalid value: {go_quote(value)}: {'; '.join(problems)}"


def _aggregate(messages: list[str]) -> str:
    """utilerrors.Aggregate.Error(): one message, or the distinct ones in brackets."""
    distinct = list(dict.fromkeys(messages))
    return distinct[0] if len(distinct) == 1 else "[" + ", ".join(distinct) + "]"


def _requirement_errors(key: str, operator: str, values: list[str]) -> list[str]:
    """What NewRequirement reports for a syntactically valid requirement."""
    errors = []
    if operator in ("gt", "lt"):
        for index, value in enumerate(values):
            if not _INT64_RE.fullmatch(value) or not -(1 << 63) <= int(value) < (1 << 63):
                errors.append(_invalid(f"values[{index}]", value,
                                       ["for 'Gt', 'Lt' operators, the value must be an integer"]))
    for index, value in enumerate(values):
        problems = _label_value_problems(value)
        if problems:
            errors.append(_invalid(f"values[{index}][{key}]", value, problems))
    return errors


# --- lexer ------------------------------------------------------------------------------


def _lex(text: str) -> list[tuple[_Tok, str]]:
    """Every token of ``text`` (Go's Lexer, one token per call), ending with END."""
    tokens: list[tuple[_Tok, str]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        # Go's lexer reads a NUL byte as the end of the input.
        if pos >= len(text) or text[pos] == "\0":
            tokens.append((_Tok.END, ""))
            return tokens
        if text[pos] in _SPECIAL:
            token, pos = _lex_special(text, pos)
        else:
            token, pos = _lex_word(text, pos)
        tokens.append(token)


def _lex_word(text: str, pos: int) -> tuple[tuple[_Tok, str], int]:
    """A keyword or identifier: everything up to whitespace or an operator character."""
    end = pos
    while end < len(text) and text[end] not in _WORD_END:
        end += 1
    word = text[pos:end]
    # Go consumes a NUL that ends a word, then keeps lexing after it.
    after = end + 1 if end < len(text) and text[end] == "\0" else end
    return (_LITERALS.get(word, _Tok.IDENTIFIER), word), after


def _lex_special(text: str, pos: int) -> tuple[tuple[_Tok, str], int]:
    """The longest operator starting at ``pos`` (``!=`` over ``!``)."""
    best: tuple[_Tok, str] | None = None
    end = pos
    while end < len(text) and text[end] in _SPECIAL:
        candidate = text[pos:end + 1]
        if candidate in _LITERALS:
            best, end = (_LITERALS[candidate], candidate), end + 1
        elif best is not None:
            break
        else:
            end += 1
    if best is None:
        return (_Tok.ERROR, f"error expected: keyword found '{text[pos:end]}'"), end
    return best, pos + len(best[1])


# --- parser -----------------------------------------------------------------------------


class _Parser:
    """labels.Parser: recursive descent over the token list."""

    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.position = 0

    def lookahead(self, *, values: bool) -> tuple[_Tok, str]:
        return self._as_context(self.tokens[min(self.position, len(self.tokens) - 1)], values)

    def consume(self, *, values: bool) -> tuple[_Tok, str]:
        token = self.lookahead(values=values)
        self.position += 1
        return token

    @staticmethod
    def _as_context(token: tuple[_Tok, str], values: bool) -> tuple[_Tok, str]:
        # "in" and "notin" are plain words where a key or value is expected.
        if values and token[0] in (_Tok.IN, _Tok.NOT_IN):
            return _Tok.IDENTIFIER, token[1]
        return token

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            kind, literal = self.lookahead(values=True)
            if kind == _Tok.END:
                return requirements
            if kind not in (_Tok.IDENTIFIER, _Tok.NOT):
                raise SelectorError(f"found '{literal}', expected: !, identifier, or 'end of string'")
            try:
                requirements.append(self.parse_requirement())
            except SelectorError as error:
                raise SelectorError(f"unable to parse requirement: {error}") from None
            kind, literal = self.consume(values=True)
            if kind == _Tok.END:
                return requirements
            if kind != _Tok.COMMA:
                raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            next_kind, next_literal = self.lookahead(values=True)
            if next_kind not in (_Tok.IDENTIFIER, _Tok.NOT):
                raise SelectorError(f"found '{next_literal}', expected: identifier after ','")

    def parse_requirement(self) -> Requirement:
        key, unary = self.parse_key()
        if unary is not None:
            return Requirement(key, unary)
        kind, literal = self.consume(values=False)
        operator = _BINARY_OPERATORS.get(kind)
        if operator is None:
            raise SelectorError(f"found '{literal}', expected: {', '.join(_BINARY_OPERATORS.values())}")
        values = self.parse_set() if operator in ("in", "notin") else self.parse_exact_value()
        ordered = sorted(values)
        errors = _requirement_errors(key, operator, ordered)
        if errors:
            raise SelectorError(_aggregate(errors))
        return Requirement(key, operator, tuple(ordered))

    def parse_key(self) -> tuple[str, str | None]:
        """The key, and ``exists``/``!`` when no binary operator follows it."""
        kind, literal = self.consume(values=True)
        negated = kind == _Tok.NOT
        if negated:
            kind, literal = self.consume(values=True)
        if kind != _Tok.IDENTIFIER:
            raise SelectorError(f"found '{literal}', expected: identifier")
        problems = _label_key_problems(literal)
        if problems:
            raise SelectorError(_invalid("<nil>", literal, problems))
        if negated:
            # Go: "!key" followed by an operator still ends the requirement as does-not-exist.
            return literal, "!"
        if self.lookahead(values=True)[0] in (_Tok.END, _Tok.COMMA):
            return literal, "exists"
        return literal, None

    def parse_set(self) -> set[str]:
        kind, literal = self.consume(values=True)
        if kind != _Tok.OPEN_PAREN:
            raise SelectorError(f"found '{literal}' expected: '('")
        kind, literal = self.lookahead(values=True)
        if kind == _Tok.CLOSE_PAREN:
            self.consume(values=True)
            return {""}
        if kind not in (_Tok.IDENTIFIER, _Tok.COMMA):
            raise SelectorError(f"found '{literal}', expected: ',', ')' or identifier")
        values = self.parse_identifiers()
        if self.consume(values=True)[0] != _Tok.CLOSE_PAREN:
            raise SelectorError(f"found '{literal}', expected: ')'")
        return values

    def parse_identifiers(self) -> set[str]:
        values: set[str] = set()
        while True:
            kind, literal = self.consume(values=True)
            if kind == _Tok.IDENTIFIER:
                values.add(literal)
                next_kind, next_literal = self.lookahead(values=True)
                if next_kind == _Tok.CLOSE_PAREN:
                    return values
                if next_kind != _Tok.COMMA:
                    raise SelectorError(f"found '{next_literal}', expected: ',' or ')'")
            elif kind == _Tok.COMMA:
                # Empty entries ("(,a)", "(a,,b)", "(a,)") are the empty value.
                if not values:
                    values.add("")
                next_kind = self.lookahead(values=True)[0]
                if next_kind == _Tok.CLOSE_PAREN:
                    values.add("")
                    return values
                if next_kind == _Tok.COMMA:
                    values.add("")
            else:
                raise SelectorError(f"found '{literal}', expected: ',', or identifier")

    def parse_exact_value(self) -> set[str]:
        if self.lookahead(values=True)[0] in (_Tok.END, _Tok.COMMA):
            return {""}
        kind, literal = self.consume(values=True)
        if kind == _Tok.IDENTIFIER:
            return {literal}
        raise SelectorError(f"found '{literal}', expected: identifier")


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse a label selector; raise :class:`SelectorError` with kubectl's message."""
    requirements = _Parser(text).parse()
    return sorted(requirements, key=lambda requirement: requirement.key)


def validate_label_selector(text: str) -> None:
    """Raise :class:`SelectorError` when ``text`` is not a valid label selector."""
    parse_label_selector(text)


# --------------------------------------------------------------------------- field selectors

_FIELD_OPERATORS = ("!=", "==", "=")
"""apimachinery's order: "==" before "=", so no "=" is left at the front of a value."""


def validate_field_selector(text: str) -> None:
    """Raise :class:`SelectorError` where ``fields.ParseSelector`` fails (the server's own
    parse), with its message; the field labels themselves are the server's to check."""
    terms = sorted(_field_terms(text))  # Go sorts the terms before parsing them
    for term in terms:
        if not term:
            continue
        split = _split_field_term(term)
        if split is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        _unescape_field_value(split[1])


def _field_terms(text: str) -> list[str]:
    """Split on commas not escaped by a backslash (fields.splitTerms)."""
    if not text:
        return []
    terms: list[str] = []
    start, in_slash = 0, False
    for i, c in enumerate(text):
        if in_slash:
            in_slash = False
        elif c == "\\":
            in_slash = True
        elif c == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_field_term(term: str) -> tuple[str, str] | None:
    """(operator, raw value) at the first operator in ``term`` (fields.splitTerm)."""
    for i in range(len(term)):
        for op in _FIELD_OPERATORS:
            if term.startswith(op, i):
                return op, term[i + len(op):]
    return None


def _unescape_field_value(value: str) -> str:
    """fields.UnescapeValue: ``\\\\``, ``\\,`` and ``\\=`` only; a bare ``,`` or ``=`` is an error."""
    out: list[str] = []
    in_slash = False
    for c in value:
        if in_slash:
            if c not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{c}")
            out.append(c)
            in_slash = False
        elif c == "\\":
            in_slash = True
        elif c in ",=":
            raise SelectorError(f"invalid field selector: unescaped character in value: {ord(c)}")
        else:
            out.append(c)
    if in_slash:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def unable_to_find(resource: str, label_selector: str, field_selector: str, reason: str) -> str:
    """kubectl's words for a list the server refused as a bad request (cli-runtime's
    EnhanceListError), for a resource spelled as Go's ``GroupVersionResource.String()``."""
    if not label_selector and not field_selector:
        return f"Unable to list {go_quote(resource)}: {reason}"
    return (f"Unable to find {go_quote(resource)} that match label selector {go_quote(label_selector)}, "
            f"field selector {go_quote(field_selector)}: {reason}")
