"""Go duration parsing and formatting: unit cases, then a comparison with the real Go toolchain."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from fastobs.gocompat import (
    DurationError,
    format_go_duration,
    format_go_duration_ns,
    go_quote,
    parse_go_duration,
    parse_go_duration_ns,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("0", 0.0, id="bare-zero"),
        pytest.param("-0", 0.0, id="negative-zero"),
        pytest.param("1s", 1.0, id="seconds"),
        pytest.param("300ms", 0.3, id="millis"),
        pytest.param("1.5s", 1.5, id="fraction"),
        pytest.param(".5s", 0.5, id="leading-dot"),
        pytest.param("1.s", 1.0, id="trailing-dot"),
        pytest.param("2m", 120.0, id="minutes"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("-1m30s", -90.0, id="negative"),
        pytest.param("+5s", 5.0, id="plus-sign"),
        pytest.param("1\u00b5s", 1e-6, id="micro-sign"),
        pytest.param("1\u03bcs", 1e-6, id="greek-mu"),
        pytest.param("10us", 1e-5, id="us"),
        pytest.param("7ns", 7e-9, id="nanos"),
    ],
)
def test_parse_accepts(text: str, seconds: float) -> None:
    """Valid Go durations parse to the expected number of seconds."""
    assert parse_go_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("5", 'time: missing unit in duration "5"', id="unitless"),
        pytest.param("x", 'time: invalid duration "x"', id="word"),
        pytest.param("", 'time: invalid duration ""', id="empty"),
        pytest.param("-", 'time: invalid duration "-"', id="sign-only"),
        pytest.param(".s", 'time: invalid duration ".s"', id="dot-only"),
        pytest.param("3d", 'time: unknown unit "d" in duration "3d"', id="days"),
        pytest.param("1s ", 'time: unknown unit "s " in duration "1s "', id="trailing-space"),
        pytest.param("9999999999h", 'time: invalid duration "9999999999h"', id="overflow"),
        pytest.param("1\u00e9", 'time: unknown unit "\\xc3\\xa9" in duration "1\\xc3\\xa9"', id="non-ascii"),
    ],
)
def test_parse_rejects_with_go_message(text: str, message: str) -> None:
    """Invalid durations raise DurationError carrying Go's exact message."""
    with pytest.raises(DurationError) as caught:
        parse_go_duration(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(0, "0s", id="zero"),
        pytest.param(1, "1s", id="one-second"),
        pytest.param(90, "1m30s", id="minute-and-half"),
        pytest.param(3600, "1h0m0s", id="hour"),
        pytest.param(0.1, "100ms", id="millis"),
        pytest.param(1.5, "1.5s", id="fraction"),
        pytest.param(1.5e-6, "1.5\u00b5s", id="micros"),
        pytest.param(-61, "-1m1s", id="negative"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    """Seconds format like Go's Duration.String()."""
    assert format_go_duration(seconds) == text


def test_format_parse_round_trip() -> None:
    """Formatting then parsing gives back the same nanoseconds."""
    rng = random.Random(7)
    for _ in range(2000):
        ns = rng.randrange(-(1 << 62), 1 << 62) >> rng.randrange(0, 62)
        assert parse_go_duration_ns(format_go_duration_ns(ns)) == ns


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        pytest.param("abc", '"abc"', id="plain"),
        pytest.param('a"b\\c', '"a\\"b\\\\c"', id="escapes"),
        pytest.param("tab\there\n", '"tab\\there\\n"', id="controls"),
        pytest.param("caf\u00e9", '"caf\u00e9"', id="printable-unicode"),
        pytest.param("\x7f", '"\\x7f"', id="delete"),
        pytest.param("\u200b", '"\\u200b"', id="zero-width"),
        # argv bytes c3 a9 decoded apart (surrogate escapes): Go sees one character, é.
        pytest.param("\udcc3\udca9", '"\u00e9"', id="escaped-bytes-that-are-utf8"),
        pytest.param("a\udcffb", '"a\\xffb"', id="a-byte-that-is-not-utf8"),
    ],
)
def test_go_quote(text: str, quoted: str) -> None:
    """go_quote matches Go's %q for the kinds of text seen in flag values."""
    assert go_quote(text) == quoted


# --- against the real Go toolchain -------------------------------------------------

