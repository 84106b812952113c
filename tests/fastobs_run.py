"""Helpers to run the real ``fastobs`` command and record what its commands see.

``recorder(tmp_path)`` writes an executable that appends one JSON line per invocation
(argv, selected environment, stdin) to a file, so tests can assert on exactly what a
command received. ``run_fastobs`` runs ``python -m fastobs`` as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORDER = """#!{python}
import json, os, sys
data = sys.stdin.buffer.read()
rec = {{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items() if k.startswith("T_")}},
       "stdin": data.decode("utf-8", "replace"), "pid": os.getpid()}}
path = os.environ.get("FASTOBS_OBJECT_FILE")
if path:
    rec["file"] = open(path).read()
with open({log!r}, "a") as f:
    f.write(json.dumps(rec) + "\\n")
code = os.environ.get("T_EXIT")
sys.exit(int(code) if code else 0)
"""


@dataclass
class Recorder:
    path: Path
    log: Path

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls()]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self.calls()
            if predicate(calls):
                return calls
            time.sleep(0.05)
        raise AssertionError(f"condition not met in {timeout}s; calls: {self.calls()}")


def recorder(tmp_path: Path, name: str = "record") -> Recorder:
    log = tmp_path / f"{name}.jsonl"
    path = tmp_path / name
    path.write_text(RECORDER.format(python=sys.executable, log=str(log)))
    path.chmod(0o755)
    return Recorder(path=path, log=log)


def worker_sitecustomize(body: str) -> str:
    """A ``sitecustomize.py`` (put on PYTHONPATH) that runs ``body`` in fastobs's worker
    processes only, before the worker itself starts: to fail or stall their boot."""
    return ('import os, sys, time\n'
            'try:\n    _cmd = open("/proc/self/cmdline", "rb").read()\nexcept OSError:\n    _cmd = b""\n'
            'if b"fastobs.worker" in _cmd:\n' + textwrap.indent(textwrap.dedent(body), "    "))


def fastobs_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastobs", *args]


def run_fastobs(
    env: dict[str, str], *args: str, timeout: float = 90, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = dict(env)
    full_env.update(extra_env or {})
    return subprocess.run(
        fastobs_argv(*args), env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def start_fastobs(
    env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    full_env = dict(env)
    full_env.update(extra_env or {})
    return subprocess.Popen(
        fastobs_argv(*args), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def headers(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("# ")]


def configmap(name: str, namespace: str, data: dict[str, str] | None = None,
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "data": data or {},
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def hanging_command(tmp_path: Path) -> tuple[Path, Path]:
    """A command that starts a grandchild (``sleep 300``) and waits for it forever.

    Returns (script, pidfile): the grandchild's pid appears in pidfile once it runs, so a
    test can check that stopping the command stopped its whole process group.
    """
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    return script, pidfile


def pids_alive(pids: list[int]) -> list[int]:
    """The pids in ``pids`` that still run."""
    return [pid for pid in pids if alive(pid)]


def wait_until(what: str, check: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of ``GET http://127.0.0.1:port/path``; (0, "") while nothing listens."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def children(pid: int) -> list[int]:
    """Pids of the child processes of ``pid``, whichever of its threads started them."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def worker_pids(parent: int) -> list[int]:
    """Pids of the fastobs worker processes whose parent is ``parent``."""
    pids = []
    for pid in children(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"fastobs.worker" in cmdline:
            pids.append(pid)
    return pids
