"""Go-compatible spelling and parsing of scalars: what Go's strconv, fmt and time would give.

Where it sits: under every stage that must read or print a value exactly as ``oc observe``
(a Go program) does. ``cli`` parses flag values with :func:`parse_go_int`,
:func:`parse_go_bool` and :func:`parse_go_duration`; ``flags``, ``cli``, ``daemon``,
``selector``, ``header`` and the templates quote with :func:`go_quote`; the daemon prints
durations with :func:`format_go_duration`; ``runner`` and ``engine`` say how a command
ended with :func:`go_process_state`, ``kube_errors`` why a connection failed with
:func:`go_errno`; the templates print floats with :func:`go_format_float`, ``encoding``
with :func:`go_json_float`, ``metrics`` (beside its exposition's own zero rule) with
:func:`go_format_float`. The Go template parser reads numbers with :func:`parse_go_int`,
:func:`parse_go_uint` and :func:`parse_go_float`, and classifies characters with
:func:`go_unicode_category` and :func:`go_is_print`.

In: strings (flag values, user input; bytes that were not UTF-8 arrive as surrogate
escapes, as ``os.fsdecode`` makes them) and numbers. Out: Python values, or Go's text.

Invariant: each function is one Go function, reproduced exactly -- ``strconv.Quote``,
``QuoteToASCII``, ``QuoteRune``, ``IsPrint``, ``strconv.ParseInt``, ``ParseUint``,
``ParseFloat``, ``strconv.ParseBool``, ``strconv.FormatFloat(v, 'g', -1, 64)`` (which is
``fmt``'s ``%v``), ``encoding/json``'s float spelling, ``time.ParseDuration``,
``time.Duration.String``, ``os.ProcessState.String`` and ``syscall.Errno.Error`` -- with
Go's error messages, and each is checked against the Go toolchain (``tests/test_quoting.py``,
``test_encoding.py``, ``test_durations.py``, ``test_cli.py``'s pflag comparison,
``test_gotemplate.py``). Character classes follow Go's Unicode 15.0 tables, also on Python
3.11 (Unicode 14.0). There is one implementation of each here; no other module spells these
values itself.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import signal
import unicodedata

__all__ = [
    "DurationError",
    "format_go_duration",
    "format_go_duration_ns",
    "go_errno",
    "go_format_float",
    "go_json_float",
    "go_is_print",
    "go_process_state",
    "go_quote",
    "go_quote_rune",
    "go_unicode_category",
    "parse_go_bool",
    "parse_go_duration",
    "parse_go_duration_ns",
    "parse_go_float",
    "parse_go_int",
    "parse_go_uint",
    "shortest_digits",
]


# --- strconv: quoting, and Go's Unicode classes -------------------------------------------


_SHORT_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
_SURROGATES = re.compile("[\ud800-\udfff]")

# Characters Unicode 15.0 (the tables of Go 1.25 and 1.26) assigned that Python 3.11's tables
# (Unicode 14.0) do not know: (first, last, kind), kind L (letter), N (decimal digit) or P
# (printable). Listed from Go's own unicode package; tests/test_gotemplate.py checks every
# code point against it.
_UNICODE_15_ADDED = (
    (0xCF3, 0xCF3, "P"), (0xECE, 0xECE, "P"), (0x10EFD, 0x10EFF, "P"), (0x1123F, 0x11240, "L"),
    (0x11241, 0x11241, "P"), (0x11B00, 0x11B09, "P"), (0x11F00, 0x11F01, "P"), (0x11F02, 0x11F02, "L"),
    (0x11F03, 0x11F03, "P"), (0x11F04, 0x11F10, "L"), (0x11F12, 0x11F33, "L"), (0x11F34, 0x11F3A, "P"),
    (0x11F3E, 0x11F4F, "P"), (0x11F50, 0x11F59, "N"), (0x1342F, 0x1342F, "L"), (0x13440, 0x13440, "P"),
    (0x13441, 0x13446, "L"), (0x13447, 0x13455, "P"), (0x1B132, 0x1B132, "L"), (0x1B155, 0x1B155, "L"),
    (0x1D2C0, 0x1D2D3, "P"), (0x1DF25, 0x1DF2A, "L"), (0x1E030, 0x1E06D, "L"), (0x1E08F, 0x1E08F, "P"),
    (0x1E4D0, 0x1E4EB, "L"), (0x1E4EC, 0x1E4EF, "P"), (0x1E4F0, 0x1E4F9, "N"), (0x1F6DC, 0x1F6DC, "P"),
    (0x1F774, 0x1F776, "P"), (0x1F77B, 0x1F77F, "P"), (0x1F7D9, 0x1F7D9, "P"), (0x1FA75, 0x1FA77, "P"),
    (0x1FA87, 0x1FA88, "P"), (0x1FAAD, 0x1FAAF, "P"), (0x1FABB, 0x1FABD, "P"), (0x1FABF, 0x1FABF, "P"),
    (0x1FACE, 0x1FACF, "P"), (0x1FADA, 0x1FADB, "P"), (0x1FAE8, 0x1FAE8, "P"), (0x1FAF7, 0x1FAF8, "P"),
    (0x2B739, 0x2B739, "L"), (0x31350, 0x323AF, "L"),
)
_UNICODE_15_STARTS = [first for first, _, _ in _UNICODE_15_ADDED]
_OLD_TABLES = tuple(map(int, unicodedata.unidata_version.split("."))) < (15, 0, 0)
_KIND_CATEGORY = {"L": "Lo", "N": "Nd", "P": "So"}


def go_unicode_category(ch: str) -> str:
    """The general category of ``ch`` as Go's Unicode tables have it (for L*, Nd and printable)."""
    category = unicodedata.category(ch)
    if category == "Cn" and _OLD_TABLES:
        code = ord(ch)
        i = bisect.bisect_right(_UNICODE_15_STARTS, code) - 1
        if i >= 0 and code <= _UNICODE_15_ADDED[i][1]:
            return _KIND_CATEGORY[_UNICODE_15_ADDED[i][2]]
    return category


