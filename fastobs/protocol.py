"""Protocol: the frames and typed messages shared by the parent (``pool``) and the workers (``worker``).

Where it sits: between ``pool`` in the parent and ``worker`` in each worker process, on
one ``socketpair`` per worker. Frames in, frames out; nothing else travels on it (the
workers' stdout/stderr are not used for the protocol, so a stray print cannot corrupt it).

Frame layout::

     0               4        5
     ├───────────────┼────────┼──────────────────────────────┐
     │ length (u32be)│ kind   │ payload (length - 1 bytes)   │
     └───────────────┴────────┴──────────────────────────────┘

Kinds are single ASCII bytes (see docs/architecture.md for the table). Each kind's JSON
payload is one ``TypedDict`` below (:class:`Hello`, :class:`Job`, :class:`Done`...), and
each has one ``encode_*``/``decode_*`` pair, used on both sides. ``R`` (run), ``D`` (done)
and ``O`` (output) frames carry a JSON header followed by raw bytes (the object, or the
command's output) so large payloads are never JSON-escaped.

Invariants: :class:`FrameProtocol` hands over only whole frames, in order, and reports the
end of the stream (the peer is gone, even after a SIGKILL) exactly once; a worker's HELLO
names the protocol :data:`VERSION` it speaks, and the parent refuses a worker that speaks
another (``pool``). Messages are plain dicts on both sides: typing them costs nothing per
frame.
"""

# No "from __future__ import annotations": TypedDict reads NotRequired[...] at runtime only
# from evaluated annotations (the optional keys are checked against docs/architecture.md).
import asyncio
import struct
from collections.abc import Callable, Mapping
from typing import Any, NotRequired, TypedDict, cast

import orjson

from .settings import RunSettings

VERSION = 4
"""Bumped whenever a message changes; HELLO carries it and the parent checks it."""

HELLO = b"H"
CONFIG = b"C"
RUN = b"R"
BEGUN = b"B"
DONE = b"D"
OUTPUT = b"O"
TICK = b"T"
STOP = b"S"
FATAL = b"F"
LEASE = b"L"
KILL = b"K"

_HEAD = struct.Struct(">IB")
_U32 = struct.Struct(">I")
MAX_FRAME = 1 << 30
"""A frame larger than this means the stream is corrupt (objects are at most ~1.5 MiB, a
command's output at most ``--output-limit``, itself at most 256 MiB); none is ever sent."""


class ProtocolError(Exception):
    """Raised when a frame is malformed (bad length or kind)."""


def frame(kind: bytes, payload: bytes) -> bytes:
    """Encode one frame; raises :class:`ProtocolError` rather than build one the peer would refuse."""
    if len(payload) >= MAX_FRAME:
        raise ProtocolError(f"a {kind.decode()!r} frame of {len(payload) + 1} bytes is over the "
                            f"limit of {MAX_FRAME}")
    return _HEAD.pack(len(payload) + 1, kind[0]) + payload


def json_frame(kind: bytes, data: Any) -> bytes:
    """Encode a frame whose payload is JSON."""
    return frame(kind, orjson.dumps(data))


def split_frame(kind: bytes, header: Mapping[str, object], *blobs: bytes) -> bytes:
    """Encode a frame as u32 header length + JSON header + raw blobs (run/done frames)."""
    head = orjson.dumps(header)
    return frame(kind, _U32.pack(len(head)) + head + b"".join(blobs))


def parse_split(payload: bytes) -> tuple[Any, memoryview]:
    """Decode a ``split_frame`` payload into its header and the raw bytes after it."""
    (hlen,) = _U32.unpack_from(payload, 0)
    header = orjson.loads(payload[4 : 4 + hlen])
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    return header, memoryview(payload)[4 + hlen :]


# --- messages: one TypedDict per frame kind ------------------------------------------------


class Hello(TypedDict):
    """``H``, worker → parent, once the worker is ready."""

    v: int
    """The protocol :data:`VERSION` the worker speaks."""
    pid: int


class Job(TypedDict):
    """``R``, parent → worker: the JSON header of one job; the object's raw JSON follows it."""

    id: int
    type: str
    """The event type: Sync, Added, Updated or Deleted."""
    ns: str
    name: str
    rv: str
    cached_arg: str | None
    """oc's cached template output of a deleted object (rendered when its last state was run)."""
    bucket: NotRequired[int]
    """In a group of replicas: the object's bucket (the command's ``FASTOBS_BUCKET``)."""
    epoch: NotRequired[int]
    """In a group of replicas: the bucket's epoch, its Lease's ``leaseTransitions``, a fencing
    token for the command (``FASTOBS_SHARD_EPOCH``)."""


