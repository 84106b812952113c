"""A group of fastobs replicas on loopback, a churn loader, faults, and a checker.

Where it sits: outside fastobs; used by ``tests/test_ha.py`` (bounded scenarios in the regular
suite) and ``bench/ha.py`` (the heavy ones). In: a running kube-apiserver (``k8s_cluster``).
Out: replicas as real processes (each in its own session, so a signal reaches exactly it),
faults (SIGKILL, SIGSTOP, a TCP proxy that cuts one replica off, an apiserver restart), and a
:class:`Report` computed from the per-invocation log that the recorded command writes.

The evidence is independent of fastobs: every command invocation appends a start line and an
end line (``$EPOCHREALTIME``, the host clock every process shares) to one log with
``O_APPEND`` writes below ``PIPE_BUF``; a command stopped with SIGTERM writes its end from a
trap. The ground truth is the API server's own final list. fastobs's logs are only read to
explain a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import k8s_cluster as kc

PYTHON = sys.executable
GROUPS: list[Group] = []
"""Every group made here, so :func:`stop_everything` can leave no replica behind."""


def stop_everything() -> None:
    """Stop every replica and proxy of every group (a failed test or bench leaves none)."""
    while GROUPS:
        with contextlib.suppress(Exception):
            GROUPS.pop().stop_all()


def _die_with_us() -> Callable[[], None]:
    """A preexec_fn: SIGKILL the replica if the process that started it dies."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec

RECORD = r"""#!/bin/bash
# Recorded command of the HA harness: [namespace] name rv (the template); T_TYPE is the event
# type, FASTOBS_BUCKET and FASTOBS_SHARD_EPOCH come from fastobs.
key="$1/$2"; rv="$3"
printf -v pause '0.%03d' $((RANDOM % (HA_SLEEP_MS_MAX - HA_SLEEP_MS_MIN + 1) + HA_SLEEP_MS_MIN))
me="$HA_REPLICA $FASTOBS_IDENTITY $$ $key ${rv:--} $T_TYPE $FASTOBS_BUCKET $FASTOBS_SHARD_EPOCH"
printf 'S %s %s\n' "$me" "$EPOCHREALTIME" >> "$HA_LOG"
finish() { printf 'E %s %s %s\n' "$me" "$EPOCHREALTIME" "$1" >> "$HA_LOG"; }
trap 'finish killed; kill $pid 2>/dev/null; exit 143' TERM
sleep "$pause" & pid=$!
wait $pid
finish ok
"""


@dataclass(frozen=True)
class Timing:
    """Lease timing of the replicas (the design study's test timing by default)."""

    lease_duration: float = 4.0
    renew_deadline: float = 3.0
    retry_period: float = 0.5
    kill_grace: float = 0.5

    @property
    def failover_goal(self) -> float:
        """lease duration + 1.2 × retry period + 0.5 s."""
        return self.lease_duration + 1.2 * self.retry_period + 0.5

    def args(self) -> list[str]:
        return ["--lease-duration", f"{self.lease_duration}s", "--renew-deadline", f"{self.renew_deadline}s",
                "--retry-period", f"{self.retry_period}s", "--lease-kill-grace", f"{self.kill_grace}s"]


# ----------------------------------------------------------------------------- the API


