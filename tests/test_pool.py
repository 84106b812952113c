"""Real worker processes running real commands: per-key order, caps, crashes, timeouts.

These drive fastobs.pool.Pool directly (no API server): events go into the real queues,
real `python -m fastobs.worker` processes run real `/bin/sh` commands that log what they
do to a file, and the tests read that log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fastobs import protocol
from fastobs.events import Event, EventType, ObjectKey
from fastobs.pool import Pool
from fastobs.settings import RunSettings
from fastobs.sharder import Sharder

LOG_SCRIPT = r"""
echo "start $2 $3 $(date +%s%N)" >> "$LOG"
sleep "$SLEEP"
echo "end $2 $3 $(date +%s%N)" >> "$LOG"
exit "${CODE:-0}"
"""


class Recorder:
    """A PoolHandler that completes jobs the way the engine does, and records them."""

    def __init__(self, sharder: Sharder, expected: int) -> None:
        self.sharder = sharder
        self.expected = expected
        self.results: list[tuple[Event, dict[str, Any]]] = []
        self.outputs: dict[str, tuple[bytes, bytes]] = {}
        self.lines: list[tuple[str, int, bytes]] = []
        self.restarts: list[int] = []
        self.hung: list[int] = []
        self.fatal: list[BaseException] = []
        self.all_done = asyncio.Event()
        self.pool: Pool | None = None

    def on_dispatch(self, ev: Event) -> None:
        pass

    def on_begun(self, ev: Event, t: float, header: str | None) -> None:
        pass  # stream mode only

    def on_done(self, ev: Event, result: dict[str, Any], out: bytes, err: bytes) -> None:
        i = self.sharder.shard(ev.key)
        self.sharder.queues[i].done(ev.key)
        self.results.append((ev, result))
        self.outputs[ev.key] = (out, err)
        if len(self.results) >= self.expected:
            self.all_done.set()
        assert self.pool is not None
        self.pool.pump(i)

    def on_output(self, ev: Event, fd: int, data: bytes) -> None:
        self.lines.append((ev.key, fd, data))

    def on_fatal(self, exc: BaseException) -> None:
        self.fatal.append(exc)

    def on_restart(self, index: int) -> None:
        self.restarts.append(index)

    def on_hung(self, index: int) -> None:
        self.hung.append(index)


def event(key: str, seq: int, arg: str | None = None) -> Event:
    ns, _, name = key.rpartition("/")
    return Event(
        type=EventType.UPDATED, key=ObjectKey(key), namespace=ns, name=name, uid="u", rv=str(seq),
        obj=b'{"kind":"ConfigMap"}', received=time.monotonic(), cached_arg=str(seq) if arg is None else arg,
    )


async def run_pool(
    events: list[Event], *, workers: int, concurrency: int, coalesce: bool = False,
    timeout: float = 0.0,  # noqa: ASYNC109 - the command timeout, not this coroutine's
    command: tuple[str, ...] = ("sh", "-c", LOG_SCRIPT, "sh"), during: Any = None,
    setup: Any = None, deadline: float = 60.0, **settings: Any,
) -> Recorder:
    sharder = Sharder(shards=workers, coalesce=coalesce, max_pending=100000, clock=time.monotonic)
    run = RunSettings(command=command, concurrency=concurrency, timeout=timeout, kill_grace=1.0, **settings)
    rec = Recorder(sharder, len(events))
    pool = Pool(run=run, queues=sharder.queues, handler=rec)
    rec.pool = pool
    if setup is not None:
        setup(pool)
    await pool.start()
    try:
        for ev in events:
            pool.pump(sharder.add(ev))
        if during is not None:
            await during(pool, rec)
        await asyncio.wait_for(rec.all_done.wait(), deadline)
    finally:
        await pool.stop(5.0)
    assert not rec.fatal, rec.fatal
    return rec


def read_log(path: Path) -> list[tuple[str, str, str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        what, name, seq, ts = line.split()
        rows.append((what, name, seq, int(ts)))
    return rows


def started(log: Path) -> int:
    return log.read_text().count("start") if log.exists() else 0


@pytest.fixture
def log_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "log"
    monkeypatch.setenv("LOG", str(log))
    monkeypatch.setenv("SLEEP", "0.02")
    return log


def test_per_key_intervals_never_overlap_and_keep_event_order(log_env: Path) -> None:
    """4 workers x concurrency 8, 30 keys x 4 events each, every event kept (--no-coalesce)."""
    keys = [f"ns/k{i}" for i in range(30)]
    events = [event(k, seq * 100 + i) for seq in range(4) for i, k in enumerate(keys)]
    asyncio.run(run_pool(events, workers=4, concurrency=8))
    rows = read_log(log_env)
    assert len(rows) == 2 * len(events)
    open_: dict[str, str] = {}
    order: dict[str, list[int]] = {}
    max_parallel = 0
    for what, name, seq, _ in rows:
        if what == "start":
            assert name not in open_, f"{name} started while its previous command was running"
            open_[name] = seq
            order.setdefault(name, []).append(int(seq))
            max_parallel = max(max_parallel, len(open_))
        else:
            assert open_.pop(name) == seq
    for name, seqs in order.items():
        assert seqs == sorted(seqs), f"{name} ran out of order: {seqs}"
    assert max_parallel > 1, "different keys should have run in parallel"


def test_concurrency_cap_per_worker(log_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker with --concurrency 3 never runs more than 3 commands at once."""
    monkeypatch.setenv("SLEEP", "0.15")
    events = [event(f"ns/c{i}", i) for i in range(12)]
    asyncio.run(run_pool(events, workers=1, concurrency=3))
    running = peak = 0
    for what, *_ in read_log(log_env):
        running += 1 if what == "start" else -1
        peak = max(peak, running)
    assert peak == 3


