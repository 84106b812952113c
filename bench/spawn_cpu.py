"""CPU of the spawning process per command: fastobs's ``spawn.start`` against ``subprocess.Popen``.

    python bench/spawn_cpu.py [--rounds 5] [--spawns 1000] [--obj-bytes N] [COMMAND ...]

Where it sits: beside ``spawner.py`` (the rate ceiling), this isolates the one cost a worker
pays per command on its own core: starting the child. Both ways start ``COMMAND`` (default
``true``) serially with stdout and stderr on pipes, as a worker does, and reap it; the rounds
alternate the two so load drifts hit both alike. CPU is ``time.process_time`` of this
process only (the children's CPU is not counted). ``--obj-bytes N`` adds an ``OBJ`` variable of
N bytes to the children's environment, as ``--object-env-var`` does.

Out: one JSON line per way, ``{"way": ..., "us_per_spawn": [per round], "median": ...}``; for
fastobs's way also ``frozen_us_median``: the wall time one ``spawn.start`` call holds the
caller (glibc's vfork: until the child has exec'd), median over every spawn.
Invariant: nothing else happens per spawn (no event loop, no parsing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence

from fastobs import spawn

_ENV: dict[bytes, bytes] = dict(os.environb)
_FROZEN: list[float] = []


def _with_fastobs(argv: Sequence[str]) -> None:
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    began = time.monotonic()
    child = spawn.start(argv, env=_ENV, stdin=subprocess.DEVNULL, stdout=w_out, stderr=w_err)
    _FROZEN.append(time.monotonic() - began)
    for fd in (w_out, w_err, r_out, r_err):
        os.close(fd)
    child._reap()  # blocks until the exit, as the pidfd reader's callback would after it


def _with_popen(argv: Sequence[str]) -> None:
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=w_out, stderr=w_err,
                            close_fds=True, start_new_session=True, env=_ENV)
    for fd in (w_out, w_err, r_out, r_err):
        os.close(fd)
    proc.wait()


def _round(way: Callable[[Sequence[str]], None], argv: Sequence[str], n: int) -> float:
    began = time.process_time()
    for _ in range(n):
        way(argv)
    return (time.process_time() - began) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spawns", type=int, default=1000)
    ap.add_argument("--obj-bytes", type=int, default=0, help="an OBJ variable of this many bytes")
    ap.add_argument("command", nargs="*", default=["true"])
    args = ap.parse_args()
    if args.obj_bytes:
        _ENV[b"OBJ"] = b"x" * args.obj_bytes
    spawn.no_inheritance()
    ways = {"fastobs spawn.start (posix_spawnp)": _with_fastobs, "subprocess.Popen": _with_popen}
    results: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            results[name].append(round(_round(way, args.command, args.spawns), 1))
    for name, rounds in results.items():
        row = {"way": name, "us_per_spawn": rounds, "median": statistics.median(rounds),
               "loadavg_1m": os.getloadavg()[0]}
        if name.startswith("fastobs"):
            row["frozen_us_median"] = round(statistics.median(_FROZEN) * 1e6, 1)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
