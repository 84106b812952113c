"""Go's ``fmt`` printing (Sprint, Sprintln, Sprintf) for the values a Go template handles.

Where it sits: :mod:`fastobs.templates.gotemplate` prints every action's value with
:func:`sprint_value` and implements the ``print``, ``println`` and ``printf`` builtins with
:func:`sprint`, :func:`sprintln` and :func:`sprintf`.

In: Python values standing for Go values: ``str`` (string), ``bool``, ``int`` (int64, as JSON
integers decode), :class:`GoInt` (int: template constants, lengths, indexes), :class:`Uint8`
(a byte of a string), ``float`` (float64), ``complex`` (complex128), ``dict``
(``map[string]interface {}``), ``list`` (``[]interface {}``) and ``None`` (a nil
``interface{}``). Out: the text Go's ``fmt`` prints for them.

Invariants: a port of Go 1.26's fmt/print.go and fmt/format.go and the float formatting of
strconv (shortest digits, fixed precision, ``%b``, ``%x``), flag by flag, including the
``%!verb(type=value)``, ``%!(EXTRA ...)``, ``(MISSING)`` and ``(BADINDEX)`` notes. Map keys
print sorted. The one verb that cannot agree is ``%p`` on a map or a list: Go prints the
address of the value in its own memory, which nobody can reproduce; fastobs prints an address
of its own in the same spelling (a documented limit).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

from fastobs.gocompat import (
    go_format_float,
    go_is_print,
    go_json_float,
    go_quote,
    go_quote_rune,
    shortest_digits,
)

__all__ = ["GoInt", "Uint8", "go_type", "json_number", "sprint", "sprint_value", "sprintf", "sprintln"]


class GoInt(int):
    """A Go ``int`` (as opposed to the ``int64`` of a decoded JSON integer)."""

    __slots__ = ()


class Uint8(int):
    """A Go ``uint8``: a byte taken from a string by ``index``."""

    __slots__ = ()


_TYPE_NAMES: Final = {
    str: "string", bool: "bool", int: "int64", GoInt: "int", Uint8: "uint8", float: "float64",
    complex: "complex128", dict: "map[string]interface {}", list: "[]interface {}",
}


_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def json_number(value: Any) -> Any:
    """The number kubectl's printer holds for a decoded JSON number after its JSON round trip.

    Integers within int64 stay as they are; any other number is a float64, and a float64
    whose Go JSON spelling has neither a point nor an exponent is read back as an int64.
    """
    if type(value) is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
        try:
            value = float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if value.is_integer() and abs(value) < 1e21:
        number = int(go_json_float(value))
        if _INT64_MIN <= number <= _INT64_MAX:
            return number
    return value


def go_type(value: Any) -> str:
    """``reflect.TypeOf(value).String()``."""
    return _TYPE_NAMES.get(type(value), "<nil>" if value is None else type(value).__name__)


def _is_int(value: Any) -> bool:
    kind = type(value)
    return kind is int or kind is GoInt or kind is Uint8


_LDIGITS: Final = "0123456789abcdefx"
_UDIGITS: Final = "0123456789ABCDEFX"
_UINT64: Final = 2**64


def _rune_count(s: str) -> int:
    return len(s)


class _Printer:
    """Go's ``pp`` with its ``fmt`` flags; ``buf`` collects the output pieces."""

    __slots__ = ("buf", "erroring", "minus", "plus", "plus_v", "prec", "prec_present", "sharp",
                 "sharp_v", "space", "wid", "wid_present", "zero")

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.erroring = False
        self.clearflags()

    def clearflags(self) -> None:
        self.wid_present = self.prec_present = False
        self.minus = self.plus = self.sharp = self.space = self.zero = False
        self.plus_v = self.sharp_v = False
        self.wid = 0
        self.prec = 0

    def flags(self) -> tuple[Any, ...]:
        return (self.wid_present, self.prec_present, self.minus, self.plus, self.sharp, self.space,
                self.zero, self.plus_v, self.sharp_v, self.wid, self.prec)

    def set_flags(self, saved: tuple[Any, ...]) -> None:
        (self.wid_present, self.prec_present, self.minus, self.plus, self.sharp, self.space,
         self.zero, self.plus_v, self.sharp_v, self.wid, self.prec) = saved

    # -- format.go --

    def padding(self, n: int) -> str:
        if n <= 0:
            return ""
        return ("0" if self.zero and not self.minus else " ") * n

    def pad(self, s: str) -> None:
        if not self.wid_present or self.wid == 0:
            self.buf.append(s)
            return
        width = self.wid - _rune_count(s)
        if not self.minus:
            self.buf.append(self.padding(width))
            self.buf.append(s)
        else:
            self.buf.append(s)
            self.buf.append(self.padding(width))

    def fmt_boolean(self, v: bool) -> None:
        self.pad("true" if v else "false")

    def fmt_unicode(self, u: int) -> None:
        prec = 4
        if self.prec_present and self.prec > 4:
            prec = self.prec
        out = f"{u:X}"
        if len(out) < prec:
            out = "0" * (prec - len(out)) + out
        out = "U+" + out
        if self.sharp and u <= 0x10FFFF and go_is_print(chr(u)) and not 0xD800 <= u <= 0xDFFF:
            out += " '" + chr(u) + "'"
        old_zero = self.zero
        self.zero = False
        self.pad(out)
        self.zero = old_zero

    def fmt_integer(self, u: int, base: int, signed: bool, verb: str, digits: str) -> None:
        """``u`` is the uint64 bit pattern; ``signed`` reads it as int64."""
        negative = signed and u >= 2**63
        if negative:
            u = _UINT64 - u
        prec = 0
        if self.prec_present:
            prec = self.prec
            if prec == 0 and u == 0:
                old_zero = self.zero
                self.zero = False
                self.buf.append(self.padding(self.wid))
                self.zero = old_zero
                return
        elif self.zero and not self.minus and self.wid_present:
            prec = self.wid
            if negative or self.plus or self.space:
                prec -= 1
        if base == 10:
            body = str(u)
        elif base == 16:
            body = format(u, "x") if digits is _LDIGITS else format(u, "X")
        elif base == 8:
            body = format(u, "o")
        else:
            body = format(u, "b")
        if len(body) < prec:
            body = "0" * (prec - len(body)) + body
        if self.sharp:
            if base == 2:
                body = "0b" + body
            elif base == 8:
                if body[0] != "0":
                    body = "0" + body
            elif base == 16:
                body = "0" + digits[16] + body
        if verb == "O":
            body = "0o" + body
        if negative:
            body = "-" + body
        elif self.plus:
            body = "+" + body
        elif self.space:
            body = " " + body
        old_zero = self.zero
        self.zero = False
        self.pad(body)
        self.zero = old_zero

    def truncate_string(self, s: str) -> str:
        if self.prec_present and self.prec < len(s):
            return s[: self.prec]
        return s

    def fmt_s(self, s: str) -> None:
        self.pad(self.truncate_string(s))

    def fmt_sx(self, s: str, digits: str) -> None:
        data = s.encode("utf-8", "surrogateescape")
        length = len(data)
        if self.prec_present and self.prec < length:
            length = self.prec
        width = 2 * length
        if width > 0:
            if self.space:
                if self.sharp:
                    width *= 2
                width += length - 1
            elif self.sharp:
                width += 2
        else:
            if self.wid_present:
                self.buf.append(self.padding(self.wid))
            return
        if self.wid_present and self.wid > width and not self.minus:
            self.buf.append(self.padding(self.wid - width))
        out = []
        if self.sharp:
            out.append("0" + digits[16])
        for i in range(length):
            if self.space and i > 0:
                out.append(" ")
                if self.sharp:
                    out.append("0" + digits[16])
            c = data[i]
            out.append(digits[c >> 4] + digits[c & 0xF])
        self.buf.append("".join(out))
        if self.wid_present and self.wid > width and self.minus:
            self.buf.append(self.padding(self.wid - width))

    def fmt_q(self, s: str) -> None:
        s = self.truncate_string(s)
        if self.sharp and _can_backquote(s):
            self.pad("`" + s + "`")
            return
        self.pad(go_quote(s, ascii_only=self.plus))

    def fmt_c(self, c: int) -> None:
        if c > 0x10FFFF or 0xD800 <= c <= 0xDFFF:
            c = 0xFFFD
        self.pad(chr(c))

    def fmt_qc(self, c: int) -> None:
        if c > 0x10FFFF:
            c = 0xFFFD
        self.pad(go_quote_rune(c, ascii_only=self.plus))

    def fmt_float(self, v: float, verb: str, prec: int) -> None:
        if self.prec_present:
            prec = self.prec
        num = format_float(v, verb, prec)
        if num[0] not in "+-":
            num = "+" + num
        if self.space and num[0] == "+" and not self.plus:
            num = " " + num[1:]
        if num[1] in "IN":
            old_zero = self.zero
            self.zero = False
            if num[1] == "N" and not self.space and not self.plus:
                num = num[1:]
            self.pad(num)
            self.zero = old_zero
            return
        if self.sharp and verb != "b":
            num = _sharp_float(num, verb, prec)
        if self.plus or num[0] != "+":
            if self.zero and not self.minus and self.wid_present and self.wid > len(num):
                self.buf.append(num[0])
                self.buf.append(self.padding(self.wid - len(num)))
                self.buf.append(num[1:])
                return
            self.pad(num)
            return
        self.pad(num[1:])

    # -- print.go --

    def bad_verb(self, verb: str, arg: Any, valid: bool = True) -> None:
        self.erroring = True
        self.buf.append("%!" + verb + "(")
        if arg is None and valid:
            self.buf.append("<nil>")
        else:
            self.buf.append(go_type(arg) + "=")
            self.print_arg(arg, "v")
        self.buf.append(")")
        self.erroring = False

    def fmt_bool(self, v: bool, verb: str) -> None:
        if verb in ("t", "v"):
            self.fmt_boolean(v)
        else:
            self.bad_verb(verb, v)

    def fmt_int(self, v: int, verb: str) -> None:
        signed = type(v) is not Uint8
        u = v % _UINT64
        if verb == "v":
            if self.sharp_v and not signed:
                sharp = self.sharp
                self.sharp = True
                self.fmt_integer(u, 16, False, "v", _LDIGITS)
                self.sharp = sharp
            else:
                self.fmt_integer(u, 10, signed, verb, _LDIGITS)
        elif verb == "d":
            self.fmt_integer(u, 10, signed, verb, _LDIGITS)
        elif verb == "b":
            self.fmt_integer(u, 2, signed, verb, _LDIGITS)
        elif verb in ("o", "O"):
            self.fmt_integer(u, 8, signed, verb, _LDIGITS)
        elif verb == "x":
            self.fmt_integer(u, 16, signed, verb, _LDIGITS)
        elif verb == "X":
            self.fmt_integer(u, 16, signed, verb, _UDIGITS)
        elif verb == "c":
            self.fmt_c(u)
        elif verb == "q":
            self.fmt_qc(u)
        elif verb == "U":
            self.fmt_unicode(u)
        else:
            self.bad_verb(verb, v)

    def fmt_float_verb(self, v: float, verb: str, arg: Any) -> None:
        if verb == "v":
            self.fmt_float(v, "g", -1)
        elif verb in ("b", "g", "G", "x", "X"):
            self.fmt_float(v, verb, -1)
        elif verb in ("f", "e", "E"):
            self.fmt_float(v, verb, 6)
        elif verb == "F":
            self.fmt_float(v, "f", 6)
        else:
            self.bad_verb(verb, arg)

    def fmt_complex(self, v: complex, verb: str) -> None:
        if verb in ("v", "b", "g", "G", "x", "X", "f", "F", "e", "E"):
            old_plus = self.plus
            self.buf.append("(")
            self.fmt_float_verb(v.real, verb, v)
            self.plus = True
            self.fmt_float_verb(v.imag, verb, v)
            self.buf.append("i)")
            self.plus = old_plus
        else:
            self.bad_verb(verb, v)

    def fmt_string(self, v: str, verb: str) -> None:
        if verb == "v":
            if self.sharp_v:
                self.fmt_q(v)
            else:
                self.fmt_s(v)
        elif verb == "s":
            self.fmt_s(v)
        elif verb == "x":
            self.fmt_sx(v, _LDIGITS)
        elif verb == "X":
            self.fmt_sx(v, _UDIGITS)
        elif verb == "q":
            self.fmt_q(v)
        else:
            self.bad_verb(verb, v)

    def print_verb(self, arg: Any, verb: str) -> None:
        """One verb of Printf: %v and %w turn # and + into Go-syntax and field flags."""
        if verb in ("v", "w"):
            self.sharp_v, self.sharp = self.sharp, False
            self.plus_v, self.plus = self.plus, False
        if verb == "w":
            self.bad_verb("w", arg)  # %w only means something to Errorf
        else:
            self.print_arg(arg, verb)

    def print_arg(self, arg: Any, verb: str) -> None:
        if arg is None:
            if verb in ("T", "v"):
                self.pad("<nil>")
            else:
                self.bad_verb(verb, None)
            return
        if verb == "T":
            self.fmt_s(go_type(arg))
            return
        if verb == "p":
            self.fmt_pointer(arg, "p")
            return
        self.print_value(arg, verb, 0)

    def print_value(self, value: Any, verb: str, depth: int) -> None:
        kind = type(value)
        if depth > 0 and (kind is float or kind is int):
            # Inside a map or a list: a number as kubectl's JSON round trip left it.
            value = json_number(value)
            kind = type(value)
        if kind is str:
            self.fmt_string(value, verb)
        elif kind is bool:
            self.fmt_bool(value, verb)
        elif kind is int or kind is GoInt or kind is Uint8:
            self.fmt_int(value, verb)
        elif kind is float:
            self.fmt_float_verb(value, verb, value)
        elif kind is complex:
            self.fmt_complex(value, verb)
        elif kind is dict:
            self.print_map(value, verb, depth)
        elif kind is list:
            self.print_list(value, verb, depth)
        elif value is None:
            # An element of a map or a list: a nil interface{}.
            self.buf.append("interface {}(nil)" if self.sharp_v else "<nil>")
        else:  # pragma: no cover - values outside the model
            self.buf.append("?" + go_type(value) + "?")

    def print_map(self, value: dict[str, Any], verb: str, depth: int) -> None:
        if self.sharp_v:
            self.buf.append("map[string]interface {}{")
        else:
            self.buf.append("map[")
        for i, key in enumerate(sorted(value)):
            if i > 0:
                self.buf.append(", " if self.sharp_v else " ")
            self.print_value(key, verb, depth + 1)
            self.buf.append(":")
            self.print_value(value[key], verb, depth + 1)
        self.buf.append("}" if self.sharp_v else "]")

    def print_list(self, value: list[Any], verb: str, depth: int) -> None:
        if self.sharp_v:
            self.buf.append("[]interface {}{")
            for i, item in enumerate(value):
                if i > 0:
                    self.buf.append(", ")
                self.print_value(item, verb, depth + 1)
            self.buf.append("}")
            return
        self.buf.append("[")
        for i, item in enumerate(value):
            if i > 0:
                self.buf.append(" ")
            self.print_value(item, verb, depth + 1)
        self.buf.append("]")

    def fmt_pointer(self, value: Any, verb: str) -> None:
        # Maps and slices have an address in Go, which no other process can predict: print
        # this process's address of the object, in Go's spelling. Other kinds get Go's note.
        if type(value) in (dict, list):
            sharp = self.sharp
            self.sharp = not sharp
            self.fmt_integer(id(value), 16, False, "v", _LDIGITS)
            self.sharp = sharp
            return
        self.bad_verb(verb, value)


