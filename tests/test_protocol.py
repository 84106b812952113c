"""Frame encoding and the incremental frame parser (fastobs.protocol)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastobs import protocol


def collect() -> tuple[protocol.FrameProtocol, list[tuple[bytes, bytes]], list[bool]]:
    frames: list[tuple[bytes, bytes]] = []
    ended: list[bool] = []
    proto = protocol.FrameProtocol(lambda k, p: frames.append((k, p)), lambda: ended.append(True))
    return proto, frames, ended


@given(
    st.lists(st.tuples(st.sampled_from([b"R", b"D", b"T"]), st.binary(max_size=300)), max_size=20),
    st.lists(st.integers(1, 50), min_size=1, max_size=10),
)
def test_frames_survive_any_chunking(messages: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    """Whole frames come out in order however the byte stream is split."""
    stream = b"".join(protocol.frame(k, p) for k, p in messages)
    proto, frames, ended = collect()
    pos, i = 0, 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        proto.data_received(stream[pos : pos + size])
        pos += size
        i += 1
    assert frames == messages
    assert not ended


def test_split_frames_round_trip() -> None:
    header = {"id": 7, "type": "Sync", "cached_arg": None}
    kind_payload = protocol.split_frame(protocol.DONE, header, b"out\n", b"err\n")
    proto, frames, _ = collect()
    proto.data_received(kind_payload)
    ((kind, payload),) = frames
    got, rest = protocol.parse_split(payload)
    assert kind == protocol.DONE and got == header and bytes(rest) == b"out\nerr\n"


@pytest.mark.parametrize("length", [0, protocol.MAX_FRAME + 1])
def test_corrupt_length_ends_the_stream(length: int) -> None:
    proto, frames, ended = collect()
    proto.data_received(length.to_bytes(4, "big") + b"R" + b"x" * 10)
    assert frames == [] and ended == [True]


def test_eof_is_reported_once() -> None:
    proto, _, ended = collect()
    proto.eof_received()
    proto.connection_lost(None)
    assert ended == [True]


def _one_frame(data: bytes) -> tuple[bytes, bytes]:
    proto, frames, _ = collect()
    proto.data_received(data)
    ((kind, payload),) = frames
    return kind, payload


def test_typed_messages_round_trip() -> None:
    """Each message kind decodes to what was encoded, behind the right kind byte."""
    job: protocol.Job = {"id": 7, "type": "Updated", "ns": "default", "name": "web", "rv": "42",
                         "cached_arg": None}
    kind, payload = _one_frame(protocol.encode_run(job, b'{"kind":"Pod"}'))
    assert (kind, protocol.decode_run(payload)) == (protocol.RUN, (job, b'{"kind":"Pod"}'))
    assert protocol.decode_run(_one_frame(protocol.encode_run(job, b""))[1]) == (job, None)

    done: protocol.Done = {"id": 7, "header": "# h", "arg": "x", "ok": False, "started": 1.5, "ended": 2.0,
                           "attempts": [(3, 0.5)], "reason": "exit", "code": "3", "retries": 0, "error": "e"}
    kind, payload = _one_frame(protocol.encode_done(done.copy(), b"out\n", b"err\n"))
    got, out, err = protocol.decode_done(payload)
    assert (kind, out, err) == (protocol.DONE, b"out\n", b"err\n")
    assert got == {**done, "attempts": [[3, 0.5]]}  # JSON has no tuples

    kind, payload = _one_frame(protocol.encode_output(7, 2, b"line\n"))
    assert (kind, protocol.decode_output(payload)) == (protocol.OUTPUT, ({"id": 7, "fd": 2}, b"line\n"))
    assert protocol.decode_stop(_one_frame(protocol.encode_stop(2.5))[1]) == {"grace": 2.5}
    assert protocol.decode_stop(_one_frame(protocol.encode_stop(0, now=True))[1]) == {"grace": 0, "now": True}
    assert protocol.decode_stop(b"") == {"grace": 0.0}
    fatal = protocol.decode_fatal(_one_frame(protocol.encode_fatal("boom", 7))[1])
    assert fatal == {"message": "boom", "id": 7}
    hello = protocol.decode_hello(_one_frame(protocol.encode_hello(123))[1])
    assert hello == {"v": protocol.VERSION, "pid": 123}


def test_a_payload_that_is_not_a_json_object_is_a_protocol_error() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_tick(b"[1, 2]")
