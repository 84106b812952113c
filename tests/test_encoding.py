"""Object JSON for --object-env-var: byte-compared with real kubectl and with Go's encoding/json."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from fastobs.encoding import go_json, kubectl_json, kubectl_json_of
from fastobs.gocompat import go_format_float, go_json_float

DATA = Path(__file__).parent / "data" / "template"
OBJECT = DATA / "object.json"
KUBECTL = Path(sys.executable).parent / "kubectl"

KUBECONFIG = (DATA / "offline.kubeconfig").read_text()

_WS_OR_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\s+')


def compact(text: str) -> str:
    """Remove the whitespace Go's json.Indent added (like json.Compact)."""
    return _WS_OR_STRING.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "", text)


def kubectl_offline(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the real kubectl with a kubeconfig pointing at no server."""
    if not KUBECTL.exists():
        pytest.skip("kubectl is not installed in the virtualenv")
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)}
    return subprocess.run([str(KUBECTL), *args], capture_output=True, env=env, timeout=60, check=False)


def test_matches_real_kubectl_json(tmp_path: Path) -> None:
    """go_json gives the bytes of kubectl's JSON (compacted), escapes and number spellings included."""
    # annotate --local with a value the fixture already has: kubectl prints the object unchanged.
    args = ["annotate", "--local", "-f", str(OBJECT), "--overwrite", "fx=1", "-o", "json"]
    done = kubectl_offline(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    expected = compact(done.stdout.decode()).encode()
    obj = orjson.loads(OBJECT.read_bytes())
    assert go_json(obj) == expected
    assert kubectl_json(obj) == expected + b"\n"


def run_goref_json(values: list[Any], tmp_path: Path) -> list[str]:
    """Marshal ``values`` with Go's encoding/json after an unstructured-style decode."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain is not installed")
    src = tmp_path / "goref.go"
    shutil.copy(DATA / "goref.go", src)
    request = {"json": values, "fmtv": []}
    done = subprocess.run(
        ["go", "run", str(src)], input=json.dumps(request), capture_output=True, text=True,
        env={**os.environ, "GO111MODULE": "off"}, cwd=tmp_path, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: list[str] = json.loads(done.stdout)["json"]
    return answer


FLOATS = [
    0.0, -0.0, 1.0, -1.0, 0.5, 0.1, 1e-6, 9.99e-7, 1e-7, 1.5e-7, 123456.0, 1234567.0, 1e20, 1e21,
    1.5e21, 9.999999999999999e20, 1.7976931348623157e308, 5e-324, 2.5e-5, 0.0001, 0.00001,
    3.14159, 1e100, 123456789.123, 2**53 + 0.0, 1e15, 1e16, 1e17, -123.456e-10,
]


def test_numbers_match_go(tmp_path: Path) -> None:
    """Floats, int64 limits and integers past int64 are spelled as Go's encoding/json spells them."""
    values: list[Any] = [*FLOATS, 0, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 10**30]
    nested: list[Any] = [[2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 10**30, -(2**63) - 1], {"a": [1.5, 2**63]}]
    expected = run_goref_json([*values, *nested], tmp_path)
    assert [go_json(v).decode() for v in values] == expected[: len(values)]
    # The byte path, from the server's spelling, top level and nested (no gap there).
    from_bytes = [kubectl_json_of(_server_bytes(v)).decode() for v in [*values, *nested]]
    assert from_bytes == [e + "\n" for e in expected]


def test_float_fmt_v_matches_go(tmp_path: Path) -> None:
    """go_format_float matches fmt.Sprint(float64) (used when a template prints a float)."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain is not installed")
    src = tmp_path / "goref.go"
    shutil.copy(DATA / "goref.go", src)
    done = subprocess.run(
        ["go", "run", str(src)], input=json.dumps({"fmtv": FLOATS}), capture_output=True, text=True,
        env={**os.environ, "GO111MODULE": "off"}, cwd=tmp_path, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [go_format_float(f) for f in FLOATS] == json.loads(done.stdout)["fmtv"]


STRING_PIECES = ["a", "<", ">", "&", "\u2028", "\u2029", "\x00", "\x1f", "\x7f", "\b", "\f", "\n", "\t",
                 '"', "\\", "/", "é", "日", "🎉", "\ufeff", "\u00a0", " ", "1.5,", ":2e+3]"]
NUMBERS: list[Any] = [0, 1, -7, 2**62, 0.5, 1.0, -0.0, 1e21, 1e20, 1e-7, 3.14159, 2.5e-5, 123456789.125]


def random_value(rnd: random.Random, depth: int = 0) -> Any:
    """A random JSON value with tricky strings, keys and numbers."""
    r = rnd.random()
    if depth > 3 or r < 0.4:
        pick = rnd.random()
        if pick < 0.45:
            return "".join(rnd.choice(STRING_PIECES) for _ in range(rnd.randint(0, 5)))
        if pick < 0.85:
            return rnd.choice(NUMBERS)
        return rnd.choice([True, False, None])
    if r < 0.7:
        return [random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    return {
        "".join(rnd.choice(STRING_PIECES) for _ in range(rnd.randint(0, 3))): random_value(rnd, depth + 1)
        for _ in range(rnd.randint(0, 5))
    }


def test_random_objects_match_go(tmp_path: Path) -> None:
    """500 random objects (escapes, unicode keys, floats) encode byte for byte as Go encodes them."""
    rnd = random.Random(3)
    values = [random_value(rnd) for _ in range(500)]
    expected = run_goref_json(values, tmp_path)
    mismatches = [(v, want) for v, want in zip(values, expected, strict=True) if go_json(v).decode() != want]
    assert mismatches[:3] == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"b": 1, "a": {"d": [], "c": {}}}, b'{"a":{"c":{},"d":[]},"b":1}', id="sorted-nested"),
        pytest.param("<a&b>", b'"\\u003ca\\u0026b\\u003e"', id="html"),
        pytest.param("\u2028\u2029", b'"\\u2028\\u2029"', id="line-separators"),
        pytest.param("é🎉", '"é🎉"'.encode(), id="utf8-raw"),
        pytest.param("\x00\x1f\x7f", b'"\\u0000\\u001f\x7f"', id="control"),
        pytest.param("nginx:1.25", b'"nginx:1.25"', id="float-lookalike-string"),
        pytest.param([1.0, 2, 2.5], b"[1,2,2.5]", id="whole-float"),
        pytest.param({"x": None, "y": True}, b'{"x":null,"y":true}', id="null-bool"),
    ],
)
def test_go_json_unit(value: Any, expected: bytes) -> None:
    """Sorting, escapes and number spelling on small values."""
    assert go_json(value) == expected


def test_kubectl_json_ends_with_one_newline() -> None:
    """The env value is the compact JSON followed by exactly one newline."""
    assert kubectl_json({"a": 1}) == b'{"a":1}\n'


def test_go_json_float_rejects_nan() -> None:
    """NaN has no JSON spelling; Go refuses it too."""
    with pytest.raises(ValueError):
        go_json_float(float("nan"))


def reference_go_json(obj: Any) -> bytes:
    """The encoder as it was before its escape pass took a one-byte shortcut: every escape is
    a plain search and replace. Kept as the reference the faster one must match byte for byte."""
    from fastobs.encoding import _FLOAT_DOT, _FLOAT_EXP, _go_floats, _has_float, _is_go_float

    opts = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
    if _is_go_float(obj):
        return go_json_float(float(obj)).encode()
    try:
        out = orjson.dumps(obj, option=opts)
    except orjson.JSONEncodeError:
        out = orjson.dumps(_go_floats(obj), option=opts)
    else:
        if (_FLOAT_DOT.search(out) or _FLOAT_EXP.search(out)) and _has_float(obj):
            out = orjson.dumps(_go_floats(obj), option=opts)
    for raw, escaped in ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"),
                         ("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029")):
        out = out.replace(raw, escaped)
    return out


# Characters whose UTF-8 starts with the byte 0xE2 as U+2028/U+2029 do (and share its second
# byte 0x80 for U+2000-U+203F), so a shortcut on that byte must still tell them apart.
E2_PIECES = ["€", "—", "\u2027", "\u202a", "\u2030", "\u2000", "\u2028\u2029", "x\u2028", "⌘", "✓",
             "\u2029<", "&\u2028>"]


def hostile_value(rnd: random.Random, depth: int = 0) -> Any:
    """Deeper and wider than :func:`random_value`, with big integers, -0.0 and 0xE2 characters."""
    pieces = STRING_PIECES + E2_PIECES
    numbers = [*NUMBERS, 0.1, -0.0, 1e21, 1e-7, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 10**30, 5e-324]
    r = rnd.random()
    if depth > 6 or r < 0.35:
        pick = rnd.random()
        if pick < 0.5:
            return "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 8)))
        if pick < 0.9:
            return rnd.choice(numbers)
        return rnd.choice([True, False, None, {}, []])
    if r < 0.6:
        return [hostile_value(rnd, depth + 1) for _ in range(rnd.randint(0, 5))]
    return {"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 4))): hostile_value(rnd, depth + 1)
            for _ in range(rnd.randint(0, 6))}


def test_encoder_matches_reference_on_hostile_objects() -> None:
    """3,000 random nested objects (``<>&``, U+2028/9 beside other 0xE2 characters, non-ASCII
    keys, 1e21, 0.1, -0.0, integers past int64, empty maps and lists) plus a nest 241 levels deep
    (orjson stops at 255) and a Pod: the encoder's bytes equal the reference's."""
    rnd = random.Random(14)
    values: list[Any] = [hostile_value(rnd) for _ in range(3000)]
    deep: Any = {"<leaf>": ["\u2028", 1e21, -0.0]}
    for i in range(120):
        deep = {f"k{i}\u2029": [deep, {"&": 0.1}]}
    values += [deep, orjson.loads(OBJECT.read_bytes())]
    mismatches = [v for v in values if go_json(v) != reference_go_json(v)]
    escaped = sum(b"\\u2028" in go_json(v) for v in values)
    print(f"{len(values)} objects compared, {escaped} with an escaped U+2028, {len(mismatches)} differ")
    assert escaped > 100
    assert mismatches[:3] == []


@pytest.mark.parametrize("value", [{"a": "\ud800"}, [1.5, "\udfff<"]], ids=["surrogate", "surrogate-float"])
def test_encoder_rejects_what_the_reference_rejects(value: Any) -> None:
    """A lone surrogate (no UTF-8 spelling) fails in both, with orjson's error (the runner
    turns it into a failed event for that key)."""
    with pytest.raises(orjson.JSONEncodeError):
        reference_go_json(value)
    with pytest.raises(orjson.JSONEncodeError):
        go_json(value)


def test_encoder_rejects_too_deep_as_the_reference_does() -> None:
    """Past orjson's depth limit both fail with the same error (a failed event, never a hang)."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    errors = []
    for encode in (reference_go_json, go_json):
        with pytest.raises(orjson.JSONEncodeError) as info:
            encode(deep)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def _server_bytes(value: Any) -> bytes:
    """``value`` as a server could send it (the standard library spells integers past 64 bits)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def test_encoding_from_bytes_matches_reference_on_hostile_objects() -> None:
    """kubectl_json_of (floats spelled while decoding) gives the reference's bytes for 3,000
    hostile objects sent as JSON text, for exponent and whole-number spellings of floats
    (``1E3``, ``2.50``, ``-0.0``, ``1e400`` refused), and for a Pod."""
    rnd = random.Random(15)
    texts = [_server_bytes(hostile_value(rnd)) for _ in range(3000)]
    texts += [OBJECT.read_bytes(), b'{"z":1E3,"y":[2.50,-0.0,0.1e1,1e-7,123456789.125e-3],"x":-0}',
              b"1e21", b"18446744073709551616", b"9223372036854775808", b'"<\\u2028>"', b"[]", b"{}"]
    # The reference with every Go float64 (integers past int64 included) spelled first: Go's
    # bytes exactly, without go_json's gap for [2**63, 2**64) in objects holding no float.
    from fastobs.encoding import _go_floats

    mismatches = [t for t in texts
                  if kubectl_json_of(t) != reference_go_json(_go_floats(orjson.loads(t))) + b"\n"]
    floats = sum(b"." in t or b"e" in t.lower() for t in texts)
    print(f"{len(texts)} texts compared ({floats} with a '.' or an exponent), {len(mismatches)} differ")
    assert mismatches[:3] == []


@pytest.mark.parametrize(
    "raw",
    [b'{"a":"\\ud800"}', b'{"a":"\xff"}', b"[" * 2000 + b"]" * 2000, b"[1e400]", b'{"a":1}x',
     b"\xef\xbb\xbf{}", b"{"],
    ids=["surrogate", "bad-utf8", "too-deep", "infinity", "trailing", "bom", "truncated"],
)
def test_encoding_from_bytes_fails_as_orjson_does(raw: bytes) -> None:
    """What the byte path refuses fails with orjson's own error, as the decoded path did."""
    with pytest.raises(orjson.JSONDecodeError) as expected:
        orjson.loads(raw)
    with pytest.raises(orjson.JSONDecodeError) as got:
        kubectl_json_of(raw)
    assert str(got.value) == str(expected.value)