def _can_backquote(s: str) -> bool:
    for ch in s:
        if "\udc80" <= ch <= "\udcff" or ch == "\ufeff":
            return False
        if ch.isascii() and ((ch < " " and ch != "\t") or ch == "`" or ch == "\x7f"):
            return False
    return True


def _sharp_float(num: str, verb: str, prec: int) -> str:
    """fmt's ``#`` flag on floats: keep a decimal point and the trailing zeros."""
    digits = 0
    if verb in ("v", "g", "G", "x"):
        digits = prec if prec != -1 else 6
    tail = ""
    has_point = False
    saw_nonzero = False
    i = 1
    body = num
    while i < len(body):
        ch = body[i]
        if ch == ".":
            has_point = True
        elif ch in "pP":
            tail = body[i:]
            body = body[:i]
            break
        elif ch in "eE" and verb not in ("x", "X"):
            tail = body[i:]
            body = body[:i]
            break
        else:
            if ch != "0":
                saw_nonzero = True
            if saw_nonzero:
                digits -= 1
        i += 1
    if not has_point:
        if len(body) == 2 and body[1] == "0":
            digits -= 1
        body += "."
    if digits > 0:
        body += "0" * digits
    return body + tail


# ---------------------------------------------------------------------------------------------
# strconv.FormatFloat