def go_is_print(ch: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols and U+0020."""
    if ch == " ":
        return True
    if "\udc80" <= ch <= "\udcff":
        return False  # a byte that is not UTF-8: Go's RuneError of width one
    return go_unicode_category(ch)[0] in "LMNPS"


def go_quote(s: str, *, ascii_only: bool = False) -> str:
    """Return Go's ``strconv.Quote(s)`` (the ``%q`` verb), or ``QuoteToASCII`` (``%+q``).

    Text that came from bytes that are not UTF-8 (surrogate escapes, as ``os.fsdecode`` makes
    them) is quoted as Go quotes those bytes.
    """
    if s.isascii():
        if s.isprintable() and '"' not in s and "\\" not in s:
            return '"' + s + '"'
    elif _SURROGATES.search(s) is not None:
        s = _as_go_sees_it(s)
    return '"' + "".join([_escape_char(ch, '"', ascii_only) for ch in s]) + '"'


def go_quote_rune(code: int, *, ascii_only: bool = False) -> str:
    """Return Go's ``strconv.QuoteRune`` (or ``QuoteRuneToASCII``); invalid code points are U+FFFD."""
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        code = 0xFFFD
    return "'" + _escape_char(chr(code), "'", ascii_only) + "'"


def _as_go_sees_it(s: str) -> str:
    """Re-split surrogate-escaped bytes the way Go decodes the same bytes.

    Escaped bytes next to each other may form valid UTF-8 (Go then sees one character), and
    only bytes that are not valid UTF-8 stay escaped, one per byte, like Go's RuneError.
    """
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s  # a lone surrogate that no byte string produces; quoted as U+FFFD


def _escape_char(ch: str, quote: str, ascii_only: bool) -> str:
    """Go's appendEscapedRune for one character of a quoted string or rune literal."""
    if ch == quote or ch == "\\":
        return "\\" + ch
    if (ch.isascii() or not ascii_only) and go_is_print(ch):
        return ch
    short = _SHORT_ESCAPES.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not valid UTF-8 (os.fsdecode's surrogateescape): Go sees that byte.
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return "\\ufffd"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


# --- strconv: integers and booleans (pflag's int and bool values) --------------------------


def _num_error(func: str, text: str, reason: str) -> ValueError:
    return ValueError(f"strconv.{func}: parsing {go_quote(text)}: {reason}")


def _underscores_ok(text: str) -> bool:
    """Go's ``underscoreOK``: ``_`` only between digits (or after a base prefix)."""
    body = text[1:] if text[:1] in "+-" else text
    saw, start = "^", 0
    hexadecimal = False
    if len(body) >= 2 and body[0] == "0" and body[1].lower() in "box":
        saw, start, hexadecimal = "0", 2, body[1].lower() == "x"
    for char in body[start:]:
        if char.isascii() and (char.isdigit() or (hexadecimal and char.lower() in "abcdef")):
            saw = "0"
        elif char == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def parse_go_int(text: str, *, base: int = 0, bits: int = 64) -> int:
    """Go's ``strconv.ParseInt(text, base, bits)`` (base 0: ``0x``, ``0o``, ``0b``, ``0``, ``_``)."""
    digits, negative = text, False
    if digits[:1] in ("+", "-"):
        negative, digits = digits[0] == "-", digits[1:]
    value = _parse_magnitude("ParseInt", text, digits, base)
    limit = 1 << (bits - 1)
    if value > limit - (0 if negative else 1):
        raise _num_error("ParseInt", text, "value out of range")
    return -value if negative else value


def parse_go_uint(text: str, *, base: int = 0, bits: int = 64) -> int:
    """Go's ``strconv.ParseUint(text, base, bits)``: no sign, up to ``2**bits - 1``."""
    value = _parse_magnitude("ParseUint", text, text, base)
    if value > (1 << bits) - 1:
        raise _num_error("ParseUint", text, "value out of range")
    return value


def _parse_magnitude(func: str, text: str, digits: str, base: int) -> int:
    """The digits of ``text`` (its sign, if any, already removed into ``digits``) as a uint64."""
    if not digits:
        raise _num_error(func, text, "invalid syntax")
    if base == 0:
        base = 10
        if digits[0] == "0":
            prefixes = {"b": 2, "o": 8, "x": 16}
            if len(digits) >= 3 and digits[1].lower() in prefixes:
                base, digits = prefixes[digits[1].lower()], digits[2:]
            else:
                base, digits = 8, digits[1:]
        underscores_allowed = True
    else:
        underscores_allowed = False
    value, saw_underscore = 0, False
    for char in digits:
        if char == "_" and underscores_allowed:
            saw_underscore = True
            continue
        digit = int(char, 36) if char.isascii() and char.isalnum() else 99
        if digit >= base:
            raise _num_error(func, text, "invalid syntax")
        value = value * base + digit
        if value > (1 << 64) - 1:
            raise _num_error(func, text, "value out of range")
    if saw_underscore and not _underscores_ok(text):
        raise _num_error(func, text, "invalid syntax")
    return value


_DEC_FLOAT = re.compile(r"[+-]?(?:[0-9_]*[0-9][0-9_]*\.?[0-9_]*|[0-9_]*\.[0-9_]*[0-9][0-9_]*)"
                        r"(?:[eE][+-]?[0-9][0-9_]*)?")
_HEX_FLOAT = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F_]*[0-9a-fA-F][0-9a-fA-F_]*\.?[0-9a-fA-F_]*"
                        r"|[0-9a-fA-F_]*\.[0-9a-fA-F_]*[0-9a-fA-F][0-9a-fA-F_]*)[pP][+-]?[0-9][0-9_]*")
