"""Minimal Python spawner: the exec ceiling a Python process can reach on this machine.

Where it sits: ``run``'s ``spawn`` scenario compares fastobs against it (and against
``xargs -P``). It runs ``COMMAND ns-i pod-i`` for i in 0..N-1 with at most
``--concurrency`` children in flight, spawning through ``subprocess.Popen`` (CPython's
vfork path) and awaiting each child through a pidfd registered on a uvloop loop,
which is the fastest pattern measured for Python (no Kubernetes, no IPC, no parsing).

Out: one JSON line ``{"events": N, "seconds": S}``; with ``--procs P`` the N runs are
split over P processes started together, and S spans the first start to the last end.

Invariant: nothing but spawning and reaping happens per event, so the rate is an upper
bound for any Python event runner using the same spawn pattern.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time


async def _run_one(loop: asyncio.AbstractEventLoop, argv: list[str]) -> int:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,
    )
    fd = os.pidfd_open(proc.pid)
    done = loop.create_future()
    loop.add_reader(fd, done.set_result, None)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()


async def spawn_range(command: list[str], start: int, stop: int, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    it = iter(range(start, stop))

    async def lane() -> None:
        for i in it:
            await _run_one(loop, [*command, f"ns-{i}", f"pod-{i}"])

    await asyncio.gather(*(lane() for _ in range(concurrency)))


def main() -> None:
    p = argparse.ArgumentParser(description="minimal Popen+pidfd spawner on uvloop")
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=16, help="children in flight per process")
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--part", type=str, default="", help=argparse.SUPPRESS)
    p.add_argument("command", nargs="+")
    args = p.parse_args()
    import uvloop

    if args.part:
        start, stop = (int(x) for x in args.part.split(":"))
        uvloop.run(spawn_range(args.command, start, stop, args.concurrency))
        return
    t0 = time.perf_counter()
    if args.procs == 1:
        uvloop.run(spawn_range(args.command, 0, args.events, args.concurrency))
    else:
        bounds = [args.events * k // args.procs for k in range(args.procs + 1)]
        kids = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--events",
                    str(args.events),
                    "--concurrency",
                    str(args.concurrency),
                    "--part",
                    f"{bounds[k]}:{bounds[k + 1]}",
                    *args.command,
                ]
            )
            for k in range(args.procs)
        ]
        for kid in kids:
            kid.wait()
    print(json.dumps({"events": args.events, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