def format_float(v: float, fmt: str, prec: int) -> str:
    """strconv.FormatFloat(v, fmt, prec, 64) for fmt in b e E f g G x X."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    neg = math.copysign(1.0, v) < 0
    if fmt == "b":
        return _fmt_b(v)
    if fmt in ("x", "X"):
        return _fmt_x(v, prec, fmt)
    sign = "-" if neg else ""
    a = abs(v)
    if prec < 0 and fmt in ("g", "G"):
        # %v and %g: the shortest spelling, which gocompat owns.
        text = go_format_float(v)
        return text.replace("e", "E") if fmt == "G" else text
    if prec < 0:
        digits, point = shortest_digits(a)
        if a == 0:
            digits, point = "", 0
        nd = len(digits)
        if fmt in ("e", "E"):
            prec = max(nd - 1, 0)
        elif fmt == "f":
            prec = max(nd - point, 0)
        else:
            prec = nd
        return sign + _format_digits(digits, point, True, prec, fmt)
    if a == 0:
        return sign + _format_digits("", 0, False, prec, fmt)
    if fmt == "f":
        text = f"{a:.{prec}f}"
        whole, _, frac = text.partition(".")
        raw = whole + frac
        stripped = raw.lstrip("0")
        point = len(whole) - (len(raw) - len(stripped))
        digits = stripped.rstrip("0")
        if not digits:
            return sign + _format_digits("", 0, False, prec, fmt)
        return sign + _format_digits(digits, point, False, prec, fmt)
    significant = prec + 1 if fmt in ("e", "E") else max(prec, 1)
    if fmt in ("g", "G") and prec == 0:
        prec = 1
    text = f"{a:.{significant - 1}e}"
    mantissa, _, exp_text = text.partition("e")
    digits = mantissa.replace(".", "").rstrip("0")
    point = int(exp_text) + 1
    if not digits:
        digits, point = "", 0
    return sign + _format_digits(digits, point, False, prec, fmt)


def _format_digits(digits: str, point: int, shortest: bool, prec: int, fmt: str) -> str:
    nd = len(digits)
    if fmt in ("e", "E"):
        return _fmt_e(digits, point, prec, fmt)
    if fmt == "f":
        return _fmt_f(digits, point, prec)
    eprec = prec
    if eprec > nd and nd >= point:
        eprec = nd
    if shortest:
        eprec = 6
    exp = point - 1
    if exp < -4 or exp >= eprec:
        if prec > nd:
            prec = nd
        return _fmt_e(digits, point, prec - 1, "e" if fmt == "g" else "E")
    if prec > point:
        prec = nd
    return _fmt_f(digits, point, max(prec - point, 0))


def _fmt_e(digits: str, point: int, prec: int, fmt: str) -> str:
    first = digits[0] if digits else "0"
    out = first
    if prec > 0:
        rest = digits[1 : 1 + prec]
        out += "." + rest + "0" * (prec - len(rest))
    exp = point - 1 if digits else 0
    exp_sign = "-" if exp < 0 else "+"
    exp = abs(exp)
    exp_text = f"0{exp}" if exp < 10 else str(exp)
    return out + fmt + exp_sign + exp_text


def _fmt_f(digits: str, point: int, prec: int) -> str:
    if point > 0:
        whole = digits[:point] + "0" * max(point - len(digits), 0)
    else:
        whole = "0"
    out = whole
    if prec > 0:
        frac = []
        for i in range(1, prec + 1):
            j = point + i - 1
            frac.append(digits[j] if 0 <= j < len(digits) else "0")
        out += "." + "".join(frac)
    return out


def _bits(v: float) -> tuple[bool, int, int]:
    bits = struct.unpack("<Q", struct.pack("<d", v))[0]
    neg = bits >> 63 != 0
    exp = (bits >> 52) & 0x7FF
    mant = bits & ((1 << 52) - 1)
    if exp == 0:
        exp += 1
    else:
        mant |= 1 << 52
    return neg, mant, exp - 1023


def _fmt_b(v: float) -> str:
    neg, mant, exp = _bits(v)
    exp -= 52
    return ("-" if neg else "") + f"{mant}p" + ("+" if exp >= 0 else "") + str(exp)


def _fmt_x(v: float, prec: int, fmt: str) -> str:
    neg, mant, exp = _bits(v)
    mask64 = (1 << 64) - 1
    if mant == 0:
        exp = 0
    mant = (mant << (60 - 52)) & mask64
    while mant != 0 and mant & (1 << 60) == 0:
        mant = (mant << 1) & mask64
        exp -= 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant = (mant << (60 - shift)) & mask64
        if mant & (1 << 61) != 0:
            mant >>= 1
            exp += 1
    hexdigits = "0123456789abcdef" if fmt == "x" else "0123456789ABCDEF"
    out = ["-" if neg else "", "0", fmt, str((mant >> 60) & 1)]
    mant = (mant << 4) & mask64
    if prec < 0 and mant != 0:
        out.append(".")
        while mant != 0:
            out.append(hexdigits[(mant >> 60) & 15])
            mant = (mant << 4) & mask64
    elif prec > 0:
        out.append(".")
        for _ in range(prec):
            out.append(hexdigits[(mant >> 60) & 15])
            mant = (mant << 4) & mask64
    out.append("p" if fmt == "x" else "P")
    out.append("-" if exp < 0 else "+")
    exp = abs(exp)
    out.append(f"{exp:02d}")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Entry points


def sprint_value(value: Any) -> str:
    """``fmt.Sprint(value)`` for one value (what an action prints)."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    p = _Printer()
    p.print_arg(value, "v")
    return "".join(p.buf)


