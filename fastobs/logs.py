"""Logs: fastobs's own messages (never the commands' output), as text or JSON lines.

Where it sits: configured once by ``daemon`` from ``--log-format``/``--log-level``; every
module logs through ``logging.getLogger(__name__)``. Records may carry ``key``, ``type``
and ``rv`` (pass them with ``extra=``); JSON lines include them.

Invariant: object contents are never logged (the resource may be Secrets): only keys,
event types and resourceVersions. Under ``--log-format json`` every line fastobs itself
writes on stderr is a JSON record, oc's own ``error:`` and ``warning:`` lines included
(:func:`oc_line`); usage errors found while parsing the flags come before any format is
known and stay text.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

import orjson

from .settings import DEBUG_VERBOSITY

_FIELDS = ("key", "type", "rv", "result", "reason", "code", "worker")


_json = False
"""Whether ``--log-format json`` is in force (set by :func:`setup`)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus key/type/rv when present."""

    def format(self, record: logging.LogRecord) -> str:
        data = _record(record.created, record.levelname.lower(), record.name, record.getMessage(),
                       record.__dict__)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(data).decode()


def _record(created: float, level: str, logger: str, msg: str,
            fields: Mapping[str, object]) -> dict[str, object]:
    millis = int(created * 1000) % 1000
    data: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z",
        "level": level,
        "logger": logger,
        "msg": msg,
    }
    for name in _FIELDS:
        value = fields.get(name)
        if value is not None:
            data[name] = value
    return data


def oc_line(message: str, level: str = "error", fields: Mapping[str, object] | None = None, *,
            prefix: str | None = None) -> str:
    """One of the lines oc itself prints on stderr (``error: ...``, ``warning: ...``, or a
    bare notice for ``info``), newline included: as oc prints it, or, under
    ``--log-format json``, as a JSON record of that level carrying ``fields`` (key, type...).
    ``prefix`` replaces the text's ``<level>: `` (kubectl's discovery lines carry their own)."""
    if _json:
        return orjson.dumps(_record(time.time(), level, "fastobs", message, fields or {})).decode() + "\n"
    if prefix is not None:
        return f"{prefix}{message}\n"
    return f"{level}: {message}\n" if level in ("error", "warning") else f"{message}\n"


class TextFormatter(logging.Formatter):
    """``<L> fastobs: msg [key=... type=...]``, then the traceback (``exc_info``) or stack
    (``stack_info``) on the lines below, as the standard formatter prints them."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{name}={record.__dict__[name]}" for name in _FIELDS if record.__dict__.get(name) is not None
        )
        msg = record.getMessage()
        text = f"{record.levelname[0]} fastobs: {msg}" + (f" [{extra}]" if extra else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def setup(fmt: str, level: str, verbosity: int = 0) -> None:
    """Send fastobs's logs to stderr in the chosen format; ``-v 4`` and up means debug (oc's klog levels)."""
    global _json
    _json = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _json else TextFormatter())
    root = logging.getLogger("fastobs")
    root.handlers[:] = [handler]
    root.propagate = False
    lvl = logging.DEBUG if verbosity >= DEBUG_VERBOSITY else getattr(logging, level.upper(), logging.INFO)
    root.setLevel(lvl)