def _special_float(text: str) -> float | None:
    """Go's ``special``: ``inf``/``infinity`` with an optional sign, or ``nan``, in any case."""
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        return sign * math.inf if text[1:].lower() in ("inf", "infinity") else None
    lowered = text.lower()
    if lowered in ("inf", "infinity"):
        return math.inf
    return math.nan if lowered == "nan" else None


def parse_go_float(text: str) -> float:
    """Go's ``strconv.ParseFloat(text, 64)``: decimal and hexadecimal forms, ``_`` only between
    digits, ``inf``/``nan`` in any case; a value beyond float64 is "value out of range"."""
    special = _special_float(text)
    if special is not None:
        return special
    if _HEX_FLOAT.fullmatch(text) is not None:
        try:
            value = float.fromhex(text.replace("_", ""))
        except OverflowError:
            value = math.inf
    elif _DEC_FLOAT.fullmatch(text) is not None:
        value = float(text.replace("_", ""))
    else:
        raise _num_error("ParseFloat", text, "invalid syntax")
    if "_" in text and not _underscores_ok(text):
        raise _num_error("ParseFloat", text, "invalid syntax")
    if math.isinf(value):
        raise _num_error("ParseFloat", text, "value out of range")
    return value


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _num_error("ParseBool", text, "invalid syntax")


# --- floats: strconv and fmt, encoding/json ------------------------------------------------


def go_format_float(value: float) -> str:
    """Spell a float64 as Go's ``strconv.FormatFloat(v, 'g', -1, 64)``, which is also ``fmt``'s
    ``%v``: shortest digits, exponent form below 1e-4 and from 1e+06, ``-0`` for negative zero."""
    if -1e6 < value < 1e6 and value.is_integer() and (value or math.copysign(1.0, value) > 0):
        return str(int(value))  # the common case (counters, whole seconds), 3x faster
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    digits, point = shortest_digits(value)
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    exp = point - 1 if digits != "0" else 0
    # Go: with shortest formatting, %e is chosen when exp < -4 or exp >= 6 (eprec = 6).
    if exp < -4 or exp >= 6:
        return sign + _exponent_form(digits, point, min_exp_digits=2)
    return sign + _fixed_form(digits, point)


