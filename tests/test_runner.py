"""The runner in-process, with real commands: how output is captured and descriptors are handled.

Each test builds a ``fastobs.runner.Runner`` on a real event loop (uvloop, as in a worker) and
runs real ``/bin/sh`` commands through it; no worker process, no API server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from fastobs.protocol import Job
from fastobs.runner import Runner
from fastobs.settings import RunSettings


def job(job_id: int, name: str) -> Job:
    return {"id": job_id, "type": "Updated", "ns": "ns", "name": name, "rv": str(job_id), "cached_arg": None}


def test_cancelling_a_stream_job_leaves_the_other_jobs_descriptors_alone() -> None:
    """Stream mode: job A is cancelled while job B runs; B's pipes took the numbers A had
    closed already, so closing A's descriptors a second time closed B's stdout."""
    script = 'if [ "$2" = a ]; then exec sleep 30; fi; sleep 0.5; seq 1 2000'
    runner = None

    async def main() -> tuple[list[bytes], Any, BaseException | None]:
        nonlocal runner
        runner = Runner(RunSettings(command=("sh", "-c", script, "sh"), output_mode="stream", kill_grace=1.0))
        begun = {"a": asyncio.Event(), "b": asyncio.Event()}
        lines: list[bytes] = []
        task_a = asyncio.create_task(runner.run(job(1, "a"), None, lambda t, h: begun["a"].set(),
                                                lambda fd, line: None))
        await begun["a"].wait()
        await asyncio.sleep(0.1)  # A's command runs and we closed our copies of its write ends
        task_b = asyncio.create_task(runner.run(job(2, "b"), None, lambda t, h: begun["b"].set(),
                                                lambda fd, line: lines.append(line)))
        await begun["b"].wait()
        await asyncio.sleep(0.1)
        task_a.cancel()
        a_error = None
        try:
            await task_a
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            a_error = exc
        result, _, _ = await asyncio.wait_for(task_b, 10)
        return lines, result, a_error

    try:
        lines, result, a_error = uvloop.run(main())
    finally:
        if runner is not None:
            runner.close()
    print(f"job B: {len(lines)} lines, ok={result['ok']}; job A's cancellation raised {a_error!r}")
    assert a_error is None
    assert result["ok"] is True
    assert lines == [f"{i}\n".encode() for i in range(1, 2001)]
