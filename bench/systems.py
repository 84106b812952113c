"""Systems under test: how each one is started on a workload.

Where it sits: ``run``'s scenarios ask :func:`argv_for` for the command line of a
system (fastobs or a peer from ``bench/peers``) and time it with ``harness``.
In: a :class:`Workload`. Out: argv and environment, or None when the system is not
installed (the scenario then records a "not available" row).

Invariant: every system gets the same command, the same object source and the same
total concurrency; the object reaches the command in ``$OBJ`` (or, for the kubectl
pipeline that cannot pass it, the resourceVersion as a third argument).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import BENCH, ROOT

FASTOBS = ROOT / ".venv" / "bin" / "fastobs"
OC_PACKAGE_BUILD = BENCH / ".peers" / "oc" / "oc"
"""The upstream observe package rebuilt by ``peers/build-oc-observe.sh`` (the fallback)."""
OC = OC_PACKAGE_BUILD
"""The ``oc`` measured as the oc observe peer: see :func:`choose_oc`."""
KOPF = BENCH / ".peers" / "kopf-venv" / "bin" / "kopf"
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"
KOPF_WITHOUT_UVLOOP = "import sys; sys.modules['uvloop'] = None; from kopf.cli import main; sys.exit(main())"
"""kopf's CLI with ``import uvloop`` failing: see :func:`argv_for`."""

ACT_SH = '#!/bin/sh\nns="$1"; name="$2"\nexit 0\n'
IO_SH = "#!/bin/sh\nexec sleep 0.02\n"
# Records "rv key time" when it runs (rv is the third argument: a --template for fastobs
# and oc); bash because $EPOCHREALTIME is a builtin, so no extra exec is timed.
LAG_SH = '#!/bin/bash\necho "$3 $1/$2 $EPOCHREALTIME" >> "$BENCH_LOG"\n'
RV_TEMPLATE = "{.metadata.resourceVersion}"