def go_json_float(value: float) -> str:
    """Spell a float64 as Go's ``encoding/json`` does (``'f'`` format, ``'e'`` outside [1e-6, 1e21))."""
    if math.isnan(value) or math.isinf(value):
        # Go refuses to encode these; JSON decoders never produce them.
        raise ValueError(f"json: unsupported value: {value!r}")
    digits, point = shortest_digits(value)
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        return sign + _exponent_form(digits, point, min_exp_digits=1)
    return sign + _fixed_form(digits, point)


def shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of ``|value|`` and the decimal point position.

    ``digits`` has no leading or trailing zeros (``"0"`` for zero); the value is
    ``0.<digits> × 10**point``, as in Go's ``strconv`` internals.
    """
    text = repr(abs(value))
    mantissa, _, exp_text = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    raw = (whole + frac).lstrip("0")
    point = len(whole) + (int(exp_text) if exp_text else 0)
    if not raw:
        return "0", 1
    point -= len(whole + frac) - len((whole + frac).lstrip("0"))
    return raw.rstrip("0"), point


def _fixed_form(digits: str, point: int) -> str:
    if digits == "0":
        return "0"
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def _exponent_form(digits: str, point: int, *, min_exp_digits: int) -> str:
    exp = point - 1 if digits != "0" else 0
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exp_sign = "-" if exp < 0 else "+"
    return f"{head}e{exp_sign}{abs(exp):0{min_exp_digits}d}"


# --- time: durations -----------------------------------------------------------------------


_NS_PER_SECOND = 1_000_000_000
_MAX_UINT63 = 1 << 63
_UNITS: dict[bytes, int] = {
    b"ns": 1,
    b"us": 1_000,
    "\u00b5s".encode(): 1_000,  # micro sign
    "\u03bcs".encode(): 1_000,  # Greek mu
    b"ms": 1_000_000,
    b"s": _NS_PER_SECOND,
    b"m": 60 * _NS_PER_SECOND,
    b"h": 3600 * _NS_PER_SECOND,
}
_DIGITS = b"0123456789"


class DurationError(ValueError):
    """A string Go's ``time.ParseDuration`` would reject; the message is Go's."""


def _to_bytes(text: str) -> bytes:
    # argv bytes that are not UTF-8 arrive as surrogate escapes; Go sees the raw bytes.
    return text.encode("utf-8", "surrogateescape")


def _time_quote(raw: bytes) -> str:
    """Go's ``time.quote``: ASCII kept, every other byte (and controls) as ``\\xNN``."""
    out = ['"']
    for byte in raw:
        if byte >= 0x80 or byte < 0x20:
            out.append(f"\\x{byte:02x}")
        else:
            char = chr(byte)
            out.append("\\" + char if char in '"\\' else char)
    out.append('"')
    return "".join(out)


def _leading_int(raw: bytes, pos: int) -> tuple[int, int] | None:
    value = 0
    while pos < len(raw) and raw[pos] in _DIGITS:
        if value > _MAX_UINT63 // 10:
            return None
        value = value * 10 + raw[pos] - 48
        if value > _MAX_UINT63:
            return None
        pos += 1
    return value, pos


def _leading_fraction(raw: bytes, pos: int) -> tuple[int, float, int]:
    value, scale, overflow = 0, 1.0, False
    while pos < len(raw) and raw[pos] in _DIGITS:
        if not overflow:
            if value > (_MAX_UINT63 - 1) // 10:
                overflow = True
            else:
                candidate = value * 10 + raw[pos] - 48
                if candidate > _MAX_UINT63:
                    overflow = True
                else:
                    value, scale = candidate, scale * 10
        pos += 1
    return value, scale, pos


def parse_go_duration_ns(text: str) -> int:
    """Parse a Go duration into integer nanoseconds, or raise :class:`DurationError`."""
    raw = _to_bytes(text)
    invalid = DurationError("time: invalid duration " + _time_quote(raw))
    pos, negative = 0, False
    if raw[:1] in (b"-", b"+"):
        negative, pos = raw[:1] == b"-", 1
    if raw[pos:] == b"0":
        return 0
    if pos == len(raw):
        raise invalid
    total = 0
    while pos < len(raw):
        value, pos = _parse_component(raw, pos, invalid)
        total += value
        if total > _MAX_UINT63:
            raise invalid
    if negative:
        return -total
    if total > _MAX_UINT63 - 1:
        raise invalid
    return total