class Api:
    """Admin requests to the API server (one keep-alive connection per thread)."""

    def __init__(self, cluster: kc.Cluster) -> None:
        self.cluster = cluster
        self._local = threading.local()
        self._ssl = kc.ssl_context(cluster)

    def _conn(self) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.cluster.port, context=self._ssl, timeout=10)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.cluster.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
            except (OSError, http.client.HTTPException, ssl.SSLError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def namespace(self, name: str) -> None:
        status, _ = self.request("POST", "/api/v1/namespaces",
                                 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        assert status in (201, 409), status

    def configmaps(self, ns: str) -> dict[str, str]:
        """key (ns/name) -> resourceVersion of every ConfigMap in ``ns``, from a consistent list."""
        status, doc = self.request("GET", f"/api/v1/namespaces/{ns}/configmaps")
        assert status == 200, (status, doc)
        return {f"{ns}/{item['metadata']['name']}": item["metadata"]["resourceVersion"]
                for item in doc["items"] if item["metadata"]["name"] != "kube-root-ca.crt"}

    def leases(self, ns: str, group: str) -> dict[str, dict[str, Any]]:
        status, doc = self.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
                                          f"?labelSelector=fastobs.io%2Flease-group%3D{group}")
        assert status == 200, (status, doc)
        return {item["metadata"]["name"]: item for item in doc["items"]}

    def bucket_holders(self, ns: str, group: str) -> dict[int, str]:
        """Bucket index -> holder (``""`` when released), from the bucket Leases."""
        out: dict[int, str] = {}
        for name, lease in self.leases(ns, group).items():
            if lease["metadata"]["labels"].get("fastobs.io/lease-role") != "bucket":
                continue
            index = 0 if name == group else int(name[len(group) + 2:].split("-of-")[0])
            out[index] = lease["spec"].get("holderIdentity") or ""
        return out

    def kubeconfig_via(self, port: int, path: Path) -> Path:
        """A kubeconfig for this cluster's admin that goes through 127.0.0.1:``port`` (a proxy)."""
        text = self.cluster.kubeconfig.read_text()
        path.write_text(text.replace(f"127.0.0.1:{self.cluster.port}", f"127.0.0.1:{port}"))
        return path


# ----------------------------------------------------------------------------- the proxy


class Proxy:
    """A TCP proxy from a loopback port to the API server that can cut its client off.

    ``cut()`` is a partition: bytes stop flowing both ways on open connections and new ones are
    accepted but never forwarded (nothing is reset: the client only sees silence). ``heal()``
    drops the stalled connections and forwards again.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_off = False
        self._loop = asyncio.new_event_loop()
        self._conns: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ha-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._conns.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._conns.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            while self.cut_off:  # a partition: hold the bytes, forward nothing
                await asyncio.sleep(0.05)
                if writer.is_closing():
                    return
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    def cut(self) -> None:
        self.cut_off = True

    def heal(self) -> None:
        def drop() -> None:
            for w in list(self._conns):
                w.transport.abort()
            self._conns.clear()
            self.cut_off = False

        self._loop.call_soon_threadsafe(drop)

    def close(self) -> None:
        self.heal()
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# ----------------------------------------------------------------------------- replicas


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    """One fastobs process of the group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stderr_path = self.workdir / f"{self.name}.stderr"

    def start(self) -> Replica:
        self.starts += 1
        with self.stderr_path.open("ab") as err:
            err.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                         preexec_fn=_die_with_us())
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int, group: bool = False) -> float:
        """Send ``sig`` to the fastobs parent (or its whole process group); returns the time sent."""
        assert self.proc is not None
        t = time.time()
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)
        return t

    def tree(self) -> list[int]:
        """The fastobs parent and every process below it: workers, commands (each in a process
        group of its own) and what they started."""
        from fastobs_run import children

        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children(pid))
        return out

    def freeze(self) -> tuple[float, list[int]]:
        """SIGSTOP to the whole process tree, as a frozen pod or VM: the parent, its workers and
        its commands. Returns the time and the pids stopped (thaw them with :meth:`thaw`)."""
        t = time.time()
        frozen: list[int] = []
        for _ in range(3):  # a process forked meanwhile is caught by the next pass
            for pid in self.tree():
                if pid not in frozen:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                        frozen.append(pid)
        return t, frozen

    def thaw(self, pids: list[int]) -> float:
        """SIGCONT to every process :meth:`freeze` stopped, all at once (commands included)."""
        t = time.time()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return t

    def kill(self) -> float:
        """A crash: SIGKILL to the parent and its workers (the commands have their own groups)."""
        t = self.signal(signal.SIGKILL, group=True)
        self.wait(10)
        return t

    def stop(self, timeout: float = 30) -> int:
        """A graceful stop (SIGTERM); returns the exit status."""
        if not self.alive():
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL, group=True)
            return self.proc.wait(10)

    def metrics(self) -> dict[str, float]:
        """``name{labels}`` -> value of every sample on /metrics; empty when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except (OSError, urllib.error.URLError):
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")


class Group:
    """The replicas of one scenario, sharing one lease group and one invocation log."""

    def __init__(self, api: Api, ns: str, workdir: Path, *, lease: str = "ha", buckets: int = 8,
                 timing: Timing = Timing(), workers: int = 1, extra: list[str] | None = None,
                 sleep_ms: tuple[int, int] = (20, 200)) -> None:
        self.api = api
        self.ns = ns
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.lease = lease
        self.buckets = buckets
        self.timing = timing
        self.workers = workers
        self.extra = list(extra or [])
        self.log = workdir / "invocations.log"
        self.command = workdir / "record.sh"
        self.command.write_text(RECORD)
        self.command.chmod(0o755)
        self.sleep_ms = sleep_ms
        self.replicas: dict[str, Replica] = {}
        self.proxies: dict[str, Proxy] = {}
        self.events: list[tuple[float, str]] = []
        """(time, what) of every fault and step, for the report."""
        GROUPS.append(self)

    def note(self, what: str, t: float | None = None) -> float:
        t = time.time() if t is None else t
        self.events.append((t, what))
        return t

    def add(self, name: str, *, via_proxy: bool = False, extra: list[str] | None = None) -> Replica:
        kubeconfig = self.api.cluster.kubeconfig
        if via_proxy:
            proxy = self.proxies[name] = Proxy(self.api.cluster.port)
            kubeconfig = self.api.kubeconfig_via(proxy.port, self.workdir / f"{name}.kubeconfig")
        port = free_port()
        argv = [PYTHON, "-m", "fastobs", "configmaps", "-n", self.ns, "--lease-name", self.lease,
                "--buckets", str(self.buckets), "--identity", name, *self.timing.args(),
                "--listen-addr", f"127.0.0.1:{port}", "--workers", str(self.workers), "--concurrency", "8",
                "-q", "--type-env-var", "T_TYPE", "--template", "{.metadata.resourceVersion}",
                "--delete", str(self.command), *self.extra, *(extra or []), "--", str(self.command)]
        env = dict(os.environ)
        env.update(KUBECONFIG=str(kubeconfig), HA_LOG=str(self.log), HA_REPLICA=name,
                   HA_SLEEP_MS_MIN=str(self.sleep_ms[0]), HA_SLEEP_MS_MAX=str(self.sleep_ms[1]))
        replica = self.replicas[name] = Replica(name, argv, env, self.workdir, port)
        return replica

    def start(self, *names: str) -> None:
        for name in names:
            self.replicas[name].start()
            self.note(f"start {name}")

    def holders(self) -> dict[int, str]:
        return self.api.bucket_holders(self.ns, self.lease)

    def wait_owned(self, names: list[str], timeout: float = 60.0, balanced: bool = True,
                   not_by: set[str] = frozenset()) -> dict[int, str]:  # type: ignore[assignment]
        """Until every bucket is held by one of ``names`` (each holding its share when
        ``balanced``), and by none of the incarnations ``not_by``."""
        deadline = time.monotonic() + timeout
        holders: dict[int, str] = {}
        while time.monotonic() < deadline:
            holders = self.holders()
            owners = Counter(h.split("@")[0] for h in holders.values())
            if len(holders) == self.buckets and all(h and h.split("@")[0] in names and h not in not_by
                                                    for h in holders.values()):
                share = self.buckets // len(names)
                if not balanced or all(share <= owners.get(n, 0) <= share + 1 for n in names):
                    return holders
            time.sleep(0.1)
        raise AssertionError(f"buckets not held by {names} after {timeout}s: {holders}\n{self.logs_tail()}")

    def owned_now(self) -> dict[str, int]:
        """Buckets each live replica owns (and may dispatch for), from its /metrics."""
        out: dict[str, int] = {}
        for name, r in self.replicas.items():
            if r.alive():
                m = r.metrics()
                out[name] = int(m.get('fastobs_group_buckets_held{state="owned"}', 0))
        return out

    def wait_all_owned(self, timeout: float = 60.0) -> float:
        """Until the live replicas own every bucket between them (by their metrics); returns when."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(self.owned_now().values()) == self.buckets:
                return time.time()
            time.sleep(0.1)
        raise AssertionError(f"the replicas own {self.owned_now()} of {self.buckets} buckets after "
                             f"{timeout}s\n{self.logs_tail()}")

    def wait_joined(self, names: list[str], timeout: float = 60.0) -> None:
        """Until each of ``names`` has renewed its member Lease since we first saw it (it is up,
        and its view of the group is current)."""
        deadline = time.monotonic() + timeout
        first: dict[str, str] = {}
        renewed: set[str] = set()
        while time.monotonic() < deadline:
            for lease in self.api.leases(self.ns, self.lease).values():
                if lease["metadata"]["labels"].get("fastobs.io/lease-role") != "member":
                    continue
                name = (lease["spec"].get("holderIdentity") or "").split("@")[0]
                rv = lease["metadata"]["resourceVersion"]
                if name in names and first.setdefault(name, rv) != rv:
                    renewed.add(name)
            if renewed >= set(names):
                return
            time.sleep(self.timing.retry_period / 2)
        raise AssertionError(f"{names} did not join the group in {timeout}s\n{self.logs_tail()}")

    def logs_tail(self, lines: int = 30) -> str:
        out = []
        for r in self.replicas.values():
            tail = r.log().splitlines()[-lines:]
            out.append(f"--- {r.name} ({r.stderr_path}) ---\n" + "\n".join(tail))
        return "\n".join(out)

    def stop_all(self) -> None:
        for r in self.replicas.values():
            if r.alive():
                r.signal(signal.SIGCONT, group=True)
                r.stop()
        for p in self.proxies.values():
            p.close()

    def invocations(self) -> list[Invocation]:
        return parse_log(self.log)