_GO_PROGRAM = """
package main

import (
	"encoding/json"
	"os"
	"strconv"
	"time"
)

type request struct {
	Parse  []string `json:"parse"`
	Format []int64  `json:"format"`
	Quote  []string `json:"quote"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	parsed := make([][]string, 0, len(req.Parse))
	for _, s := range req.Parse {
		d, err := time.ParseDuration(s)
		if err != nil {
			parsed = append(parsed, []string{"ERR", err.Error()})
		} else {
			parsed = append(parsed, []string{"OK", strconv.FormatInt(int64(d), 10)})
		}
	}
	formatted := make([]string, 0, len(req.Format))
	for _, ns := range req.Format {
		formatted = append(formatted, time.Duration(ns).String())
	}
	quoted := make([]string, 0, len(req.Quote))
	for _, s := range req.Quote {
		quoted = append(quoted, strconv.Quote(s))
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{"parse": parsed, "format": formatted, "quote": quoted})
}
"""

_ALPHABET = ["0", "1", "5", "9", ".", "-", "+", "s", "m", "h", "ms", "us", "ns", "\u00b5s", "x", " ", "d"]


def _parse_inputs() -> list[str]:
    fixed = ["0", "-0", "+0", "00", "0s", "5", "1.5", "1s", "1m30s", "1h0m0s", "300ms", ".5s", "1.s", ".s",
             "-.s", "1..5s", "1e3s", "9223372036s", "9223372037s", "2562047h47m16.854775807s",
             "2562047h47m16.854775808s", "-2562047h47m16.854775808s", "0.0000000001s",
             "1.00000000000000000000001h", "18446744073709551616ns", "1h1h", "\u03bcs", "1\u03bcs"]
    rng = random.Random(20240501)
    generated = ["".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 7))) for _ in range(3000)]
    return fixed + generated


def _format_inputs() -> list[int]:
    rng = random.Random(99)
    fixed = [0, 1, 999, 1000, 1001, 999_999, 1_000_000, 1_500_000_000, 3_600_000_000_000, -1,
             (1 << 63) - 1, -(1 << 63)]
    return fixed + [rng.randrange(-(1 << 63), 1 << 63) >> rng.randrange(0, 63) for _ in range(3000)]


@pytest.fixture(scope="module")
def go_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[object]]:
    """Run the Go program once on every input and return its answers."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.skip("the Go toolchain is not installed")
    workdir = tmp_path_factory.mktemp("godur")
    (workdir / "go.mod").write_text("module godur\n\ngo 1.21\n")
    (workdir / "main.go").write_text(_GO_PROGRAM)
    request = {"parse": _parse_inputs(), "format": _format_inputs(), "quote": _quote_inputs()}
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOTOOLCHAIN="local")
    done = subprocess.run([go, "run", "."], cwd=workdir, input=json.dumps(request).encode(),
                          capture_output=True, env=env, timeout=240, check=False)
    assert done.returncode == 0, done.stderr.decode()
    answers: dict[str, list[object]] = json.loads(done.stdout)
    return answers


def _quote_inputs() -> list[str]:
    return ["abc", 'a"b', "back\\slash", "\t\n\r\a\b\f\v", "\x00\x1f\x7f", "caf\u00e9", "\u200b",
            "\U0001f600", "\u00a0", "\ufeff", "x y"]


def test_parse_matches_go(go_answers: dict[str, list[object]]) -> None:
    """parse_go_duration_ns accepts, rejects and words errors exactly like time.ParseDuration."""
    mismatches = []
    for text, answer in zip(_parse_inputs(), go_answers["parse"], strict=True):
        assert isinstance(answer, list)
        try:
            ours = ["OK", str(parse_go_duration_ns(text))]
        except DurationError as error:
            ours = ["ERR", str(error)]
        if ours != answer:
            mismatches.append((text, ours, answer))
    assert mismatches == []


def test_format_matches_go(go_answers: dict[str, list[object]]) -> None:
    """format_go_duration_ns matches Duration.String() on thousands of values."""
    ours = [format_go_duration_ns(ns) for ns in _format_inputs()]
    assert ours == go_answers["format"]


def test_quote_matches_go(go_answers: dict[str, list[object]]) -> None:
    """go_quote matches strconv.Quote."""
    assert [go_quote(text) for text in _quote_inputs()] == go_answers["quote"]
