"""Logs: fastobs's own messages (never the commands' output), as text or JSON lines.

Where it sits: configured once by ``daemon`` from ``--log-format``/``--log-level``; every
module logs through ``logging.getLogger(__name__)``. Records may carry ``key``, ``type``
and ``rv`` (pass them with ``extra=``); JSON lines include them.

Invariant: object contents are never logged (the resource may be Secrets): only keys,
event types and resourceVersions.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from .settings import DEBUG_VERBOSITY

_FIELDS = ("key", "type", "rv", "result", "reason", "code", "worker")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus key/type/rv when present."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(data).decode()


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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("fastobs")
    root.handlers[:] = [handler]
    root.propagate = False
    lvl = logging.DEBUG if verbosity >= DEBUG_VERBOSITY else getattr(logging, level.upper(), logging.INFO)
    root.setLevel(lvl)
