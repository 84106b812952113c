"""oc parity: behaviours where fastobs once differed from ``oc observe``, now as oc does them.

Each test runs the real ``fastobs`` against the real kube-apiserver and checks what the real
``oc observe`` was seen to do on the same server for the same input (the messages, their
order, the exit code); the expected lines here are oc's, not fastobs's own idea. Where
fastobs runs commands in parallel, the test says which part of oc's order it keeps.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
from fastobs_run import configmap, headers, run_fastobs

pytestmark = pytest.mark.cluster

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)"
NO_METRICS = "--listen-addr="


def make_cms(k8s, ns: str, names: list[str], **kw) -> None:  # type: ignore[no-untyped-def]
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": [configmap(n, ns, **kw) for n in names]})


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def kinds(stdout: str) -> list[str]:
    """The ``#`` lines without their time stamps: ``Sync started``, ``Sync <rv>\\t<cmd>``..."""
    return [re.sub(rf"^# {TS} ", "", line) for line in headers(stdout)]


def stamps(stdout: str) -> list[datetime]:
    return [datetime.fromisoformat(line.split()[1].replace("Z", "+00:00")) for line in headers(stdout)]


# --- 5. the # lines' time stamps never go backwards -----------------------------------------


def test_header_stamps_never_go_backwards(k8s, ns, tmp_path: Path) -> None:
    """oc stamps each ``#`` line as it prints it, one command at a time, so the stamps only go
    forward. Here a command that starts early ends late (its header is printed after a
    later command's), and the first command outlasts a second boundary before ``Sync
    started`` is printed."""
    make_cms(k8s, ns, ["a", "b", "c"])
    # One worker, two slots: a (2.5 s) and b (1.1 s) start together; c starts when b ends,
    # a second later, and ends long before a.
    act = script(tmp_path, "act.sh", 'date +%s >> "$0.$2"\ncase $2 in a) sleep 2.5;; b) sleep 1.1;; esac\n')
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--workers", "1", "--concurrency", "2",
                      "--", str(act))
    assert res.returncode == 0, res.stderr
    got = stamps(res.stdout)
    print("\n".join(headers(res.stdout)))
    assert kinds(res.stdout)[0] == "Sync started" and kinds(res.stdout)[-1] == "Sync ended"
    assert got == sorted(got), "a # line is stamped earlier than the line before it"
    started = {n: int((tmp_path / f"act.sh.{n}").read_text()) for n in "abc"}
    rows = {row.split()[-1]: stamp for row, stamp in zip(kinds(res.stdout), got, strict=True)
            if row.startswith("Sync ") and "\t" in row}
    # A header carries its command's start (the command's own clock may be a hair later),
    # or the stamp of the line before it when that is later: never the time it was printed.
    for name in "abc":
        assert started[name] - 1 <= rows[name].timestamp() <= started[name] + 1, name
    assert rows["a"].timestamp() < started["a"] + 2, "a (2.5 s) was stamped when it ended"
