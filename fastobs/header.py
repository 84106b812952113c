"""Header lines as ``oc observe`` prints them before each command.

Where it sits: in each worker, the ``runner`` calls :func:`header_body` with the event type,
resourceVersion and the argv it builds, when the command starts; the body travels in the
DONE (or, in stream mode, BEGUN) frame with the start time, and the parent's ``output``
stamps it with :class:`Stamps` and prints it unless ``-q``, beside its own ``Sync
started``/``Sync ended`` lines stamped by the same :class:`Stamps`.

In: a Unix time, an event type, a resourceVersion and an argv. Out: text without the final
newline, byte-for-byte what oc prints: ``# <TS> <Type> <rv>\\t<command line>``.

Invariants: an argv element is Go-quoted (``strconv.Quote``) exactly when it is empty or holds
a double quote, a backslash or an ASCII space, as oc does; elements that came from undecodable
bytes (surrogate escapes) are quoted as the bytes Go would have seen. The timestamp is Go RFC
3339 with whole seconds in the local zone, formatted once per second; the stamps of the lines
of one run never go backwards (:class:`Stamps`), as oc's never do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from fastobs.gocompat import go_quote

__all__ = ["Stamps", "format_cmdline", "header_body", "header_line", "rfc3339_local"]


def _needs_quoting(arg: str) -> bool:
    return not arg or '"' in arg or "\\" in arg or " " in arg


def format_cmdline(argv: Sequence[str]) -> str:
    """Return the command line oc prints: elements joined by spaces, some Go-quoted.

    ``argv[0]`` is the executable; an empty one (no command configured) prints as ``""``.
    """
    if not argv:
        return '""'
    return " ".join(go_quote(arg) if _needs_quoting(arg) else arg for arg in argv)


def header_body(type_: str, rv: str, argv: Sequence[str]) -> str:
    """Return ``<type> <rv>\\t<command line>``: the header line after its ``# <TS> ``."""
    return f"{type_} {rv}\t{format_cmdline(argv)}"


def header_line(ts: str, type_: str, rv: str, argv: Sequence[str]) -> str:
    """Return ``# <ts> <type> <rv>\\t<command line>`` (no trailing newline)."""
    return f"# {ts} {header_body(type_, rv, argv)}"


class Stamps:
    """The ``<TS>`` of each ``#`` line, never earlier than the one printed before it.

    oc runs one command at a time and stamps each line as it prints it, so its stamps only
    go forward. fastobs prints a command's header when the command ends (grouped output),
    stamped with the time it started, and commands run in parallel: a command that started
    earlier may end later. Each stamp is therefore the line's own time or the last stamp
    printed, whichever is later.
    """

    def __init__(self) -> None:
        self._last = -math.inf

    def stamp(self, epoch: float) -> str:
        """The ``<TS>`` to print for a line whose own time is ``epoch`` (a Unix time)."""
        self._last = max(self._last, math.floor(epoch))
        return rfc3339_local(self._last)


_last_second: int | None = None
_last_stamp = ""


def rfc3339_local(epoch: float) -> str:
    """Return Go's RFC 3339 time (whole seconds, local zone) for a Unix time.

    ``2024-05-01T12:00:00Z`` when the local offset is zero, ``2024-05-01T14:00:00+02:00``
    otherwise. The last formatted second is cached: headers come in bursts.
    """
    global _last_second, _last_stamp
    second = math.floor(epoch)
    if second == _last_second:
        return _last_stamp
    stamp = _format_second(second)
    _last_second, _last_stamp = second, stamp
    return stamp


def _format_second(second: int) -> str:
    local = time.localtime(second)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", local)
    offset = local.tm_gmtoff
    if offset == 0:
        return base + "Z"
    sign = "+" if offset > 0 else "-"
    # Go prints hours and minutes only; an offset with seconds (old LMT zones) is truncated.
    minutes = abs(offset) // 60
    return f"{base}{sign}{minutes // 60:02d}:{minutes % 60:02d}"