def sprint(args: list[Any]) -> str:
    """``fmt.Sprint(args...)``: a space between operands when neither is a string."""
    p = _Printer()
    prev_string = False
    for i, arg in enumerate(args):
        is_string = type(arg) is str
        if i > 0 and not is_string and not prev_string:
            p.buf.append(" ")
        p.print_arg(arg, "v")
        prev_string = is_string
    return "".join(p.buf)


def sprintln(args: list[Any]) -> str:
    """``fmt.Sprintln(args...)``: spaces between all operands and a final newline."""
    p = _Printer()
    for i, arg in enumerate(args):
        if i > 0:
            p.buf.append(" ")
        p.print_arg(arg, "v")
    p.buf.append("\n")
    return "".join(p.buf)


def _too_large(x: int) -> bool:
    return x > 1_000_000 or x < -1_000_000


def _parsenum(s: str, start: int, end: int) -> tuple[int, bool, int]:
    if start >= end:
        return 0, False, end
    num = 0
    isnum = False
    i = start
    while i < end and "0" <= s[i] <= "9":
        if _too_large(num):
            return 0, False, end
        num = num * 10 + ord(s[i]) - 48
        isnum = True
        i += 1
    return num, isnum, i


def _int_from_arg(args: list[Any], arg_num: int) -> tuple[int, bool, int]:
    num, is_int, new_arg_num = 0, False, arg_num
    if arg_num < len(args):
        value = args[arg_num]
        if _is_int(value) and type(value) is not bool:
            if -(2**63) <= value < 2**63:
                num, is_int = int(value), True
        new_arg_num = arg_num + 1
        if _too_large(num):
            num, is_int = 0, False
    return num, is_int, new_arg_num