def test_worker_killed_mid_run_loses_nothing(log_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL a worker while it runs commands: it is replaced and every key still runs."""
    monkeypatch.setenv("SLEEP", "0.3")
    keys = [f"ns/x{i}" for i in range(16)]
    events = [event(k, i) for i, k in enumerate(keys)]

    async def kill_worker(pool: Pool, rec: Recorder) -> None:
        while started(log_env) < 4:
            await asyncio.sleep(0.01)
        os.kill(pool.workers[0].pid, signal.SIGKILL)

    rec = asyncio.run(run_pool(events, workers=2, concurrency=4, during=kill_worker))
    assert rec.restarts == [0]
    done_keys = {ev.key for ev, result in rec.results if result["ok"]}
    assert done_keys == set(keys)
    ended = {name for what, name, *_ in read_log(log_env) if what == "end"}
    assert ended == {k.split("/")[1] for k in keys}


def test_timeout_kills_whole_process_group(tmp_path: Path) -> None:
    """A hung command and the grandchild it started are both killed at --timeout."""
    pidfile = tmp_path / "grandchild"
    script = f'sleep 300 & echo $! > {pidfile}; sleep 300'
    rec = asyncio.run(
        run_pool([event("ns/hung", 1)], workers=1, concurrency=1, timeout=0.5, command=("sh", "-c", script))
    )
    (_, result), = rec.results
    assert result["ok"] is False and result["reason"] == "timeout"
    assert "timed out" in result["error"]
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{grandchild}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stat = Path(f"/proc/{grandchild}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z", "grandchild survived the timeout"


def test_worker_side_never_imports_the_kubernetes_client() -> None:
    """Workers start fast and stay small: no kubernetes, aiohttp or prometheus_client."""
    import subprocess
    import sys

    code = (
        "import sys, fastobs.worker, fastobs.runner, fastobs.templates.jsonpath, fastobs.spawn; "
        "bad = [m for m in ('kubernetes', 'aiohttp', 'prometheus_client') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


# A worker from another fastobs release: the real worker, saying HELLO with the next version.
_OTHER_VERSION_WORKER = (
    "import sys, fastobs.protocol as p; p.VERSION += 1; from fastobs.worker import main; sys.exit(main())"
)


def test_a_worker_speaking_another_protocol_version_stops_the_start() -> None:
    """A real worker whose HELLO names another protocol version is refused at once, with one
    clear line, and not restarted (another start would say the same)."""
    from fastobs import protocol
    from fastobs.errors import WorkerBootError

    async def main() -> tuple[WorkerBootError, Pool, Recorder, float]:
        sharder = Sharder(shards=1, coalesce=True, max_pending=10, clock=time.monotonic)
        rec = Recorder(sharder, 0)
        pool = Pool(run=RunSettings(command=("true",)), queues=sharder.queues, handler=rec)
        pool.worker_command = (sys.executable, "-c", _OTHER_VERSION_WORKER)
        t0 = time.monotonic()
        with pytest.raises(WorkerBootError) as caught:
            await pool.start()
        return caught.value, pool, rec, time.monotonic() - t0

    error, pool, rec, seconds = asyncio.run(main())
    print(f"refused after {seconds:.2f} s: {error.message}")
    assert error.message.startswith(
        f"worker 0 speaks protocol version {protocol.VERSION + 1}, this fastobs speaks version "
        f"{protocol.VERSION}: the worker ({sys.executable} -c "
    )
    assert error.message.endswith("comes from another fastobs installation")
    assert "\n" not in error.message
    assert error.exit_code == 3
    assert rec.restarts == [] and pool.workers[0].boot_failures == 0
    popen = pool.workers[0].popen
    assert popen is not None and popen.returncode is not None, "the refused worker was not reaped"


# --- faults: hostile commands, dying and hanging workers, shutdown --------------------------


def test_a_nul_byte_in_an_argument_is_a_failed_command_not_a_lost_job() -> None:
    """A template output with a NUL byte cannot become an argument: the command fails as oc
    reports it (Go's exec gives EINVAL), and the key's job ends instead of staying in flight."""
    events = [event("ns/nul", 1, arg="a\x00b"), event("ns/fine", 2)]
    rec = asyncio.run(run_pool(events, workers=1, concurrency=2, command=("sh", "-c", "exit 0", "sh"),
                               deadline=20))
    results = {ev.key: result for ev, result in rec.results}
    print(results["ns/nul"])
    assert results["ns/fine"]["ok"] is True
    bad = results["ns/nul"]
    assert (bad["ok"], bad["reason"], bad["code"]) == (False, "spawn_error", "EINVAL")
    assert bad["error"] == f"fork/exec {shutil.which('sh')}: invalid argument"


def test_stream_mode_gives_commands_a_blocking_stdout() -> None:
    """Stream mode: the command's stdout and stderr are blocking, as any program expects.
    `seq 1 15000` writes ~80 KB, more than a pipe holds: on a non-blocking stdout it fails
    with EAGAIN ("Resource temporarily unavailable") whenever the worker reads too slowly."""
    check = f'{sys.executable} -c "import os; print(os.get_blocking(1), os.get_blocking(2))"'
    keys = [f"ns/seq{i}" for i in range(4)]
    rec = asyncio.run(run_pool([event(k, i) for i, k in enumerate(keys)], workers=1, concurrency=4,
                               output_mode="stream", command=("sh", "-c", f"{check}; seq 1 15000", "sh"),
                               deadline=60))
    err = b"".join(data for _, fd, data in rec.lines if fd == 2)
    for key in keys:
        out = [data for k, fd, data in rec.lines if fd == 1 and k == key]
        print(f"{key}: {out[0]!r}, then {len(out) - 1} lines; stderr: {err[:200]!r}")
        assert out == [b"True True\n", *(f"{i}\n".encode() for i in range(1, 15001))]
    assert err == b""
    assert all(result["ok"] for _, result in rec.results)


def test_timed_out_commands_leave_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """Each command killed by --timeout used to leave a pidfd waiter behind, which printed a
    ValueError traceback when the worker exited."""
    events = [event(f"ns/t{i}", i) for i in range(3)]
    rec = asyncio.run(run_pool(events, workers=1, concurrency=3, timeout=0.3,
                               command=("sh", "-c", "sleep 30", "sh"), deadline=20))
    err = capfd.readouterr().err
    print(f"worker stderr: {len(err)} bytes, {err.count('Traceback')} tracebacks")
    assert [r["reason"] for _, r in rec.results] == ["timeout"] * 3
    assert "Traceback" not in err and "Invalid file descriptor" not in err, err[-2000:]


def test_output_over_the_limit_is_cut_with_a_marker_and_bounded_memory() -> None:
    """64 MB of output from one command: the worker keeps the default 4 MiB, drops the rest,
    says so in a line, and reports how much it dropped (the fault suite measures the memory)."""
    total = 64_000_000
    cmd = ("sh", "-c", f"head -c {total} /dev/zero | tr '\\0' x; echo; echo oops >&2", "sh")
    rec = asyncio.run(run_pool([event("ns/flood", 1)], workers=1, concurrency=1, command=cmd, deadline=60))
    (_, result), = rec.results
    out, err = rec.outputs["ns/flood"]
    limit = 4 << 20
    print(f"kept {len(out)} bytes of stdout and {len(err)} of stderr, dropped {result.get('dropped')}")
    marker = f"[fastobs: {total + 1 - limit} more bytes of stdout dropped (--output-limit={limit})]\n"
    assert out == b"x" * limit + b"\n" + marker.encode()
    assert err == b"[fastobs: 5 more bytes of stderr dropped (--output-limit=4194304)]\n"
    assert result["ok"] is True and result["dropped"] == total + 1 - limit + 5


def test_stream_mode_cuts_an_over_long_line() -> None:
    """Stream mode passes lines on as they come: only a line longer than the limit is cut."""
    cmd = ("sh", "-c", "echo first; head -c 100000 /dev/zero | tr '\\0' y; echo; echo last", "sh")
    rec = asyncio.run(run_pool([event("ns/long", 1)], workers=1, concurrency=1, command=cmd,
                               output_mode="stream", output_limit=1024, deadline=30))
    lines = [data for _, fd, data in rec.lines if fd == 1]
    assert lines == [b"first\n", b"y" * 1024 + b"\n",
                     b"[fastobs: 98976 more bytes of this line dropped (--output-limit=1024)]\n", b"last\n"]
    (_, result), = rec.results
    assert result["dropped"] == 98976


# A worker that says HELLO, then closes its socket and lingers: the parent must not wait
# for it with its loop stopped.
_SOCKET_CLOSING_WORKER = """import os, socket, sys, time
from fastobs import protocol
s = socket.socket(fileno=int(sys.argv[-1]))
s.sendall(protocol.encode_hello(os.getpid()))
s.close()
time.sleep(8)
"""


def test_the_loop_never_waits_for_a_worker_whose_socket_closed() -> None:
    """A worker whose stream ended but which does not exit is killed and replaced, and the
    parent's loop keeps running meanwhile (it used to block in a synchronous wait())."""

    async def main() -> tuple[float, Recorder, list[int]]:
        sharder = Sharder(shards=1, coalesce=True, max_pending=10, clock=time.monotonic)
        rec = Recorder(sharder, 0)
        pool = Pool(run=RunSettings(command=("true",)), queues=sharder.queues, handler=rec)
        pool.worker_command = (sys.executable, "-c", _SOCKET_CLOSING_WORKER)
        await pool.start()
        first = pool.workers[0].pid
        worst = 0.0
        last = begin = time.monotonic()
        try:
            while last - begin < 4.0:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                worst, last = max(worst, now - last), now
        finally:
            pool.kill()
        return worst, rec, [first]

    worst, rec, (first,) = asyncio.run(main())
    print(f"longest pause of the parent's loop: {worst:.2f} s; restarts: {rec.restarts}")
    assert worst < 1.0, f"the loop stood still for {worst:.1f} s"
    assert rec.restarts, "the worker whose socket closed was not replaced"
    assert not Path(f"/proc/{first}").exists() or Path(f"/proc/{first}/stat").read_text().split()[2] == "Z"


def test_a_hung_worker_is_killed_and_its_keys_run_elsewhere_in_time(log_env: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP a worker while its commands run: once its heartbeat is stale it is killed and
    replaced through the crash path, and every key still runs; the hang is counted."""
    monkeypatch.setenv("SLEEP", "0.5")
    keys = [f"ns/h{i}" for i in range(8)]
    stopped: list[int] = []

    def stale_after_2s(pool: Pool) -> None:
        pool.heartbeat_stale = 2.0

    async def stop_worker(pool: Pool, rec: Recorder) -> None:
        while started(log_env) < 2:
            await asyncio.sleep(0.01)
        stopped.append(pool.workers[0].pid)
        os.kill(stopped[0], signal.SIGSTOP)

    t0 = time.monotonic()
    try:
        rec = asyncio.run(run_pool([event(k, i) for i, k in enumerate(keys)], workers=2, concurrency=4,
                                   during=stop_worker, setup=stale_after_2s, deadline=20))
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    print(f"all {len(keys)} keys done {time.monotonic() - t0:.1f} s after the start; hung: {rec.hung}, "
          f"restarts: {rec.restarts}")
    assert rec.hung == [0] and rec.restarts == [0]
    assert {ev.key for ev, r in rec.results if r["ok"]} == set(keys)


def test_object_files_go_with_their_worker(tmp_path: Path) -> None:
    """--object-channel=file: the files of a SIGKILLed worker's commands, and every worker's
    directory, are gone once the pool stopped (they may hold a Secret's data)."""
    paths = tmp_path / "paths"
    script = f'echo "$FASTOBS_OBJECT_FILE" >> {paths}; sleep 0.4'
    keys = [f"ns/f{i}" for i in range(8)]

    async def kill_worker(pool: Pool, rec: Recorder) -> None:
        while not paths.exists() or len(paths.read_text().split()) < 2:
            await asyncio.sleep(0.01)
        os.kill(pool.workers[0].pid, signal.SIGKILL)

    rec = asyncio.run(run_pool([event(k, i) for i, k in enumerate(keys)], workers=2, concurrency=4,
                               command=("sh", "-c", script, "sh"), object_channel="file",
                               during=kill_worker, deadline=30))
    time.sleep(0.5)  # the killed worker's orphaned commands end too (no subreaper in a test)
    files = paths.read_text().split()
    dirs = {os.path.dirname(f) for f in files}
    left = [p for p in [*files, *dirs] if os.path.exists(p)]
    print(f"{len(files)} object files in {len(dirs)} directories; left behind: {left}")
    assert rec.restarts == [0]
    assert left == []


# The real worker, except that its first start (no marker file yet) dies before its HELLO.
_DIES_ONCE_WORKER = """import os, sys
marker = os.environ["T_MARKER"]
if not os.path.exists(marker):
    open(marker, "w").close()
    os._exit(7)
from fastobs.worker import main
sys.exit(main())
"""


def test_a_worker_that_dies_before_hello_is_restarted_and_says_why(
    log_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that exits while booting is a restart, with its exit status in the message,
    and the keys queued for it run once its replacement is ready."""
    monkeypatch.setenv("T_MARKER", str(tmp_path / "died-once"))

    def dies_once(pool: Pool) -> None:
        pool.worker_command = (sys.executable, "-c", _DIES_ONCE_WORKER)

    keys = [f"ns/b{i}" for i in range(4)]
    with caplog.at_level("WARNING", logger="fastobs.pool"):
        rec = asyncio.run(run_pool([event(k, i) for i, k in enumerate(keys)], workers=1, concurrency=2,
                                   setup=dies_once, deadline=30))
    messages = [r.getMessage() for r in caplog.records]
    print(messages)
    assert rec.restarts == [0]
    assert {ev.key for ev, r in rec.results if r["ok"]} == set(keys)
    (message,) = messages
    assert re.fullmatch(r"worker 0 \(pid \d+\) exited with status 7 before it was ready; restarting it "
                        r"\(attempt 2 of 5\)", message), message


def test_commands_killed_at_shutdown_are_reported(tmp_path: Path) -> None:
    """Commands still running when the shutdown grace ends, or at a second signal, end as
    failed commands with a line saying so (and their output so far), not in silence."""
    cmd = ("sh", "-c", 'echo "started $2"; exec sleep 30', "sh")

    async def main(second_signal: bool, grace: float) -> tuple[Recorder, float]:
        sharder = Sharder(shards=2, coalesce=True, max_pending=10, clock=time.monotonic)
        rec = Recorder(sharder, 3)
        pool = Pool(run=RunSettings(command=cmd, concurrency=3, kill_grace=1.0), queues=sharder.queues,
                    handler=rec)
        rec.pool = pool
        await pool.start()
        for i in range(3):
            pool.pump(sharder.add(event(f"ns/s{i}", i)))
        deadline = time.monotonic() + 20
        while sum(w.running for w in pool.workers) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(pool.stop_now() if second_signal else pool.stop(grace), 30)
        finally:
            pool.kill()
        return rec, time.monotonic() - t0

    grace_ended = "was still running when the shutdown grace period ended and was killed"
    for second_signal, grace, why in (
        (False, 0.5, grace_ended),
        (False, 0.0, grace_ended),  # --shutdown-grace 0: no grace at all, not an endless one
        (True, 0.0, "was killed: fastobs received a second signal"),
    ):
        rec, seconds = asyncio.run(main(second_signal, grace))
        print(f"second signal={second_signal}, grace={grace}: stopped in {seconds:.1f} s, "
              f"{[(ev.key, r.get('error')) for ev, r in rec.results]}")
        assert seconds < 10, f"the stop took {seconds:.1f} s"
        assert sorted(ev.key for ev, _ in rec.results) == ["ns/s0", "ns/s1", "ns/s2"]
        for ev, result in rec.results:
            assert (result["ok"], result["reason"]) == (False, "shutdown")
            assert result["error"] == f'command "sh" {why}'
            assert rec.outputs[ev.key][0] == f"started {ev.name}\n".encode()


# The real worker, except that its first start says HELLO and dies at once: its connection
# is closed by the time the parent would send it work.
_DIES_AFTER_HELLO_ONCE = """import os, socket, sys
marker = os.environ["T_MARKER"]
if not os.path.exists(marker):
    open(marker, "w").close()
    from fastobs import protocol
    socket.socket(fileno=int(sys.argv[-1])).sendall(protocol.encode_hello(os.getpid()))
    os._exit(0)
from fastobs.worker import main
sys.exit(main())
"""


def test_a_worker_that_dies_right_after_hello_is_replaced(
    log_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that says HELLO and dies at once, seen by a parent whose loop is late (its
    connection is closed before the parent first writes to it): nothing is written to the
    closed connection (uvloop raises on that, which used to stop fastobs), the start counts
    as failed and is retried, and the work runs on the new worker."""
    monkeypatch.setenv("T_MARKER", str(tmp_path / "died-once"))
    connect = protocol.connect

    async def late_connect(*args: Any, **kwargs: Any) -> asyncio.Transport:
        transport = await connect(*args, **kwargs)
        await asyncio.sleep(0.5)  # a loaded machine: the worker's HELLO and end arrive meanwhile
        return transport

    monkeypatch.setattr(protocol, "connect", late_connect)

    def dies_after_hello(pool: Pool) -> None:
        pool.worker_command = (sys.executable, "-c", _DIES_AFTER_HELLO_ONCE)

    async def main() -> Recorder:
        sharder = Sharder(shards=1, coalesce=True, max_pending=100, clock=time.monotonic)
        keys = [f"ns/a{i}" for i in range(4)]
        rec = Recorder(sharder, len(keys))
        pool = Pool(run=RunSettings(command=("sh", "-c", LOG_SCRIPT, "sh"), concurrency=2),
                    queues=sharder.queues, handler=rec)
        rec.pool = pool
        dies_after_hello(pool)
        for i, key in enumerate(keys):  # queued before the worker is up: dispatched right after HELLO
            sharder.add(event(key, i))
        try:
            await pool.start()
            await asyncio.wait_for(rec.all_done.wait(), 30)
        finally:
            await pool.stop(5.0)
        return rec

    rec = asyncio.run(main())
    print(f"restarts: {rec.restarts}, fatal: {rec.fatal}, done: {sorted(ev.key for ev, _ in rec.results)}")
    assert rec.fatal == [] and rec.restarts == [0]
    assert sorted(ev.key for ev, r in rec.results if r["ok"]) == [f"ns/a{i}" for i in range(4)]
