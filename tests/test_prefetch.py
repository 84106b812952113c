"""The first list request sent before the engine is imported (``fastobs.prefetch``).

Against the real kube-apiserver, reached through a recording TLS front (every request it
forwards is logged with its connection): the fast path with a token kubeconfig and with a
client certificate, its list consumed as the first list (one list request, every object
run once), the in-cluster layout in-process; each way the fast path gives up (401, an exec
plugin, a server that is down, a proxy, a refused list) leaves the normal path's exact
error text and exit code; and a 5,000-object first list from the replay server is read
whole. Every test prints what it measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from fastobs_run import recorder, run_fastobs
from fault_proxy import FaultProxy
from test_kube import make_pki, write_kubeconfig

from fastobs import credentials, prefetch
from fastobs.cli import parse_args
from fastobs.events import Event
from fastobs.kube import KubeClient
from fastobs.source import Source

REPO = Path(__file__).resolve().parents[1]
NO_METRICS = "--listen-addr="
STARTUP_LINE = "start-up: "
CONSUMED = ["prefetched the first list", "reading the prefetched list"]


# ------------------------------------------------------------------ a recording TLS front


class Front:
    """TLS in front of the real API server; logs each request (connection number, method,
    target) and forwards the bytes both ways. With ``client_ca`` it demands a client
    certificate from that CA and authenticates upstream with ``token`` (the test API server
    trusts no client CA)."""

    def __init__(self, k8s: Any, pki: dict[str, Path], *, client_ca: bool = False, token: str = "") -> None:
        self.server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ctx.load_cert_chain(str(pki["srv.crt"]), str(pki["srv.key"]))
        if client_ca:
            self.server_ctx.load_verify_locations(str(pki["ca.crt"]))
            self.server_ctx.verify_mode = ssl.CERT_REQUIRED
        self.upstream_ctx = ssl.create_default_context(cafile=str(k8s.ca_file))
        host, port = k8s.server.removeprefix("https://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.token = token
        self.requests: list[tuple[int, str, str]] = []
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with self.lock:
            self.conns += 1
            number = self.conns
        try:
            client = self.server_ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        up = self.upstream_ctx.wrap_socket(socket.create_connection(self.upstream),
                                           server_hostname=self.upstream[0])
        # One thread per connection, both directions: an SSL socket must not be read in one
        # thread while another writes to it (OpenSSL forbids it; it hung now and then).
        # HTTP/1.1 without pipelining: a request, then its whole response, then the next.
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                with self.lock:
                    self.requests.append((number, method, target))
                if self.token:
                    lines = [ln for ln in lines if not ln.lower().startswith("authorization:")]
                    lines.append(f"Authorization: Bearer {self.token}")
                up.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
                self._relay_response(up, client)
        except (OSError, ValueError):
            pass
        finally:
            for s in (client, up):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    @staticmethod
    def _relay_response(up: socket.socket, client: socket.socket) -> None:
        """Pass one response through as it arrives, until its body ends."""
        head = b""
        while b"\r\n\r\n" not in head:
            data = up.recv(65536)
            if not data:
                raise ConnectionError("upstream closed")
            head += data
        client.sendall(head)
        fields, body = head.split(b"\r\n\r\n", 1)
        lowered = fields.decode("latin-1").lower()
        if "transfer-encoding: chunked" in lowered:
            chunks = prefetch._Dechunker()
            chunks.feed(body)
            while not chunks.done:
                data = up.recv(65536)
                if not data:
                    raise ConnectionError("upstream closed")
                client.sendall(data)
                chunks.feed(data)
            return
        length = next((int(ln.split(":", 1)[1]) for ln in lowered.split("\r\n")
                       if ln.startswith("content-length:")), 0)
        left = length - len(body)
        while left > 0:
            data = up.recv(65536)
            if not data:
                raise ConnectionError("upstream closed")
            client.sendall(data)
            left -= len(data)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def front(k8s: Any, pki: dict[str, Path], **kw: Any) -> Iterator[Front]:
    f = Front(k8s, pki, **kw)
    try:
        yield f
    finally:
        f.close()


def front_kubeconfig(path: Path, f: Front, pki: dict[str, Path], user: dict[str, Any]) -> Path:
    # 127.0.0.1 is not in the front's certificate: tls-server-name must reach the fast path too.
    return write_kubeconfig(path, server=f"https://127.0.0.1:{f.port}", ca=pki["ca.crt"], user=user,
                            cluster_extra={"tls-server-name": "fastobs.test"})


def configmaps(k8s: Any, ns: str, n: int) -> None:
    docs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i:03d}", "namespace": ns},
             "data": {"i": str(i)}} for i in range(n)]
    k8s.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))


def startup_lines(stderr: str) -> list[str]:
    return [line.split(STARTUP_LINE, 1)[1] for line in stderr.splitlines() if STARTUP_LINE in line]


# ------------------------------------------------------------------ the fast path, consumed


@pytest.mark.parametrize("auth", ["token", "client-certificate"])
def test_the_prefetched_list_is_the_first_list(k8s: Any, ns: str, pki: dict[str, Path], tmp_path: Path,
                                               auth: str) -> None:
    """The list request goes out before the engine starts and is read as the first list: the
    server sees one list request (the streamed list, on the discovery's connection), and each
    object's command runs once."""
    configmaps(k8s, ns, 20)
    rec = recorder(tmp_path)
    user = ({"token": k8s.token} if auth == "token" else
            {"client-certificate": str(pki["cli.crt"]), "client-key": str(pki["cli.key"])})
    with front(k8s, pki, client_ca=auth != "token", token=k8s.token if auth != "token" else "") as f:
        kc = front_kubeconfig(tmp_path / "kc", f, pki, user)
        t0 = time.monotonic()
        res = run_fastobs(k8s.env, "configmaps", "-n", ns, "--kubeconfig", str(kc), "--once", "-v", "6",
                          NO_METRICS, "--template", "{.metadata.name}", "--", str(rec.path))
        wall = time.monotonic() - t0
        requests = list(f.requests)
    names = sorted(c["argv"][1] for c in rec.calls())  # oc passes: namespace, name, template output
    print(f"\n{auth}: exit {res.returncode} in {wall:.2f} s; start-up: {startup_lines(res.stderr)}; "
          f"requests: {requests}; commands: {len(names)}")
    assert res.returncode == 0, res.stderr
    assert startup_lines(res.stderr) == CONSUMED, res.stderr
    mine = [n for n in names if n.startswith("cm-")]  # the namespace may hold kube-root-ca.crt too
    assert mine == [f"cm-{i:03d}" for i in range(20)] and len(set(names)) == len(names)  # each once
    lists = [(c, t) for c, _, t in requests
             if f"/namespaces/{ns}/configmaps" in t and "resourceVersion=" not in t]
    assert len(lists) == 1 and "sendInitialEvents=true" in lists[0][1], requests
    # Discovery and the list on one connection: the fast path's, not aiohttp's.
    assert [c for c, _, t in requests[:3]] == [lists[0][0]] * 3, requests


def test_in_cluster_service_account_in_process(k8s: Any, ns: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod's service account (token file, CA file, namespace file) takes the fast path too,
    and a Source reads the prefetched response as its first list."""
    configmaps(k8s, ns, 5)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(k8s.token)
    shutil.copy(k8s.ca_file, sa / "ca.crt")
    (sa / "namespace").write_text(ns + "\n")
    monkeypatch.setattr(credentials, "SA_DIR", str(sa))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    host, port = k8s.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    settings, _ = parse_args(["configmaps"])
    first = prefetch.start(settings)
    print(f"\nin-cluster: {prefetch.outcome}")
    assert first is not None, prefetch.outcome
    assert first.path == f"/api/v1/namespaces/{ns}/configmaps"

    class Sink:
        def __init__(self) -> None:
            self.items: list[Event] = []
            self.ended = 0

        def list_begin(self, *, relist: bool) -> None: ...

        def list_item(self, ev: Event) -> None:
            self.items.append(ev)

        def list_end(self) -> None:
            self.ended += 1

        def watch_event(self, ev: Event) -> None: ...

        def watch_status(self, up: bool) -> None: ...

        async def wait_capacity(self) -> None: ...

    async def main() -> Sink:
        client = await KubeClient.connect(prefetched=first)
        try:
            resource = await client.resolve("configmaps")
            sink = Sink()
            src = Source(client, resource, namespace=client.namespace, label_selector="", field_selector="",
                         sink=sink, maximum_errors=0)
            src.prefetched = first
            task = asyncio_task(src.run())
            for _ in range(200):
                if sink.ended:
                    break
                await sleep(0.05)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            assert src.stats.list_requests == 1
            return sink
        finally:
            await client.close()

    sink = uvloop.run(main())
    print(f"in-cluster: {len(sink.items)} objects in the first list; outcome: {prefetch.outcome}")
    assert prefetch.outcome == "reading the prefetched list"
    assert sorted(e.name for e in sink.items if e.name.startswith("cm-")) == [f"cm-{i:03d}" for i in range(5)]


def asyncio_task(coro: Any) -> Any:
    import asyncio

    return asyncio.ensure_future(coro)


async def sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


# ------------------------------------------------------------------ fallbacks


_NO_PREFETCH = "import fastobs.prefetch as p\np.start = lambda settings: None\n"


def without_prefetch(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a fastobs whose fast path is switched off (the reference run)."""
    d = tmp_path / "no-prefetch"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(_NO_PREFETCH)
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(d), env.get("PYTHONPATH", "")]))}


