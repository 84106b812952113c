"""Protocol: the framing shared by the parent (``pool``) and the workers (``worker``).

Where it sits: between ``pool`` in the parent and ``worker`` in each worker process, on
one ``socketpair`` per worker. Frames in, frames out; nothing else travels on it (the
workers' stdout/stderr are not used for the protocol, so a stray print cannot corrupt it).

Frame layout::

     0               4        5
     ├───────────────┼────────┼──────────────────────────────┐
     │ length (u32be)│ kind   │ payload (length - 1 bytes)   │
     └───────────────┴────────┴──────────────────────────────┘

Kinds are single ASCII bytes (see docs/architecture.md for the table). ``R`` (run) and
``D`` (done) frames carry a JSON header followed by raw bytes (the object, or the
command's stdout and stderr) so large payloads are never JSON-escaped.

Invariant: :class:`FrameProtocol` hands over only whole frames, in order, and reports
the end of the stream (the peer is gone, even after a SIGKILL) exactly once.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, cast

import orjson

VERSION = 1

HELLO = b"H"
CONFIG = b"C"
RUN = b"R"
BEGUN = b"B"
DONE = b"D"
OUTPUT = b"O"
TICK = b"T"
STOP = b"S"
FATAL = b"F"

_HEAD = struct.Struct(">IB")
_U32 = struct.Struct(">I")
MAX_FRAME = 1 << 30
"""A frame larger than this means the stream is corrupt (objects are at most ~1.5 MiB)."""


class ProtocolError(Exception):
    """Raised when a frame is malformed (bad length or kind)."""


def frame(kind: bytes, payload: bytes) -> bytes:
    """Encode one frame."""
    return _HEAD.pack(len(payload) + 1, kind[0]) + payload


def json_frame(kind: bytes, data: Any) -> bytes:
    """Encode a frame whose payload is JSON."""
    return frame(kind, orjson.dumps(data))


def split_frame(kind: bytes, header: dict[str, Any], *blobs: bytes) -> bytes:
    """Encode a frame as u32 header length + JSON header + raw blobs (run/done frames)."""
    head = orjson.dumps(header)
    return frame(kind, _U32.pack(len(head)) + head + b"".join(blobs))


def parse_split(payload: bytes) -> tuple[dict[str, Any], memoryview]:
    """Decode a ``split_frame`` payload into its header and the raw bytes after it."""
    (hlen,) = _U32.unpack_from(payload, 0)
    header = orjson.loads(payload[4 : 4 + hlen])
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    return header, memoryview(payload)[4 + hlen :]


FrameHandler = Callable[[bytes, bytes], None]


class FrameProtocol(asyncio.Protocol):
    """Splits the byte stream into frames as it arrives and hands each to ``on_frame``.

    Synchronous on purpose: a burst of small frames (DONE results, RUN jobs) is handled in
    one ``data_received`` call, with no coroutine or future per frame. ``on_eof`` runs once
    when the peer is gone (or the stream is corrupt).
    """

    def __init__(self, on_frame: FrameHandler, on_eof: Callable[[], None]) -> None:
        self.on_frame = on_frame
        self.on_eof = on_eof
        self._buf = bytearray()
        self._ended = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, size = 0, len(buf)
        while size - pos >= 5:
            length, kind = _HEAD.unpack_from(buf, pos)
            if length < 1 or length > MAX_FRAME:
                self._end()
                if self.transport is not None:
                    self.transport.abort()
                return
            end = pos + 4 + length
            if end > size:
                break
            payload = bytes(buf[pos + 5 : end])
            pos = end
            self.on_frame(bytes((kind,)), payload)
        if pos:
            del buf[:pos]

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.on_eof()


async def connect(sock: object, on_frame: FrameHandler, on_eof: Callable[[], None]) -> asyncio.Transport:
    """Wrap a connected socket (one end of the socketpair) in a :class:`FrameProtocol`."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(
        lambda: FrameProtocol(on_frame, on_eof), sock=sock  # type: ignore[arg-type]
    )
    return transport
