"""A stdout that does not keep up: fastobs stays responsive, stops dispatching, loses nothing.

The real fastobs against the real API server, with its stdout a pipe the test does not read
at first: /livez and /metrics must keep answering while stdout is full, the parent must not
spin, dispatch must stop (back-pressure) rather than buffer without bound, and once the test
reads the pipe every command's header and output must arrive, in one piece each.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastobs_run import configmap, free_port, http_get

OBJECTS = 40
LINES = 1000  # each command prints about 60 KB: together far more than the output may buffer
FULL_PIPE = 56 * 1024  # a pipe holds 64 KiB; partial pages of non-blocking writes hold less


def _unread(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed_get(port: int, path: str) -> tuple[int, float]:
    t0 = time.monotonic()
    status, _ = http_get(port, path)
    return status, time.monotonic() - t0


def _commands_done(port: int) -> int:
    status, body = http_get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}"
    return sum(int(float(m)) for m in re.findall(r"^fastobs_commands_total\{.*\} (\S+)$", body, re.M))


def _wait_stalled(port: int, read_end: int, timeout: float = 60.0) -> int:
    """Wait until stdout is full and no command has ended for a second; the count then."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        done = _commands_done(port) if http_get(port, "/livez")[0] else -1
        if done != last:
            last, since = done, time.monotonic()
        elif done >= 0 and _unread(read_end) >= FULL_PIPE and time.monotonic() - since >= 1.0:
            return done
        time.sleep(0.1)
    raise AssertionError(f"fastobs never stalled (-1: /livez did not answer): {last} commands done, "
                         f"{_unread(read_end)} bytes in the pipe")


@pytest.mark.parametrize("nonblocking", [False, True], ids=["blocking-pipe", "nonblocking-pipe"])
def test_stuck_stdout_keeps_fastobs_responsive_and_loses_nothing(
    k8s: Any, ns: str, tmp_path: Path, nonblocking: bool
) -> None:
    k8s.apply({"apiVersion": "v1", "kind": "List",
               "items": [configmap(f"cm{i:02d}", ns) for i in range(OBJECTS)]})
    command = tmp_path / "print.sh"
    command.write_text(f'#!/bin/sh\nyes "$2 {"x" * 50}" | head -n {LINES}\n')
    command.chmod(0o755)
    port = free_port()
    read_end, write_end = os.pipe()
    # An inherited O_NONBLOCK stdout is where fastobs used to sleep-spin in the event loop.
    os.set_blocking(write_end, not nonblocking)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastobs", "cm", "-n", ns, "--once", "--workers=2", "--concurrency=2",
         f"--listen-addr=127.0.0.1:{port}", "--", str(command)],
        env=k8s.env, stdout=write_end, stderr=subprocess.PIPE, text=True,
    )
    os.close(write_end)
    try:
        # stdout fills up and stays full: the pipe holds its 64 KiB, fastobs the rest.
        done_then = _wait_stalled(port, read_end)
        cpu_then = _cpu_seconds(proc.pid)
        time.sleep(2.0)
        done_now = _commands_done(port)
        cpu = _cpu_seconds(proc.pid) - cpu_then
        livez, livez_s = _timed_get(port, "/livez")
        metrics, metrics_s = _timed_get(port, "/metrics")
        print(f"stdout blocked: {done_now}/{OBJECTS} commands done (then {done_then}), "
              f"/livez {livez} in {livez_s * 1000:.0f} ms, /metrics {metrics} in {metrics_s * 1000:.0f} ms, "
              f"parent CPU {cpu:.2f} s in 2 s")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert livez == 200
        assert metrics == 200
        # Back-pressure: dispatch stopped instead of buffering every command's output.
        assert done_now == done_then < OBJECTS
        assert cpu < 0.5, "the parent spins while stdout is full"
    finally:
        # Now read stdout to the end: everything must arrive.
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")))
        reader.start()
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
            reader.join(30)
            os.close(read_end)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0, err
    blocks = re.split(r"^# .*\n", out, flags=re.M)
    headers = re.findall(r"^# \S+ Sync \d+\t\S+ " + re.escape(ns) + r" (cm\d\d)$", out, flags=re.M)
    print(f"read {len(out)} bytes: {len(headers)} headers")
    assert sorted(headers) == [f"cm{i:02d}" for i in range(OBJECTS)]
    # Between "# Sync started" and "# Sync ended": one block per command, its own lines only.
    assert blocks[0] == "" and blocks[1] == "" and blocks[-1] == ""
    for name, block in zip(headers, blocks[2:-1], strict=True):
        assert block == f"{name} {'x' * 50}\n" * LINES, f"the output of {name} is not whole"