# Native versions, built at the start of a run when a C compiler exists: one exec per
# event and no interpreter start-up inside the measured time.
IO_C = r"""
#include <time.h>
int main(void) { struct timespec t = {0, 20000000}; nanosleep(&t, 0); return 0; }
"""
LAG_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    const char *path = getenv("BENCH_LOG");
    if (!path || argc < 4) return 0;
    char line[512];
    int n = snprintf(line, sizeof line, "%s %s/%s %lld.%06ld\n", argv[3], argv[1], argv[2],
                     (long long)t.tv_sec, t.tv_nsec / 1000);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return 1;
    write(fd, line, n);
    close(fd);
    return 0;
}
"""


@dataclass
class Workload:
    kubeconfig: Path
    command: Path | None
    concurrency: int
    """Total commands in flight (fastobs: workers x per-worker concurrency)."""
    expect: int = 0
    """Commands after which a system without --once must stop (kopf, kubectl pipeline)."""
    once: bool = True
    log: Path | None = None
    workers: int = 2
    fastobs_flags: tuple[str, ...] = ()
    rv_arg: bool = False
    """Pass the object's resourceVersion as the command's third argument."""


def write_scripts(d: Path) -> dict[str, Path]:
    """The benchmark commands; ``io`` and ``lag`` are native when ``cc`` is available."""
    out = {}
    for name, text in (("act.sh", ACT_SH), ("io.sh", IO_SH), ("lag.sh", LAG_SH)):
        p = d / name
        p.write_text(text)
        p.chmod(0o755)
        out[name] = p
    out["io"], out["lag"] = out["io.sh"], out["lag.sh"]
    cc = shutil.which("cc") or shutil.which("gcc")
    for name, source in (("io", IO_C), ("lag", LAG_C)):
        if not cc:
            break
        (d / f"{name}.c").write_text(source)
        built = subprocess.run([cc, "-O2", "-o", str(d / name), str(d / f"{name}.c")], capture_output=True)
        if built.returncode == 0:
            out[name] = d / name
    return out


def choose_oc(given: Path | None) -> Path:
    """The ``oc`` binary for the oc observe peer: ``--oc PATH``, else a real ``oc`` on
    PATH, else the package build under ``bench/.peers/oc`` (which may be missing)."""
    global OC
    on_path = shutil.which("oc")
    OC = given or (Path(on_path) if on_path else OC_PACKAGE_BUILD)
    return OC


def _first_line(argv: list[str], pattern: str = "") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    for ln in lines:
        if pattern in ln:
            return ln
    return ""


_VERSIONS: dict[str, str] = {}


def _unstamped_oc(binary: Path) -> str:
    """What an oc built from source without version stamping says about itself: its
    client-go and Go versions from the binary's build info (``go version -m``)."""
    try:
        out = subprocess.run(["go", "version", "-m", str(binary)], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "(unstamped source build)"
    go = out.split(":", 1)[1].split()[0] if ":" in out.split("\n", 1)[0] else "?"
    client_go = next((ln.split()[2] for ln in out.splitlines()
                      if ln.split()[:2] == ["dep", "k8s.io/client-go"]), "?")
    return f"(unstamped source build: client-go {client_go}, {go})"


def version(system: str) -> str:
    """What each row names: the version of the system (and which oc build was used)."""
    if system in _VERSIONS:
        return _VERSIONS[system]
    v = ""
    if system.startswith("fastobs"):
        v = "fastobs " + _first_line([str(ROOT / ".venv" / "bin" / "python"), "-c",
                                      "import fastobs; print(fastobs.__version__)"])
        head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        if head:
            v += f" ({head})"
    elif system == "oc-observe":
        if OC == OC_PACKAGE_BUILD:
            v = "observe package build (bench/peers/build-oc-observe.sh)"
        else:
            line = _first_line([str(OC), "version", "--client"], "Client Version")
            stamped = line.split(":", 1)[1].strip() if line else ""
            v = "oc " + (stamped if stamped not in ("", "unknown") else _unstamped_oc(OC))
    elif system == "kopf":
        line = _first_line([str(KOPF.with_name("python")), "-c",
                            "import sys, kopf, importlib.metadata as m; "
                            "print(m.version('kopf'), sys.version.split()[0])"])
        if line:
            kv, py = line.split()
            v = f"kopf {kv}, Python {py}, asyncio loop (uvloop blocked)"
    elif system == "kubectl-xargs":
        line = _first_line([str(KUBECTL), "version", "--client"], "Client Version")
        xargs = _first_line(["xargs", "--version"], "xargs")
        v = "kubectl " + (line.split(":", 1)[1].strip() if line else "?") + (f", {xargs}" if xargs else "")
    elif system == "xargs-limit":
        v = _first_line(["xargs", "--version"], "xargs")
    elif system == "spawner-limit":
        v = "Python " + _first_line([str(ROOT / ".venv" / "bin" / "python"), "-c",
                                     "import platform; print(platform.python_version())"])
    _VERSIONS[system] = v
    return v


def fastobs_runnable() -> str:
    """Empty if fastobs starts, else the reason it does not."""
    if not FASTOBS.exists():
        return "not installed"
    try:
        r = subprocess.run([str(FASTOBS), "--help"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"does not start: {exc}"
    if r.returncode != 0:
        return (
            "does not start: " + r.stderr.decode(errors="replace").strip().splitlines()[-1:][0][:120]
            if r.stderr.strip()
            else f"exit {r.returncode}"
        )
    return ""


def available(system: str) -> str:
    """Empty if the system can run here, else why not."""
    if system.startswith("fastobs"):
        return fastobs_runnable()
    path = {"oc-observe": OC, "kopf": KOPF, "kubectl-xargs": KUBECTL}.get(system)
    if path is None or not path.exists():
        return f"{system} is not built/installed (see bench/README.md)"
    return ""


def main_exe(system: str) -> str:
    """The executable whose RSS is the system's (the launched process when empty)."""
    return "kubectl" if system == "kubectl-xargs" else ""


def _env(w: Workload) -> dict[str, str]:
    env = dict(os.environ, KUBECONFIG=str(w.kubeconfig))
    if w.log:
        env["BENCH_LOG"] = str(w.log)
    return env


def argv_for(system: str, w: Workload) -> tuple[list[str], dict[str, str]]:
    env = _env(w)
    cmd = [str(w.command)] if w.command else []
    if system.startswith("fastobs"):
        per_worker = max(1, w.concurrency // w.workers)
        argv = [
            str(FASTOBS),
            "pods",
            "-A",
            "-q",
            "--kubeconfig",
            str(w.kubeconfig),
            "--listen-addr",
            "",
            "--workers",
            str(w.workers),
            "--concurrency",
            str(per_worker),
            "--object-env-var",
            "OBJ",
            *w.fastobs_flags,
        ]
        if w.once:
            argv.append("--once")
        if w.rv_arg:
            argv += ["--template", RV_TEMPLATE]
        return [*argv, "--", *cmd] if cmd else argv, env
    if system == "oc-observe":
        argv = [
            str(OC),
            "observe",
            "pods",
            "-A",
            "-q",
            "--kubeconfig",
            str(w.kubeconfig),
            "--listen-addr",
            "",
            "--object-env-var",
            "OBJ",
            "--maximum-errors",
            "-1",
        ]
        if w.once:
            argv.append("--once")
        if w.rv_arg:
            argv += ["--template", RV_TEMPLATE]
        return [*argv, "--", *cmd] if cmd else argv, env
    if system == "kopf":
        env.update(
            BENCH_CMD=str(w.command or ""), BENCH_EXPECT=str(w.expect), BENCH_CONCURRENCY=str(w.concurrency)
        )
        # kopf's CLI switches to uvloop whenever it can import it, and uvloop's
        # subprocess_exec forks the whole interpreter per command (a 220 MB kopf spawns
        # about 9x slower). Its best setting for a command runner is asyncio's own loop, so
        # uvloop is made unimportable for the run, whatever the venv holds.
        return [
            str(KOPF.with_name("python")),
            "-c",
            KOPF_WITHOUT_UVLOOP,
            "run",
            "--standalone",
            "-A",
            "--quiet",
            str(BENCH / "peers" / "kopf_handler.py"),
        ], env
    if system == "kubectl-xargs":
        return [
            shutil.which("sh") or "/bin/sh",
            str(BENCH / "peers" / "kubectl_xargs.sh"),
            str(KUBECTL),
            str(w.expect),
            str(w.concurrency),
            *cmd,
        ], env
    raise ValueError(f"unknown system {system}")