def compare(tmp_path: Path, env: dict[str, str], *args: str, gave_up: str) -> None:
    """Run fastobs with and without the fast path: the same exit code, stdout and stderr;
    and the debug log says why the fast path gave up."""
    t0 = time.monotonic()
    fast = run_fastobs(env, *args, timeout=60)
    t1 = time.monotonic()
    ref = run_fastobs(without_prefetch(tmp_path, env), *args, timeout=60)
    t2 = time.monotonic()
    verbose = run_fastobs(env, *args, "-v", "6", timeout=60)
    why = startup_lines(verbose.stderr)
    print(f"\nexit {fast.returncode} in {t1 - t0:.2f} s (without the fast path: exit {ref.returncode} in "
          f"{t2 - t1:.2f} s); stderr: {fast.stderr!r}; fast path: {why}")
    assert fast.returncode != 0
    assert (fast.returncode, fast.stdout, fast.stderr) == (ref.returncode, ref.stdout, ref.stderr)
    assert why and why[0].startswith(gave_up), why


def test_a_401_leaves_the_error_to_the_normal_path(k8s: Any, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", server=k8s.server, ca=k8s.ca_file, user={"token": "wrong"})
    compare(tmp_path, k8s.env, "pods", "--kubeconfig", str(kc), "--once", NO_METRICS,
            gave_up="no prefetch: discovery of /api answered 401")


def test_an_exec_plugin_leaves_everything_to_the_normal_path(k8s: Any, tmp_path: Path) -> None:
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\necho 'no credentials for you' >&2\nexit 3\n")
    script.chmod(0o755)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script),
                     "interactiveMode": "Never"}}
    kc = write_kubeconfig(tmp_path / "kc", server=k8s.server, ca=k8s.ca_file, user=user)
    compare(tmp_path, k8s.env, "pods", "--kubeconfig", str(kc), "--once", NO_METRICS,
            gave_up="no prefetch: the credentials need the kubernetes package's loader")