class Begun(TypedDict):
    """``B``, worker → parent, stream mode only: the header line precedes the command's output."""

    id: int
    t: float
    header: str
    """The header line after its ``# <TS> ``; the parent stamps it (see ``Done.header``)."""


class Done(TypedDict):
    """``D``, worker → parent: the result header; the command's stdout (``ol`` bytes) and
    stderr follow it."""

    id: int
    header: str
    """``<Type> <rv>\\t<command line>``: the line oc prints before the output, without its
    ``# <TS> `` prefix; the parent stamps it from ``started``, so the stamps it prints
    never go backwards."""
    arg: str | None
    """The template output passed as the last argument (None: no template)."""
    ok: bool
    started: float
    """Monotonic time the first attempt started (the clock is shared with the parent)."""
    ended: float
    attempts: list[tuple[int, float]]
    """(oc's exit code, seconds) per attempt; JSON arrays on the wire."""
    reason: NotRequired[str]
    """Why it failed: a spawn_error, timeout, signal or exit reason; empty on success."""
    code: NotRequired[str]
    """The exit status, signal or errno name of the last attempt."""
    retries: NotRequired[int]
    error: NotRequired[str]
    """oc's one-line error message, on failure."""
    nocmd: NotRequired[bool]
    """No command was configured for this event type: only the header was printed."""
    dropped: NotRequired[int]
    """Bytes of output over ``--output-limit`` that were dropped (marked in the output)."""
    rx: NotRequired[float]
    """Monotonic time the worker read the job (the hand-off ends here)."""
    spawned: NotRequired[float]
    """Monotonic time the first attempt's command had been exec'd (spawn returned)."""
    ol: NotRequired[int]
    """Framing: the length of stdout among the bytes after the header (set by encode_done)."""


INVALID_OBJECT = "invalid_object"
"""The ``reason`` of a :class:`Done` whose object could not be decoded or rendered (nested
deeper than the JSON parser goes): no command ran, and the event failed for its key alone."""


class OutputLine(TypedDict):
    """``O``, worker → parent, stream mode: the header of one line of output, which follows it."""

    id: int
    fd: int


class Tick(TypedDict):
    """``T``, worker → parent, every second: the heartbeat ``/livez`` checks, and the gauges."""

    running: int
    oldest: float
    """Monotonic start of the oldest running command (0: none)."""


class Stop(TypedDict):
    """``S``, parent → worker: finish running commands within ``grace`` seconds (0: none, the
    running commands are killed at once).

    A later STOP with ``now`` (a second signal) kills the running commands at once."""

    grace: float
    now: NotRequired[bool]


class Fatal(TypedDict):
    """``F``, worker → parent: an error that must stop fastobs (oc exits 1)."""

    message: str
    id: NotRequired[int]


class Lease(TypedDict):
    """``L``, parent → worker, in a group of replicas: commands may start until ``until`` (the
    fencing clock); those still running then get SIGTERM, and SIGKILL ``grace`` seconds later."""

    until: float
    grace: float


class Kill(TypedDict):
    """``K``, parent → worker: stop the commands of these jobs (their buckets are given up)
    with SIGTERM, then SIGKILL after ``grace``; their results say ``fenced``."""

    ids: list[int]
    grace: float


MESSAGES: dict[bytes, type] = {HELLO: Hello, CONFIG: RunSettings, RUN: Job, BEGUN: Begun, DONE: Done,
                               OUTPUT: OutputLine, TICK: Tick, STOP: Stop, FATAL: Fatal, LEASE: Lease,
                               KILL: Kill}
"""The payload type of each frame kind (``C`` carries the worker's ``RunSettings`` as JSON)."""


def encode_hello(pid: int) -> bytes:
    hello: Hello = {"v": VERSION, "pid": pid}
    return json_frame(HELLO, hello)


def decode_hello(payload: bytes) -> Hello:
    hello: Hello = _json_object(payload)
    return hello


def encode_config(run: RunSettings) -> bytes:
    return json_frame(CONFIG, run.to_json_dict())


def decode_config(payload: bytes) -> RunSettings:
    return RunSettings.from_json_dict(_json_object(payload))


