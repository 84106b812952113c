"""Unit tests for fastobs.watchstream's fallback for objects the JSON parser gives up on:
``scan_json`` against orjson on generated documents, and the partial events and list pages
built from it."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastobs.watchstream import (
    Failure,
    JsonPath,
    PartialObject,
    object_bytes,
    parse_event,
    parse_object,
    scan_json,
    split_list,
    with_type,
)

KEYS = st.sampled_from(["a", "b", "metadata", "name", 'q"uote', "back\\slash", "ü", "x y"])
SCALARS = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False,
                                                                                  allow_infinity=False) \
    | st.text(alphabet=st.sampled_from('ab"\\/\n\t{}[]:, é'), max_size=8)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEYS, inner, max_size=4), max_leaves=25)


def paths_of(value: Any, prefix: tuple[str | None, ...] = ()) -> list[tuple[tuple[str | None, ...], Any]]:
    """Every (path, value) in a document; None stands for any array element."""
    out = [(prefix, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for v in value:
            out += paths_of(v, (*prefix, None))
    return out


def encoded(path: tuple[str | None, ...]) -> JsonPath:
    return tuple(None if k is None else orjson.dumps(k) for k in path)


@settings(max_examples=300, deadline=None)
@given(VALUES, st.booleans())
def test_scan_json_finds_what_the_parser_finds(doc: Any, spaced: bool) -> None:
    text = json.dumps(doc, indent=1, ensure_ascii=False).encode() if spaced else orjson.dumps(doc)
    expected: dict[JsonPath, list[Any]] = {}
    for path, value in paths_of(doc):
        expected.setdefault(encoded(path), []).append(value)
    found = scan_json(text, expected)
    assert {p: [orjson.loads(text[a:b]) for a, b in spans] for p, spans in found.items()} == expected


@pytest.mark.parametrize("text", [b'{"a":1', b'{"a" 1}]', b'[1,2}', b'{1:2}', b'{"a":[}'])
def test_scan_json_rejects_broken_structure(text: bytes) -> None:
    with pytest.raises(ValueError):
        scan_json(text, [("a",)])  # type: ignore[list-item]


def deep(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


def test_an_event_too_deep_to_parse_keeps_its_key_and_bytes() -> None:
    obj = (b'{"kind":"W","metadata":{"name":"n","namespace":"ns","uid":"u1","resourceVersion":"7",'
           b'"managedFields":[{"fieldsV1":' + deep(2000) + b'}]},"spec":' + deep(5000) + b"}")
    line = b'{"type":"MODIFIED","object":' + obj + b"}"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line)
    etype, parsed, md = parse_event(line)
    assert (etype, md) == ("MODIFIED", {"name": "n", "namespace": "ns", "uid": "u1", "resourceVersion": "7"})
    assert isinstance(parsed, PartialObject) and "depth" in parsed.error
    assert object_bytes(line, parsed) == obj


@pytest.mark.parametrize("line", [
    b'{"type":"ADDED","object":' + deep(2000) + b"}",  # no metadata.name: not an object event
    b'{"type":"ADDED","object":{"metadata":{"name":"n"},"spec":' + deep(2000),  # cut short
    b'{"type":7,"object":{"metadata":{"name":"n"},"spec":' + deep(2000) + b"}}",
])
def test_lines_that_are_not_events_still_fail(line: bytes) -> None:
    with pytest.raises(Failure):
        parse_event(line)


def test_a_list_page_with_an_item_too_deep_is_split_item_by_item() -> None:
    good = b'{"metadata":{"name":"a","uid":"1"},"data":{"k":"v"}}'
    bad = b'{"metadata":{"name":"b","uid":"2","resourceVersion":"9"},"spec":' + deep(3000) + b"}"
    typed = b'{"apiVersion":"g/v1","kind":"W","metadata":{"name":"c"},"spec":' + deep(3000) + b"}"
    body = (b'{"kind":"WList","apiVersion":"g/v1","metadata":{"resourceVersion":"10","continue":"t"},'
            b'"items":[' + good + b"," + bad + b"," + typed + b"]}")
    fields, items = split_list(body)
    assert fields == {"kind": "WList", "apiVersion": "g/v1", "resourceVersion": "10", "continue": "t"}
    assert items == [good, bad, typed]
    a, b, c = (parse_object(i) for i in items)
    assert a == orjson.loads(good) and type(a) is dict
    assert isinstance(b, PartialObject) and b["metadata"] == {"name": "b", "uid": "2", "resourceVersion": "9"}
    assert with_type(b, "g/v1", "W") == b'{"apiVersion":"g/v1","kind":"W",' + bad[1:]
    assert isinstance(c, PartialObject) and with_type(c, "g/v1", "W") == typed  # already typed
