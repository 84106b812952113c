"""Header lines: Go quoting checked against the Go toolchain, command lines and timestamps."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fastobs.gocompat import go_errno, go_process_state, go_quote
from fastobs.header import format_cmdline, header_line, rfc3339_local

GOREF = Path(__file__).parent / "data" / "template" / "goref.go"

TRICKY = [
    "",
    "plain",
    "a b",
    'say "hi"',
    "back\\slash",
    "tab\there",
    "new\nline",
    "\a\b\f\n\r\t\v",
    "\x00\x01\x1f\x7f",
    "héllo wörld",
    "日本語",
    "emoji 🎉",
    "\u00a0nbsp",
    "\u200bzero width",
    "\u2028\u2029",
    "\ufeffbom",
    "\U000e0001tag",
    "\ue000private",
    "\U0010ffff",
    "\ufffd",
    "\u0301combining",
    "bad\udcffbyte",
    "{.metadata.name}",
    "$HOME `x` 'y'",
]


def run_goref(request: dict[str, Any], tmp_path: Path, *, tz: str = "UTC") -> dict[str, Any]:
    """Run the Go reference program on ``request`` and return its decoded answer."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain is not installed")
    src = tmp_path / "goref.go"
    shutil.copy(GOREF, src)
    env = {**os.environ, "TZ": tz, "GO111MODULE": "off"}
    done = subprocess.run(
        ["go", "run", str(src)], input=json.dumps(request), capture_output=True, text=True,
        env=env, cwd=tmp_path, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


# Code point ranges whose Unicode properties did not change between the Unicode versions of
# Python 3.11 and recent Go releases (newly assigned characters would differ in printability).
STABLE_RANGES = [
    (0x00, 0x7F), (0x80, 0xFF), (0x370, 0x3FF), (0x400, 0x4FF), (0x300, 0x36F), (0x2000, 0x206F),
    (0x3040, 0x309F), (0x4E00, 0x9FFF), (0xE000, 0xE0FF), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFD),
    (0x1F600, 0x1F64F), (0xE0000, 0xE007F), (0xDC80, 0xDCFF),
]


def random_strings(seed: int, count: int) -> list[str]:
    """Strings mixing ASCII, controls, format characters, astral code points and invalid bytes."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rnd.randint(0, 8)):
            low, high = rnd.choice(STABLE_RANGES)
            chars.append(chr(rnd.randint(low, high)))
        out.append("".join(chars))
    return out


def test_go_quote_matches_strconv_quote(tmp_path: Path) -> None:
    """go_quote gives strconv.Quote's output, including invalid bytes from surrogate escapes."""
    strings = TRICKY + random_strings(7, 3000)
    raw = [base64.b64encode(os.fsencode(s)).decode() for s in strings]
    expected = run_goref({"quote": raw}, tmp_path)["quote"]
    mismatches = [(s, want) for s, want in zip(strings, expected, strict=True) if go_quote(s) != want]
    assert mismatches[:5] == []


def test_rfc3339_matches_go_in_other_zones(tmp_path: Path) -> None:
    """rfc3339_local prints Go's time.RFC3339 for the process's local zone."""
    seconds = [0, 1_700_000_000, 1_711_846_799, 1_711_846_800, 1_000_000_000]
    for tz in ("UTC", "Europe/Paris", "America/St_Johns", "Asia/Kolkata"):
        expected = run_goref({"tsv": seconds}, tmp_path, tz=tz)["tsv"]
        old = os.environ.get("TZ")
        os.environ["TZ"] = tz
        time.tzset()
        try:
            got = [rfc3339_local(s + 0.75) for s in seconds]
        finally:
            if old is None:
                del os.environ["TZ"]
            else:
                os.environ["TZ"] = old
            time.tzset()
        assert got == expected, tz


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["/bin/echo", "default", "n", ""], '/bin/echo default n ""', id="empty"),
        pytest.param(["", "default", "kubernetes", ""], '"" default kubernetes ""', id="no-command"),
        pytest.param(["./s.sh", "a b"], './s.sh "a b"', id="space"),
        pytest.param(["x", 'q"uote'], 'x "q\\"uote"', id="dquote"),
        pytest.param(["x", "back\\slash"], 'x "back\\\\slash"', id="backslash"),
        pytest.param(["x", "tab\tonly"], "x tab\tonly", id="tab-raw"),
        pytest.param(["x", "nl\nonly"], "x nl\nonly", id="newline-raw"),
        pytest.param(["x", "nl\nand space"], 'x "nl\\nand space"', id="newline-quoted"),
        pytest.param(["x", "it's"], "x it's", id="single-quote-raw"),
        pytest.param(["x", "ünï"], "x ünï", id="unicode-raw"),
        pytest.param(["x", "ünï cödé"], 'x "ünï cödé"', id="unicode-quoted"),
        pytest.param(["x", "\x01 y"], 'x "\\x01 y"', id="control"),
        pytest.param([], '""', id="nothing"),
        pytest.param([""], '""', id="only-empty-command"),
    ],
)
def test_format_cmdline(argv: list[str], expected: str) -> None:
    """Elements are Go-quoted only when empty or holding a quote, a backslash or a space."""
    assert format_cmdline(argv) == expected


def test_header_line() -> None:
    """The header is '# TS Type rv<TAB>command line'; an empty rv leaves a space before the TAB."""
    argv = ["/tmp/add_iptables.sh", "aro-xh9ml", "10.0.2.4"]
    assert header_line("2021-04-01T15:46:51Z", "Sync", "135850556", argv) == (
        "# 2021-04-01T15:46:51Z Sync 135850556\t/tmp/add_iptables.sh aro-xh9ml 10.0.2.4"
    )
    assert header_line("T", "Deleted", "", ["", "ns", "n"]) == '# T Deleted \t"" ns n'


def test_rfc3339_format_and_cache() -> None:
    """Timestamps look like Go's, and a cached second is not reused for the next one."""
    stamp = rfc3339_local(time.time())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", stamp)
    first = rfc3339_local(1_700_000_000.1)
    assert rfc3339_local(1_700_000_000.9) == first
    assert rfc3339_local(1_700_000_001.0) != first


def test_go_process_state_matches_go(tmp_path: Path) -> None:
    """go_process_state spells an exit status and every signal as Go's os.ProcessState does."""
    signals = [*range(1, 32), 34, 64]  # and real-time signals, which Go does not name
    names = run_goref({"signal": signals}, tmp_path)["signal"]
    ours = [go_process_state(-n) for n in signals]
    print(f"{len(signals)} signals compared with Go, e.g. {ours[8]!r}")
    assert ours == [f"signal: {name}" for name in names]
    assert go_process_state(0) == "exit status 0" and go_process_state(7) == "exit status 7"


def test_go_errno_matches_go(tmp_path: Path) -> None:
    """go_errno spells every errno as Go's syscall.Errno does (connection errors quote it)."""
    numbers = [*range(1, 133), 200]  # Go names errnos up to ERFKILL (132)
    texts = run_goref({"errno": numbers}, tmp_path)["errno"]
    ours = [go_errno(n) for n in numbers]
    wrong = [(n, mine, go) for n, mine, go in zip(numbers, ours, texts, strict=True) if mine != go]
    print(f"{len(numbers)} errnos compared with Go, {len(wrong)} differ: {wrong}")
    assert wrong == []