# ----------------------------------------------------------------------------- the writer alone


def _read_all(fd: int, into: list[bytes], delay: float = 0.0) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(fd, 4096):
            into.append(chunk)
            time.sleep(delay)

    reader = threading.Thread(target=run)
    reader.start()
    return reader


def test_slow_reader_gets_stdout_and_stderr_in_order() -> None:
    """Both streams into one slow pipe: every line arrives whole, each stream in order."""
    from fastobs.output import Output

    read_end, write_end = os.pipe()
    chunks: list[bytes] = []
    reader = _read_all(read_end, chunks, delay=0.0005)

    async def produce() -> None:
        out = Output(quiet=True, stream=False, out_fd=write_end, err_fd=write_end)
        for i in range(2000):
            out.stdout(f"out {i}\n".encode())
            out.stderr(f"err {i}\n" * (i % 3))
            if i % 7 == 0:
                await asyncio.sleep(0)
        await out.drain()

    asyncio.run(produce())
    os.close(write_end)
    reader.join(30)
    os.close(read_end)
    lines = b"".join(chunks).decode().splitlines()
    print(f"{len(lines)} lines in {len(chunks)} reads")
    # Each stream keeps its order and every line is whole (stdout goes before stderr within
    # one event-loop turn's batch, as before the writer had a thread).
    assert [x for x in lines if x.startswith("out ")] == [f"out {i}" for i in range(2000)]
    errs = [f"err {i}" for i in range(2000) for _ in range(i % 3)]
    assert [x for x in lines if not x.startswith("out ")] == errs


def test_back_pressure_turns_on_above_high_water_and_off_below_low_water() -> None:
    from fastobs.output import HIGH_WATER, Output

    read_end, write_end = os.pipe()

    async def scenario() -> tuple[bool, bool, int, bool]:
        rooms = 0

        def room() -> None:
            nonlocal rooms
            rooms += 1

        out = Output(quiet=True, stream=False, out_fd=write_end)
        out.on_room = room
        out.stdout(b"x" * (HIGH_WATER // 2))
        await asyncio.sleep(0.05)
        before = out.has_room()
        out.stdout(b"y" * HIGH_WATER)
        await asyncio.sleep(0.05)
        full = not out.has_room()
        chunks: list[bytes] = []
        reader = _read_all(read_end, chunks)
        await out.drain()
        await asyncio.sleep(0.05)
        os.close(write_end)
        await asyncio.to_thread(reader.join, 30)
        return before, full, rooms, out.has_room() and sum(map(len, chunks)) == HIGH_WATER * 3 // 2

    before, full, rooms, drained = asyncio.run(scenario())
    os.close(read_end)
    print(f"room before: {before}, full above high water: {full}, on_room calls: {rooms}, "
          f"all read: {drained}")
    assert before and full and rooms == 1 and drained


def test_a_closed_stdout_drops_its_output_and_keeps_stderr() -> None:
    """`fastobs ... | head -1`: stdout's reader is gone; fastobs neither hangs nor fails."""
    from fastobs.output import Output

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.close(out_r)

    async def scenario() -> None:
        out = Output(quiet=True, stream=False, out_fd=out_w, err_fd=err_w)
        out.stdout(b"lost\n" * 100_000)
        out.stderr("still printed\n")
        await out.drain()

    asyncio.run(scenario())
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(err_r, "rb") as err:
        assert err.read() == b"still printed\n"
