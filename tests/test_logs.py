"""fastobs's own log lines: a logged exception carries its traceback, in both formats; under
--log-format json every stderr line fastobs writes is a JSON record, oc's ``error:`` and
``warning:`` lines included, and in text they are oc's lines."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from fastobs_run import configmap, run_fastobs

from fastobs import logs

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
    last = json.loads(res.stderr.splitlines()[-1])  # the final error is a record too
    assert (last["level"], last["msg"]) == ("error", ERROR_LINE.removeprefix("error: "))


def test_default_verbosity_prints_one_line_and_no_traceback(k8s, ns) -> None:
    k8s.apply(configmap("a", ns))
    res = _faulty_run(k8s.env, ns)
    print(res.stderr)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [ERROR_LINE]


def failing_run(k8s: Any, ns: str, *extra: str) -> Any:
    """One object, a command that fails, --maximum-errors 1 (fastobs stops with an error),
    and --delete without --names (oc's warning)."""
    k8s.apply(configmap("j", ns))
    return run_fastobs(k8s.env, "cm", "-n", ns, "--listen-addr=", "--maximum-errors", "1", "--delete", "true",
                       *extra, "--", "sh", "-c", "exit 4")


def test_every_stderr_line_is_a_json_record_under_log_format_json(k8s: Any, ns: str) -> None:
    res = failing_run(k8s, ns, "--log-format", "json")
    assert res.returncode == 1, res.stderr
    lines = res.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    by_msg = {r["msg"]: r for r in records}
    warning = by_msg['If you are modifying resources outside of "/v1, Resource=configmaps", you should use '
                     "the --names command to ensure you don't miss deletions that occur while the command is "
                     "not running."]
    failed = by_msg['command "sh" exited with status code 4']
    final = records[-1]
    assert warning["level"] == "warning"
    assert failed["level"] == "error" and failed["key"] == f"{ns}/j" and failed["type"] == "Sync"
    assert final == {**final, "level": "error", "msg": "reached maximum error limit of 1, exiting"}


def test_the_same_lines_are_ocs_text_by_default(k8s: Any, ns: str) -> None:
    res = failing_run(k8s, ns)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.splitlines()
    assert lines[0].startswith('warning: If you are modifying resources outside of "/v1, Resource=')
    assert 'error: command "sh" exited with status code 4' in lines
    assert lines[-1] == "error: reached maximum error limit of 1, exiting"


def test_oc_line_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_json", False)
    assert logs.oc_line("boom") == "error: boom\n"
    assert logs.oc_line("careful", "warning") == "warning: careful\n"
    assert logs.oc_line("Nothing to sync", "info") == "Nothing to sync\n"
    monkeypatch.setattr(logs, "_json", True)
    record = json.loads(logs.oc_line("boom", "error", {"key": "ns/a", "rv": "5", "other": "dropped"}))
    assert {k: record[k] for k in ("level", "logger", "msg", "key", "rv")} == {
        "level": "error", "logger": "fastobs", "msg": "boom", "key": "ns/a", "rv": "5"}
    assert "other" not in record and record["ts"].endswith("Z")