def test_a_server_that_is_down_leaves_the_error_to_the_normal_path(k8s: Any, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    kc = write_kubeconfig(tmp_path / "kc", server=f"https://127.0.0.1:{port}", ca=k8s.ca_file,
                          user={"token": k8s.token})
    compare(tmp_path, k8s.env, "pods", "--kubeconfig", str(kc), "--once", NO_METRICS,
            gave_up="no prefetch: ConnectionRefusedError")


def test_a_proxy_leaves_everything_to_the_normal_path(k8s: Any, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**k8s.env, "HTTPS_PROXY": f"http://127.0.0.1:{port}"}
    compare(tmp_path, env, "pods", "--once", NO_METRICS,
            gave_up="no prefetch: a proxy is set in the environment")


def test_a_server_that_never_answers_leaves_the_timeout_to_the_normal_path(k8s: Any, tmp_path: Path) -> None:
    """Connections complete the TLS handshake and get no answer: the fast path gives up after
    its 5 s, and the normal path's own deadline (``--request-timeout``) words the failure."""
    with FaultProxy.in_front_of(k8s) as proxy:
        kc = proxy.kubeconfig(tmp_path, k8s.token)
        proxy.freeze()
        compare(tmp_path, k8s.env, "pods", "--kubeconfig", str(kc), "--once", "--request-timeout", "3s",
                NO_METRICS, gave_up="no prefetch: TimeoutError")


def test_a_refused_list_is_listed_again_by_the_source(k8s: Any, restricted: Any, tmp_path: Path) -> None:
    """The fast path sent the list; the server refused it (403): the source sends its own,
    counts and words the refusal as it always does."""
    args = ("pods", "-n", restricted.namespace, "--kubeconfig", str(restricted.kubeconfig), "--once",
            "--maximum-errors", "0", NO_METRICS)
    fast = run_fastobs(k8s.env, *args, "-v", "6", timeout=60)
    ref = run_fastobs(without_prefetch(tmp_path, k8s.env), *args, "-v", "6", timeout=60)
    errors = [[ln.split("]", 1)[-1] for ln in r.stderr.splitlines() if "forbidden" in ln]
              for r in (fast, ref)]
    print(f"\n403: exit {fast.returncode} / without the fast path {ref.returncode}; fast path: "
          f"{startup_lines(fast.stderr)}; errors: {errors}")
    assert startup_lines(fast.stderr) == ["prefetched the first list",
                                          "the prefetched list was answered 403; listing again"]
    assert fast.returncode == ref.returncode != 0
    assert errors[0] == errors[1] and errors[0]


# ------------------------------------------------------------------ a large first list


@contextlib.contextmanager
def replay_server(tmp_path: Path, objects: int) -> Iterator[Path]:
    """bench/replay.py: a loopback HTTPS apiserver of ``objects`` Pods that logs its requests."""
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "replay.py"), "--dir", str(tmp_path),
                             "--objects", str(objects)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY ")
        yield tmp_path
    finally:
        proc.kill()
        proc.wait()


