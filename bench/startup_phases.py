"""Where fastobs's start-up goes up to its first list request, phase by phase.

``python bench/startup_phases.py [RUNS]`` starts the replay server (100 Pods) and, RUNS
times (default 11), a fresh interpreter that goes through the parent's steps up to the
first request one at a time, stamping the wall clock after each: the interpreter and
``site``, ``import fastobs.cli``, ``import fastobs.prefetch``, argv, ``import yaml``, reading
the kubeconfig, the TLS context, the network part of ``prefetch.start`` (connect, TLS
handshake, ``/api``, ``/apis``, sending the list; its credential read is the second, with
yaml loaded), and then the imports that follow the request (``fastobs.daemon``). Prints the
median of each phase, measured from the launch (``Popen``) of the interpreter.
"""

from __future__ import annotations

import ast
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PY, ROOT, Replay  # noqa: E402

PROBE = r"""
import time
t = [("interpreter and site", time.time())]
import fastobs.cli as cli
t.append(("import fastobs.cli", time.time()))
import fastobs.prefetch as prefetch
t.append(("import fastobs.prefetch (socket, ssl, json, credentials, discovery)", time.time()))
import os
settings, _ = cli.parse_args(["pods", "-A", "--kubeconfig", os.environ["KC"]])
t.append(("parse argv", time.time()))
import yaml
t.append(("import yaml", time.time()))
from fastobs import credentials
loaded = credentials.load_fast(settings.kubeconfig, "", credentials.Overrides())
t.append(("read the kubeconfig", time.time()))
credentials.tls_context(loaded[0])
t.append(("TLS context", time.time()))
first = prefetch.start(settings)
assert first is not None, prefetch.outcome
t.append(("connect, TLS handshake, /api, /apis, send the list", time.time()))
import fastobs.daemon
t.append(("after the request: import fastobs.daemon", time.time()))
print(repr(t))
"""


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    compileall.compile_dir(str(ROOT / "fastobs"), quiet=1)  # as bench/run.py: an installed wheel's bytecode
    phases: dict[str, list[float]] = {}
    to_request: list[float] = []
    with Replay(objects=100) as rp:
        for _ in range(runs):
            launched = time.time()
            out = subprocess.run([str(PY), "-c", PROBE], env=dict(os.environ, KC=str(rp.kubeconfig)),
                                 capture_output=True, text=True, check=True).stdout
            stamps: list[tuple[str, float]] = ast.literal_eval(out.strip())
            previous = launched
            for name, at in stamps:
                phases.setdefault(name, []).append((at - previous) * 1000)
                previous = at
            to_request.append((stamps[-2][1] - launched) * 1000)
    for name, ms in phases.items():
        print(f"{statistics.median(ms):7.1f} ms  {name}")
    print(f"{statistics.median(to_request):7.1f} ms  launch to the first list request (median of {runs})")


if __name__ == "__main__":
    main()
