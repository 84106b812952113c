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
from fastobs_run import configmap, headers, recorder, run_fastobs

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


# --- 1. an error at the first object comes after the lines oc had printed ------------------


def test_strict_template_error_after_sync_started(k8s, ns, tmp_path: Path) -> None:
    """oc prints ``Sync started`` for the event, then fails to render its argument: no
    header for it, no ``Sync ended``, the error, exit 1."""
    make_cms(k8s, ns, ["a"], data={"x": "1"})
    rec = recorder(tmp_path)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--template", "{.data.missing}",
                      "--allow-missing-template-keys=false", "--", str(rec.path))
    print(res.stdout, res.stderr[:200])
    assert res.returncode == 1
    assert kinds(res.stdout) == ["Sync started"]
    assert res.stderr.startswith("error: unable to write arguments: error executing jsonpath "
                                 '"{.data.missing}"')
    assert rec.calls() == []


def test_malformed_names_key_after_the_deletes_before_it(k8s, ns, tmp_path: Path) -> None:
    """oc: ``Sync started``, the Sync rows, ``Sync ended``, the deletes of the keys sorted
    before the malformed one, then ``error: unexpected key format``; nothing after it runs."""
    make_cms(k8s, ns, ["a", "b"])
    names = script(tmp_path, "names.sh", f"printf '{ns}/zz\\n{ns}/gone-b\\n{ns}/x/y\\n{ns}/gone-a\\n'\n")
    dele = recorder(tmp_path, "delete")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--workers", "1", "--concurrency", "1",
                      "--names", str(names), "--delete", str(dele.path), "--", "true")
    print(res.stdout, res.stderr)
    assert res.returncode == 1
    rows = kinds(res.stdout)
    assert rows[0] == "Sync started" and rows[3] == "Sync ended", rows
    assert sorted(rows[1:3]) == [f"Sync {rv}\ttrue {ns} {n}" for rv, n in zip(_rvs(k8s, ns, "a", "b"), "ab",
                                                                                 strict=True)]
    assert rows[4:] == [f"Deleted \t{dele.path} {ns} gone-a", f"Deleted \t{dele.path} {ns} gone-b"]
    assert dele.argvs() == [[ns, "gone-a"], [ns, "gone-b"]]
    assert res.stderr == f'error: unexpected key format: "{ns}/x/y"\n'


def _rvs(k8s, ns: str, *names: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [k8s.kubectl("get", "cm", n, "-n", ns, "-o", "jsonpath={.metadata.resourceVersion}").stdout
            for n in names]


# --- 2. --maximum-errors never lets parallel commands fail more often than allowed ---------


@pytest.mark.parametrize(("limit", "runs"), [("1", 1), ("3", 3), ("0", 1)])
def test_maximum_errors_with_parallel_commands(k8s, ns, tmp_path: Path, limit: str, runs: int) -> None:
    """oc runs one failing command after another and stops at the failure that reaches the
    limit (a limit of 0 stops at the first): N commands run, N error lines, then oc's line.
    fastobs runs commands in parallel, yet starts no command that could exceed the limit."""
    make_cms(k8s, ns, [f"cm{i}" for i in range(8)])
    rec = recorder(tmp_path)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--maximum-errors", limit,
                      "--workers", "2", "--concurrency", "8", "--", str(rec.path), extra_env={"T_EXIT": "3"})
    lines = res.stderr.strip().splitlines()
    failure = f'error: command "{rec.path}" exited with status code 3'
    failures = [line for line in lines if line == failure]
    print(f"--maximum-errors={limit}: {len(rec.calls())} commands ran, {len(failures)} error lines")
    assert res.returncode == 1
    assert lines[-1] == f"error: reached maximum error limit of {limit}, exiting"
    assert len(failures) == runs and len(lines) == runs + 1, lines
    assert len(rec.calls()) == runs