# ----------------------------------------------------------------------------- the loader


class Loader:
    """Churn on ``keys`` ConfigMaps: patches, deletes and re-creations at ``rate`` per second."""

    def __init__(self, api: Api, ns: str, keys: int, *, rate: float = 40.0, delete_share: float = 0.1,
                 seed: int = 1) -> None:
        self.api = api
        self.ns = ns
        self.names = [f"k{i:05d}" for i in range(keys)]
        self.rate = rate
        self.delete_share = delete_share
        self.rng = random.Random(seed)
        self.counter = 0
        self.ops: Counter[str] = Counter()
        self.errors = 0
        self.deleted: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, name: str = "") -> str:
        return f"/api/v1/namespaces/{self.ns}/configmaps" + (f"/{name}" if name else "")

    def create(self, name: str) -> int:
        self.counter += 1
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                "data": {"n": str(self.counter)}}
        return self.api.request("POST", self._path(), body)[0]

    def create_all(self, threads: int = 8) -> None:
        chunks = [self.names[i::threads] for i in range(threads)]

        def run(chunk: list[str]) -> None:
            for name in chunk:
                while self.create(name) not in (201, 409):
                    time.sleep(0.2)

        workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def step(self) -> None:
        name = self.rng.choice(self.names)
        try:
            if name in self.deleted:
                status = self.create(name)
                if status in (201, 409):
                    self.deleted.discard(name)
                    self.ops["create"] += 1
            elif self.rng.random() < self.delete_share:
                status = self.api.request("DELETE", self._path(name))[0]
                if status in (200, 404):
                    self.deleted.add(name)
                    self.ops["delete"] += 1
            else:
                self.counter += 1
                status = self.api.request("PATCH", self._path(name), {"data": {"n": str(self.counter)}},
                                          "application/merge-patch+json")[0]
                if status == 200:
                    self.ops["patch"] += 1
            if status >= 500 or status == 0:
                self.errors += 1
        except (OSError, http.client.HTTPException, ssl.SSLError):
            self.errors += 1
            time.sleep(0.2)  # the API server is away (a restart): try again shortly

    def run(self) -> None:
        interval = 1.0 / self.rate
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.step()
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="ha-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


