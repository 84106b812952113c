"""fastobs's own log lines: a logged exception carries its traceback, in both formats."""

from __future__ import annotations

import json
import subprocess
import sys

from fastobs_run import configmap

# The real fastobs, with one fault injected: the tracker raises at the end of the first list,
# as a bug would. fastobs must print one error line, and its traceback in the debug log.
FAULTY_FASTOBS = """
import sys
import fastobs.tracker

def list_end(self, known=None):
    raise RuntimeError("injected fault at the end of the list")

fastobs.tracker.Tracker.list_end = list_end
from fastobs.cli import main
sys.exit(main(sys.argv[1:]))
"""


ERROR_LINE = "error: unexpected RuntimeError: injected fault at the end of the list"


def _faulty_run(env: dict[str, str], ns: str, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", FAULTY_FASTOBS, "cm", "-n", ns, "--once", "--listen-addr=", *flags,
            "--", "true"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_text_debug_log_shows_the_traceback(k8s, ns) -> None:
    """oc's --loglevel 4 and up is fastobs's debug level."""
    k8s.apply(configmap("a", ns))
    res = _faulty_run(k8s.env, ns, "--loglevel=4")
    print(res.stderr)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == ERROR_LINE
    lines = res.stderr.splitlines()
    at = lines.index("D fastobs: unexpected error")
    assert lines[at + 1] == "Traceback (most recent call last):"
    assert "in list_end" in res.stderr
    assert lines[-2] == ERROR_LINE.removeprefix("error: unexpected ")


def test_json_debug_log_shows_the_traceback(k8s, ns) -> None:
    k8s.apply(configmap("a", ns))
    res = _faulty_run(k8s.env, ns, "--log-level=debug", "--log-format=json")
    print(res.stderr)
    assert res.returncode == 1
    records = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    [record] = [r for r in records if r["msg"] == "unexpected error"]
    assert record["level"] == "debug"
    assert record["exc"].startswith("Traceback (most recent call last):\n")
    assert record["exc"].endswith("RuntimeError: injected fault at the end of the list")
    assert res.stderr.splitlines()[-1] == ERROR_LINE


def test_default_verbosity_prints_one_line_and_no_traceback(k8s, ns) -> None:
    k8s.apply(configmap("a", ns))
    res = _faulty_run(k8s.env, ns)
    print(res.stderr)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [ERROR_LINE]