def _parse_component(raw: bytes, pos: int, invalid: DurationError) -> tuple[int, int]:
    """One ``[0-9]*(\\.[0-9]*)?unit`` component: (nanoseconds, end position); Go's loop body."""
    if not (raw[pos] == 0x2E or raw[pos] in _DIGITS):
        raise invalid
    leading = _leading_int(raw, pos)
    if leading is None:
        raise invalid
    whole, after_int = leading
    has_int = after_int != pos
    fraction, scale, pos = 0, 1.0, after_int
    has_fraction = False
    if pos < len(raw) and raw[pos] == 0x2E:
        fraction, scale, after_fraction = _leading_fraction(raw, pos + 1)
        has_fraction = after_fraction != pos + 1
        pos = after_fraction
    if not has_int and not has_fraction:
        raise invalid
    unit_start = pos
    while pos < len(raw) and not (raw[pos] == 0x2E or raw[pos] in _DIGITS):
        pos += 1
    if pos == unit_start:
        raise DurationError("time: missing unit in duration " + _time_quote(raw))
    unit_name = raw[unit_start:pos]
    unit = _UNITS.get(unit_name)
    if unit is None:
        raise DurationError(
            f"time: unknown unit {_time_quote(unit_name)} in duration {_time_quote(raw)}"
        )
    if whole > _MAX_UINT63 // unit:
        raise invalid
    whole *= unit
    if fraction > 0:
        # Go computes the fractional part in float64, truncating toward zero.
        whole += int(float(fraction) * (float(unit) / scale))
        if whole > _MAX_UINT63:
            raise invalid
    return whole, pos


def parse_go_duration(text: str) -> float:
    """Parse a Go duration (``1m30s``, ``300ms``, ``0``) into seconds.

    Raises :class:`DurationError` with Go's message, e.g.
    ``time: missing unit in duration "5"``.
    """
    return parse_go_duration_ns(text) / _NS_PER_SECOND


def _format_fraction(value: int, precision: int) -> tuple[str, int]:
    """Go's ``fmtFrac``: the fraction ``.ddd`` without trailing zeros, and value // 10**prec."""
    digits = []
    printed = False
    for _ in range(precision):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
        value //= 10
    text = "." + "".join(reversed(digits)) if printed else ""
    return text, value


def format_go_duration_ns(nanoseconds: int) -> str:
    """Format integer nanoseconds exactly like Go's ``time.Duration.String()``."""
    negative = nanoseconds < 0
    magnitude = -nanoseconds if negative else nanoseconds
    if magnitude < _NS_PER_SECOND:
        if magnitude == 0:
            return "0s"
        if magnitude < 1_000:
            unit, precision = "ns", 0
        elif magnitude < 1_000_000:
            unit, precision = "\u00b5s", 3
        else:
            unit, precision = "ms", 6
        fraction, whole = _format_fraction(magnitude, precision)
        text = f"{whole}{fraction}{unit}"
    else:
        fraction, seconds = _format_fraction(magnitude, 9)
        text = f"{seconds % 60}{fraction}s"
        minutes = seconds // 60
        if minutes > 0:
            text = f"{minutes % 60}m{text}"
            hours = minutes // 60
            if hours > 0:
                text = f"{hours}h{text}"
    return "-" + text if negative else text


def format_go_duration(seconds: float) -> str:
    """Format seconds like Go's ``Duration.String()``: ``1s``, ``1m30s``, ``1h0m0s``, ``100ms``."""
    return format_go_duration_ns(round(seconds * _NS_PER_SECOND))


# --- os and syscall: how a command ended, why a connection failed ---------------------------


def go_process_state(returncode: int) -> str:
    """Go's ``os.ProcessState.String()`` for a ``Popen`` return code, which is what oc prints
    for a failed command (``exit status 3``, ``signal: killed``)."""
    if returncode >= 0:
        return f"exit status {returncode}"
    number = -returncode
    return f"signal: {_go_case(signal.strsignal(number) if number < 32 else None, f'signal {number}')}"


def go_errno(number: int) -> str:
    """Go's ``syscall.Errno.Error()``: ``connection refused``, ``no route to host``..."""
    try:
        text: str | None = os.strerror(number)
    except ValueError:
        text = None
    if text is None or text.startswith("Unknown error"):
        return f"errno {number}"
    return _go_case(text, "")


def _go_case(text: str | None, fallback: str) -> str:
    """Go's tables of signal and errno texts are glibc's, starting in lower case unless
    they start with an initialism ("CPU time limit exceeded", "I/O possible")."""
    if not text:
        return fallback
    return text[:1].lower() + text[1:] if text[1:2].islower() else text
