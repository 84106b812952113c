"""``scripts/dev-cluster stress``: start and stop the dev cluster many times, report every failure.

Where it sits: beside :mod:`k8s_cluster`, as its reliability check. In: ``--starts N``,
``--parallel J``, ``--out DIR``. Out: one line per start, a summary, ``DIR/results.json``.

It runs `scripts/dev-cluster up`, `status` and `down` N times (J at a time, each start with its
own state dir, exactly as independent worktrees or test runs do), keeps every start's logs
and command output in DIR/start-NNN/, and checks after each `down` that no server is left
running and that its etcd data dir is gone. Prints one line per start, then the failures
with the paths of their logs, and the time from `up` to ready (median, p95, max). Exit
status 0 when every start and stop succeeded, 1 otherwise, 2 on bad usage. Invariant: every
start it makes is stopped again, and nothing it finds running under its own dirs survives it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import k8s_cluster as kc

DEV_CLUSTER = kc.REPO_ROOT / "scripts" / "dev-cluster"
COMMAND_TIMEOUT = 600


@dataclass
class Outcome:
    index: int
    ok: bool
    seconds: float  # `up` wall time, start to ready
    problem: str  # empty when ok
    notes: list[str]  # what `up` announced (retries, taken ports)
    logs: str


def _run(state: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FASTOBS_DEV_CLUSTER_DIR": str(state)}
    try:
        return subprocess.run(
            [str(DEV_CLUSTER), command],
            capture_output=True,
            text=True,
            env=env,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(exc.cmd, -9, out, err + f"\ntimed out after {COMMAND_TIMEOUT} s")


def _first_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[0][:300]


def _is_retry(line: str) -> bool:
    return "taken" in line or "starting again" in line


def one_start(index: int, out: Path) -> Outcome:
    home = out / f"start-{index:03d}"
    home.mkdir(parents=True)
    state = home / "state"  # dev-cluster locks the parent dir: one parent per start
    t0 = time.monotonic()
    up = _run(state, "up")
    seconds = time.monotonic() - t0
    (home / "up.stdout").write_text(up.stdout)
    (home / "up.stderr").write_text(up.stderr)
    notes = [ln.removeprefix("dev-cluster: ") for ln in up.stderr.splitlines() if _is_retry(ln)]
    cluster = kc.Cluster.load(state)
    problem = ""
    if up.returncode != 0:
        problem = f"up exited {up.returncode}: {_first_error(up.stderr)}"
    else:
        st = _run(state, "status")
        if st.returncode != 0:
            problem = f"status exited {st.returncode} right after up: {st.stdout.strip()}"
    if (state / "logs").is_dir():
        shutil.copytree(state / "logs", home / "logs", dirs_exist_ok=True)
    down = _run(state, "down")
    (home / "down.stderr").write_text(down.stderr)
    if down.returncode != 0 and not problem:
        problem = f"down exited {down.returncode}: {_first_error(down.stderr)}"
    needles = [f"{state}/"] + ([f"{cluster.data_dir}/"] if cluster else [])
    left = kc._servers_mentioning(needles)
    if left and not problem:
        problem = f"servers left running after down: {left}"
    if left:
        kc._terminate(left, needles)
    if cluster is not None and cluster.data_dir.exists() and not problem:
        problem = f"etcd data dir left behind: {cluster.data_dir}"
    return Outcome(index, not problem, seconds, problem, notes, str(home / "logs"))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def summary(outcomes: list[Outcome], wall: float, parallel: int) -> str:
    ready = [o.seconds for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    retried = sum(1 for o in outcomes if o.notes)
    lines = [
        f"{len(outcomes)} starts ({parallel} at a time) in {wall:.0f} s: {len(failed)} failed, "
        f"{retried} needed a retry or another port"
    ]
    if ready:
        lines.append(
            f"up to ready: median {statistics.median(ready):.1f} s, p95 {percentile(ready, 0.95):.1f} s, "
            f"max {max(ready):.1f} s (over {len(ready)} successful starts)"
        )
    for o in failed:
        lines.append(f"FAILED start {o.index}: {o.problem}\n    logs: {o.logs}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dev-cluster stress", description="Start and stop the dev cluster many times."
    )
    parser.add_argument("--starts", type=int, default=50, help="how many starts (default 50)")
    parser.add_argument("--parallel", type=int, default=1, help="how many at a time (default 1)")
    parser.add_argument("--out", type=Path, help="where to keep every log (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.starts < 1 or args.parallel < 1:
        parser.error("--starts and --parallel must be at least 1")
    out = (args.out or Path(tempfile.mkdtemp(prefix="fastobs-cluster-stress-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("start-*")):
        parser.error(f"{out} already holds a run; give a new --out")
    print(f"dev-cluster stress: {args.starts} starts, {args.parallel} at a time, logs in {out}", flush=True)
    load = os.getloadavg()[0]
    printing = threading.Lock()
    t0 = time.monotonic()

    def run(index: int) -> Outcome:
        outcome = one_start(index, out)
        with printing:
            verdict = "ok" if outcome.ok else f"FAILED: {outcome.problem}"
            notes = f" ({'; '.join(outcome.notes)})" if outcome.notes else ""
            print(f"start {index:3d}: {outcome.seconds:5.1f} s {verdict}{notes}", flush=True)
        return outcome

    with ThreadPoolExecutor(args.parallel) as pool:
        outcomes = list(pool.map(run, range(1, args.starts + 1)))
    wall = time.monotonic() - t0
    report = summary(outcomes, wall, args.parallel)
    results = {
        "load_at_start": load,
        "wall": wall,
        "parallel": args.parallel,
        "starts": [asdict(o) for o in outcomes],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(report)
    print(f"every log and command output: {out}/start-NNN/ (summary in {out}/results.json)")
    return 0 if all(o.ok for o in outcomes) else 1