def _parse_arg_number(fmt: str) -> tuple[int, int, bool]:
    if len(fmt) < 3:
        return 0, 1, False
    for i in range(1, len(fmt)):
        if fmt[i] == "]":
            width, ok, newi = _parsenum(fmt, 1, i)
            if not ok or newi != i:
                return 0, i + 1, False
            return width - 1, i + 1, True
    return 0, 1, False


def sprintf(fmt: str, args: list[Any]) -> str:
    """``fmt.Sprintf(fmt, args...)`` (doPrintf)."""
    p = _Printer()
    end = len(fmt)
    arg_num = 0
    after_index = False
    reordered = False
    good_arg_num = True

    def arg_number(arg_num: int, i: int) -> tuple[int, int, bool]:
        nonlocal reordered, good_arg_num
        if end <= i or fmt[i] != "[":
            return arg_num, i, False
        reordered = True
        index, wid, ok = _parse_arg_number(fmt[i:])
        if ok and 0 <= index < len(args):
            return index, i + wid, True
        good_arg_num = False
        return arg_num, i + wid, ok

    i = 0
    while i < end:
        good_arg_num = True
        lasti = i
        i = fmt.find("%", i)
        if i < 0:
            i = end
        if i > lasti:
            p.buf.append(fmt[lasti:i])
        if i >= end:
            break
        i += 1
        p.clearflags()
        simple_done = False
        while i < end:
            c = fmt[i]
            if c == "#":
                p.sharp = True
            elif c == "0":
                p.zero = True
            elif c == "+":
                p.plus = True
            elif c == "-":
                p.minus = True
            elif c == " ":
                p.space = True
            else:
                if "a" <= c <= "z" and arg_num < len(args):
                    p.print_verb(args[arg_num], c)
                    arg_num += 1
                    i += 1
                    simple_done = True
                break
            i += 1
        if simple_done:
            continue
        arg_num, i, after_index = arg_number(arg_num, i)
        if i < end and fmt[i] == "*":
            i += 1
            p.wid, p.wid_present, arg_num = _int_from_arg(args, arg_num)
            if not p.wid_present:
                p.buf.append("%!(BADWIDTH)")
            if p.wid < 0:
                p.wid = -p.wid
                p.minus = True
                p.zero = False
            after_index = False
        else:
            p.wid, p.wid_present, i = _parsenum(fmt, i, end)
            if after_index and p.wid_present:
                good_arg_num = False
        if i + 1 < end and fmt[i] == ".":
            i += 1
            if after_index:
                good_arg_num = False
            arg_num, i, after_index = arg_number(arg_num, i)
            if i < end and fmt[i] == "*":
                i += 1
                p.prec, p.prec_present, arg_num = _int_from_arg(args, arg_num)
                if p.prec < 0:
                    p.prec = 0
                    p.prec_present = False
                if not p.prec_present:
                    p.buf.append("%!(BADPREC)")
                after_index = False
            else:
                p.prec, p.prec_present, i = _parsenum(fmt, i, end)
                if not p.prec_present:
                    p.prec = 0
                    p.prec_present = True
        if not after_index:
            arg_num, i, after_index = arg_number(arg_num, i)
        if i >= end:
            p.buf.append("%!(NOVERB)")
            break
        verb = fmt[i]
        if "\udc80" <= verb <= "\udcff":
            verb = "\ufffd"
        i += 1
        if verb == "%":
            p.buf.append("%")
        elif not good_arg_num:
            p.buf.append("%!" + verb + "(BADINDEX)")
        elif arg_num >= len(args):
            p.buf.append("%!" + verb + "(MISSING)")
        else:
            p.print_verb(args[arg_num], verb)
            arg_num += 1
    if not reordered and arg_num < len(args):
        p.clearflags()
        p.buf.append("%!(EXTRA ")
        for j, arg in enumerate(args[arg_num:]):
            if j > 0:
                p.buf.append(", ")
            if arg is None:
                p.buf.append("<nil>")
            else:
                p.buf.append(go_type(arg) + "=")
                p.print_arg(arg, "v")
        p.buf.append(")")
    return "".join(p.buf)
