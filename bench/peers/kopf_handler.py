"""kopf peer: an event handler that runs the benchmark command per Pod event.

Where it sits: ``run`` starts ``kopf run --standalone -A bench/peers/kopf_handler.py``
from a separate virtualenv (kopf is not a fastobs dependency) against the replay server
or a real apiserver. Per event it runs ``$BENCH_CMD ns name rv`` with asyncio's subprocess
support, at most ``$BENCH_CONCURRENCY`` (default 16) at once, passing the object as
JSON in ``$OBJ`` like fastobs's and oc's ``--object-env-var OBJ``.

Invariant: the process exits (status 0) once ``$BENCH_EXPECT`` commands have finished,
so ``run`` can time it like ``--once``; 0 means run until killed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import kopf

_COMMAND = os.environ.get("BENCH_CMD", "")
_EXPECT = int(os.environ.get("BENCH_EXPECT", "0"))
_LIMIT = asyncio.Semaphore(int(os.environ.get("BENCH_CONCURRENCY", "16")))
_done = 0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False
    settings.watching.server_timeout = 600
    logging.getLogger("kopf").setLevel(logging.WARNING)


@kopf.on.event("", "v1", "pods")
async def run_command(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    global _done
    if event.get("type") not in ("ADDED", "MODIFIED", None):
        return
    if _COMMAND:
        env = dict(os.environ, OBJ=json.dumps(dict(body)))
        async with _LIMIT:
            proc = await asyncio.create_subprocess_exec(
                _COMMAND,
                body.metadata.namespace or "",
                body.metadata.name or "",
                body.get("metadata", {}).get("resourceVersion", ""),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()
    _done += 1
    if _EXPECT and _done >= _EXPECT:
        os._exit(0)