# ----------------------------------------------------------------------------- the checker


@dataclass
class Invocation:
    replica: str
    incarnation: str
    pid: str
    key: str
    rv: str
    type: str
    bucket: int
    epoch: int
    start: float
    end: float = float("inf")
    status: str = ""

    @property
    def finished(self) -> bool:
        return self.status == "ok"


def parse_log(path: Path) -> list[Invocation]:
    if not path.exists():
        return []
    runs: dict[tuple[str, str], Invocation] = {}
    order: list[Invocation] = []
    for line in path.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) < 10:
            continue
        kind, replica, incarnation, pid, key, rv, type_, bucket, epoch, t = parts[:10]
        if kind == "S":
            inv = Invocation(replica, incarnation, pid, key, rv, type_, int(bucket), int(epoch), float(t))
            runs[(incarnation, pid)] = inv
            order.append(inv)
        elif kind == "E" and (incarnation, pid) in runs:
            inv = runs.pop((incarnation, pid))
            inv.end, inv.status = float(t), parts[10] if len(parts) > 10 else ""
    return order


@dataclass
class Report:
    invocations: int
    keys: int
    overlaps: list[tuple[Invocation, Invocation]]
    lost: list[str]
    unterminated: list[Invocation]
    duplicates: int
    """(key, rv, type) run more than once (at-least-once after crashes; informational)."""
    killed: int
    """Commands stopped by fencing (they wrote their end from the SIGTERM trap)."""
    shared_epochs: list[tuple[int, int, set[str]]]
    """(bucket, epoch, incarnations) where two processes ran commands under one fencing token."""
    stale: list[Invocation] = field(default_factory=list)
    """Commands started under an older epoch of their bucket than one already started: a
    replica acting on ownership it had lost (a paused process waking up, say)."""

    def summary(self) -> str:
        return (f"{self.invocations} invocations on {self.keys} keys: {len(self.overlaps)} overlaps, "
                f"{len(self.lost)} lost final states, {len(self.unterminated)} unterminated, "
                f"{self.duplicates} duplicate runs, {self.killed} stopped by fencing, "
                f"{len(self.shared_epochs)} shared epochs, {len(self.stale)} stale-epoch starts")