def test_a_large_first_list_is_read_whole(tmp_path: Path) -> None:
    """5,000 Pods in one streamed first list, read through the prefetched response (its
    thread, its back-pressure): every object exactly once, one list request."""
    n = 5000
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with replay_server(tmp_path, n) as d:
        t0 = time.monotonic()
        res = run_fastobs(env, "pods", "-A", "--kubeconfig", str(d / "kubeconfig"), "--once", "-v", "6",
                          NO_METRICS, "--template", "{.metadata.namespace}/{.metadata.name}", timeout=120)
        wall = time.monotonic() - t0
        requests = [json.loads(line) for line in (d / "requests.ndjson").read_text().splitlines()]
    # "# <time> Sync <seq>\t"" <namespace> <name> <template output>", between "Sync started" and "ended"
    keys = [ln.split()[-1] for ln in res.stdout.splitlines() if ln.startswith("# ") and "\t" in ln]
    pods = [r for r in requests if r["path"] == "/api/v1/pods"]
    print(f"\n{n} objects: exit {res.returncode} in {wall:.2f} s; {len(keys)} events, {len(set(keys))} keys; "
          f"pods requests: {[sorted(r['query']) for r in pods]}; fast path: {startup_lines(res.stderr)}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert startup_lines(res.stderr) == CONSUMED, res.stderr[-3000:]
    assert len(keys) == n and len(set(keys)) == n
    assert len(pods) <= 2 and "sendInitialEvents" in pods[0]["query"]
    assert all("resourceVersion" in r["query"] for r in pods[1:])  # only the watch may follow


def test_a_body_cut_inside_chunk_headers_still_wakes_the_reader() -> None:
    """The network hands the streamed list over in pieces that end inside a chunk header (as
    TLS records and TCP segments do): a piece that completes no payload must not make the
    reader miss the wake-up for the payload after it (it would wait for its read timeout)."""
    ours, theirs = socket.socketpair()
    pieces = [b"8", b'\r\n{"a": 1}', b"\r\n", b"0\r\n", b"\r\n"]  # one 8-byte chunk, then the end
    delays: list[float] = []

    def network() -> None:
        for piece in pieces:
            time.sleep(0.15)  # the reader is waiting when each piece arrives
            theirs.sendall(piece)

    async def read_all() -> bytes:
        loop = asyncio.get_running_loop()
        resp = prefetch.PrefetchedResponse(prefetch._Http(ours, "test"), 200, {}, loop)
        parts = []
        async with resp:
            while True:
                t0 = time.monotonic()
                data = await asyncio.wait_for(resp.content.readany(), timeout=5)
                delays.append(time.monotonic() - t0)
                if not data:
                    return b"".join(parts)
                parts.append(data)

    writer = threading.Thread(target=network, daemon=True)
    writer.start()
    try:
        body = uvloop.run(read_all())
    except TimeoutError:
        body = b"<the reader was never woken>"
    finally:
        writer.join(timeout=5)
        theirs.close()
    print(f"\nbody {body!r} in {len(delays)} reads, waits {[round(d, 3) for d in delays]} s")
    assert body == b'{"a": 1}', body