def test_maximum_errors_keeps_commands_parallel(k8s, ns, tmp_path: Path) -> None:
    """While the failures still allowed outnumber the running commands, commands overlap."""
    make_cms(k8s, ns, [f"cm{i}" for i in range(6)])
    act = script(tmp_path, "act.sh", f"touch {tmp_path}/run.$2\nsleep 0.5\nls {tmp_path} | grep -c '^run' "
                 f">> {tmp_path}/seen\nrm {tmp_path}/run.$2\nexit 3\n")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--maximum-errors", "20",
                      "--workers", "2", "--concurrency", "8", "--", str(act))
    seen = [int(n) for n in (tmp_path / "seen").read_text().split()]
    print(f"commands running at once, as each saw it: {seen}")
    assert res.returncode == 0, res.stderr
    assert len(seen) == 6 and max(seen) > 1


# --- 3. --loglevel 4 logs every retry --------------------------------------------------------


def test_loglevel_4_logs_each_retry(k8s, ns, tmp_path: Path) -> None:
    """oc at --loglevel 4 logs ``retrying command: exit status N`` on stderr before each retry
    (of the command, and of the --names command); below 4 it logs nothing of the kind."""
    make_cms(k8s, ns, ["a"])
    always7 = script(tmp_path, "seven.sh", "exit 7\n")
    for level, expected in (("4", 2), ("3", 0)):
        res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--loglevel", level,
                          "--retry-on-exit-code", "7", "--", str(always7))
        retries = retry_lines(res.stderr)
        print(f"--loglevel {level}: {retries}")
        assert res.returncode == 0, res.stderr
        assert len(retries) == expected
        assert res.stderr.splitlines()[-1] == f'error: command "{always7}" exited with status code 7'
    killed = script(tmp_path, "killed.sh", "kill -9 $$\n")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "-v", "4", "--retry-on-exit-code=-1",
                      "--retry-count", "1", "--", str(killed))
    assert retry_lines(res.stderr, "signal: killed") != []
    counter = tmp_path / "names-runs"
    names = script(tmp_path, "names.sh", f"echo x >> {counter}\n[ $(wc -l < {counter}) -ge 2 ] || exit 7\n")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--loglevel", "4",
                      "--retry-on-exit-code", "7", "--names", str(names), "--delete", "true", "--", "true")
    assert res.returncode == 0, res.stderr
    assert len(retry_lines(res.stderr)) == 1


def retry_lines(stderr: str, how: str = "exit status 7") -> list[str]:
    """fastobs's log lines carrying oc's retry message (the log format adds a level and a key)."""
    return [line for line in stderr.splitlines() if re.search(f"retrying command: {how}( \\[|$)", line)]


# --- 4. --names deletes come after Sync ended, in key order ---------------------------------


def test_names_deletes_after_sync_ended_in_key_order(k8s, ns, tmp_path: Path) -> None:
    """oc queues the deletes of --names keys that are not on the server behind the listed
    objects, in the sorted order of the names output: they run after ``Sync ended``. Here the
    Sync commands are slow and there are workers to spare, so a delete that did not wait
    would run (and print) first."""
    make_cms(k8s, ns, ["a", "b", "c"])
    names = script(tmp_path, "names.sh", f"printf '{ns}/zz\\n{ns}/b\\n{ns}/gone\\n{ns}/also-gone\\n'\n")
    dele = recorder(tmp_path, "delete")
    slow = script(tmp_path, "slow.sh", "sleep 0.5\n")
    for parallel in (("--workers", "4", "--concurrency", "4"), ("--workers", "1", "--concurrency", "1")):
        res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, *parallel, "--names", str(names),
                          "--delete", str(dele.path), "--", str(slow))
        rows = kinds(res.stdout)
        print(parallel, rows)
        assert res.returncode == 0, res.stderr
        assert rows[0] == "Sync started" and rows[4] == "Sync ended", rows
        assert all(row.startswith("Sync ") for row in rows[1:4])
        deletes = [f"Deleted \t{dele.path} {ns} {n}" for n in ("also-gone", "gone", "zz")]
        if parallel[1] == "1":
            assert rows[5:] == deletes  # one command at a time: oc's order exactly
        else:
            assert sorted(rows[5:]) == deletes
    assert dele.argvs()[-3:] == [[ns, "also-gone"], [ns, "gone"], [ns, "zz"]]


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