def check(runs: list[Invocation], final: dict[str, str], ever: set[str]) -> Report:
    """Overlaps (two runs of one key at once, across replicas or not) and lost final states (the
    last run of a key that exists is not at its final resourceVersion, or the last run of a key
    that is gone is not a Deleted)."""
    by_key: dict[str, list[Invocation]] = defaultdict(list)
    for inv in runs:
        by_key[inv.key].append(inv)
    overlaps: list[tuple[Invocation, Invocation]] = []
    for invs in by_key.values():
        invs.sort(key=lambda i: i.start)
        latest_end: Invocation | None = None
        for inv in invs:
            if latest_end is not None and inv.start < latest_end.end:
                overlaps.append((latest_end, inv))
            if latest_end is None or inv.end > latest_end.end:
                latest_end = inv
    lost: list[str] = []
    for key in sorted(ever | set(final)):
        done = [i for i in by_key.get(key, []) if i.finished]
        last = max(done, key=lambda i: i.start) if done else None
        if key in final:
            if last is None or last.type == "Deleted" or last.rv != final[key]:
                lost.append(f"{key}: final rv {final[key]}, last run "
                            f"{(last.type, last.rv, last.replica) if last else None}")
        elif last is None or last.type != "Deleted":
            lost.append(f"{key}: deleted, last run {(last.type, last.rv, last.replica) if last else None}")
    seen = Counter((i.key, i.rv, i.type) for i in runs if i.finished)
    epochs: dict[tuple[int, int], set[str]] = defaultdict(set)
    for inv in runs:
        epochs[(inv.bucket, inv.epoch)].add(inv.incarnation)
    return Report(
        invocations=len(runs), keys=len(by_key), overlaps=overlaps, lost=lost,
        unterminated=[i for i in runs if i.end == float("inf")],
        duplicates=sum(n - 1 for n in seen.values() if n > 1),
        killed=sum(1 for i in runs if i.status == "killed"),
        shared_epochs=[(b, e, who) for (b, e), who in sorted(epochs.items()) if len(who) > 1],
        stale=_stale_epochs(runs),
    )


def _stale_epochs(runs: list[Invocation]) -> list[Invocation]:
    newest: dict[int, int] = {}
    stale = []
    for inv in sorted(runs, key=lambda i: i.start):
        if inv.epoch < newest.get(inv.bucket, 0):
            stale.append(inv)
        newest[inv.bucket] = max(newest.get(inv.bucket, 0), inv.epoch)
    return stale


def settle(group: Group, ever: set[str], timeout: float = 60.0) -> tuple[Report, dict[str, str]]:
    """Wait until every key's final state has run (or ``timeout``); returns the last report."""
    deadline = time.monotonic() + timeout
    while True:
        final = group.api.configmaps(group.ns)
        report = check(group.invocations(), final, ever)
        if not report.lost or time.monotonic() > deadline:
            return report, final
        time.sleep(0.5)


def runs_by_replica_after(runs: list[Invocation], t: float) -> Iterator[tuple[str, float]]:
    for inv in runs:
        if inv.start >= t:
            yield inv.replica, inv.start


def first_start(runs: list[Invocation], after: float, replica: str | None = None,
                where: Callable[[Invocation], bool] = lambda i: True) -> float | None:
    starts = [i.start for i in runs
              if i.start >= after and (replica is None or i.replica == replica) and where(i)]
    return min(starts, default=None)