def encode_run(job: Job, obj: bytes) -> bytes:
    return split_frame(RUN, job, obj)


def decode_run(payload: bytes) -> tuple[Job, bytes | None]:
    """The job and its object's JSON (None when the event carried no object)."""
    header, rest = parse_split(payload)
    job: Job = header
    return job, bytes(rest) if len(rest) else None


def encode_begun(begun: Begun) -> bytes:
    return json_frame(BEGUN, begun)


def decode_begun(payload: bytes) -> Begun:
    begun: Begun = _json_object(payload)
    return begun


def encode_done(done: Done, out: bytes, err: bytes) -> bytes:
    done["ol"] = len(out)
    return split_frame(DONE, done, out, err)


def decode_done(payload: bytes) -> tuple[Done, bytes, bytes]:
    """The result header (without ``ol``), stdout and stderr."""
    header, rest = parse_split(payload)
    done: Done = header
    ol = done.pop("ol", 0)
    return done, bytes(rest[:ol]), bytes(rest[ol:])


def encode_output(job_id: int, fd: int, line: bytes) -> bytes:
    head: OutputLine = {"id": job_id, "fd": fd}
    return split_frame(OUTPUT, head, line)


def decode_output(payload: bytes) -> tuple[OutputLine, bytes]:
    header, rest = parse_split(payload)
    head: OutputLine = header
    return head, bytes(rest)


def encode_tick(tick: Tick) -> bytes:
    return json_frame(TICK, tick)


def decode_tick(payload: bytes) -> Tick:
    tick: Tick = _json_object(payload)
    return tick


def encode_stop(grace: float, *, now: bool = False) -> bytes:
    stop: Stop = {"grace": grace}
    if now:
        stop["now"] = True
    return json_frame(STOP, stop)


def decode_stop(payload: bytes) -> Stop:
    """The stop request; an empty payload means a grace of 0."""
    if not payload:
        return {"grace": 0.0}
    stop: Stop = _json_object(payload)
    return stop


def encode_fatal(message: str, job_id: int | None = None) -> bytes:
    fatal: Fatal = {"message": message}
    if job_id is not None:
        fatal["id"] = job_id
    return json_frame(FATAL, fatal)


def decode_fatal(payload: bytes) -> Fatal:
    fatal: Fatal = _json_object(payload)
    return fatal


def encode_lease(until: float, grace: float) -> bytes:
    lease: Lease = {"until": until, "grace": grace}
    return json_frame(LEASE, lease)


def decode_lease(payload: bytes) -> Lease:
    lease: Lease = _json_object(payload)
    return lease


def encode_kill(ids: list[int], grace: float) -> bytes:
    kill: Kill = {"ids": ids, "grace": grace}
    return json_frame(KILL, kill)


def decode_kill(payload: bytes) -> Kill:
    kill: Kill = _json_object(payload)
    return kill


def _json_object(payload: bytes) -> Any:
    data = orjson.loads(payload)
    if not isinstance(data, dict):
        raise ProtocolError("frame payload is not a JSON object")
    return data


# --- the frame stream -----------------------------------------------------------------------


FrameHandler = Callable[[bytes, bytes], None]


class FrameProtocol(asyncio.Protocol):
    """Splits the byte stream into frames as it arrives and hands each to ``on_frame``.

    Synchronous on purpose: a burst of small frames (DONE results, RUN jobs) is handled in
    one ``data_received`` call, with no coroutine or future per frame. ``on_eof`` runs once
    when the peer is gone (or the stream is corrupt).
    """

    def __init__(self, on_frame: FrameHandler, on_eof: Callable[[], None],
                 on_pause: Callable[[bool], None] | None = None) -> None:
        self.on_frame = on_frame
        self.on_eof = on_eof
        self.on_pause = on_pause
        """Called with True when the transport's write buffer is over its high-water mark
        (the peer is not reading), with False once it drained below the low one."""
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

    def pause_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause(True)

    def resume_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause(False)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.on_eof()


async def connect(sock: object, on_frame: FrameHandler, on_eof: Callable[[], None],
                  on_pause: Callable[[bool], None] | None = None) -> asyncio.Transport:
    """Wrap a connected socket (one end of the socketpair) in a :class:`FrameProtocol`."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(
        lambda: FrameProtocol(on_frame, on_eof, on_pause), sock=sock  # type: ignore[arg-type]
    )
    return transport
