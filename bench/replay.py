"""Replay server: a loopback HTTPS apiserver for ONE resource (core/v1 pods).

Where it sits: ``run`` starts it as a separate process (so it has its own core) and
points the systems under test at the kubeconfig it writes. It serves discovery
(aggregated and legacy), a paginated LIST and a chunked WATCH of a recording:

* the initial state: ``--objects N`` Pods at resourceVersions 1..N, spread over
  ``--namespaces`` namespaces (``bench-0`` ...);
* the recording: ``--watch-events M`` MODIFIED events at resourceVersions N+1..N+M,
  event ``e`` touching Pod ``e % N``; served as fast as the client reads, or at
  ``--watch-rate`` events/s.

Out: ``READY <port>`` on stdout once listening; one NDJSON line per request in
``<dir>/requests.ndjson`` (wall-clock arrival time, path, query); ``GET /_bench/stats``
returns when each recorded event was written (wall clock), for lag measurements.

Invariant: the server is never the bottleneck it measures: objects are rendered by a
single bytes substitution and written in ~64 KiB batches (one HTTP chunk per event,
as the apiserver flushes), waiting for the socket to drain between batches.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pods import PodTemplate  # noqa: E402
from tlsgen import make_certs  # noqa: E402

TOKEN = "fastobs-bench-token"
_BATCH = 64 * 1024
_AGGREGATED_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
_POD_RESOURCE = {
    "name": "pods",
    "singularName": "pod",
    "namespaced": True,
    "kind": "Pod",
    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
    "shortNames": ["po"],
    "categories": ["all"],
}
_NS_RESOURCE = {
    "name": "namespaces",
    "singularName": "namespace",
    "namespaced": False,
    "kind": "Namespace",
    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
    "shortNames": ["ns"],
}


class Recording:
    """The replayed state and events, rendered on demand."""

    def __init__(self, objects: int, namespaces: int, watch_events: int) -> None:
        self.n = objects
        self.namespaces = [f"bench-{i}" for i in range(namespaces)]
        self.m = watch_events if objects else 0
        self.list_rv = objects
        self._watch_tpl = PodTemplate(with_type_meta=True)
        self._item_tpl = PodTemplate(with_type_meta=False)
        self.sent_at: list[float] = [0.0] * self.m
        self.stream_started = 0.0
        self.stream_done = 0.0

    def ns_of(self, i: int) -> str:
        return self.namespaces[i % len(self.namespaces)]

    def indices(self, namespace: str | None) -> range:
        if namespace is None:
            return range(self.n)
        if namespace not in self.namespaces:
            return range(0)
        return range(self.namespaces.index(namespace), self.n, len(self.namespaces))

    def item(self, i: int) -> bytes:
        return self._item_tpl.render(i, i + 1, self.ns_of(i))

    def added_line(self, i: int) -> bytes:
        return b'{"type":"ADDED","object":' + self._watch_tpl.render(i, i + 1, self.ns_of(i)) + b"}\n"

    def event_line(self, e: int) -> bytes:
        i = e % self.n
        return (
            b'{"type":"MODIFIED","object":'
            + self._watch_tpl.render(i, self.n + 1 + e, self.ns_of(i), gen=e // self.n + 2)
            + b"}\n"
        )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _status(code: int, reason: str, message: str) -> bytes:
    return orjson.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    )


class Server:
    def __init__(self, rec: Recording, args: argparse.Namespace, log_path: Path) -> None:
        self.rec = rec
        self.args = args
        self._log = log_path.open("ab", buffering=0)
        self.go = asyncio.Event()
        """Set by GET /_bench/go; with --hold-watch the replayed events wait for it."""
        if not args.hold_watch:
            self.go.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                keep = await self.route(method, target, headers, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def route(
        self, method: str, target: str, headers: dict[str, str], writer: asyncio.StreamWriter
    ) -> bool:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/") or "/"
        self._log.write(
            orjson.dumps({"t": time.time(), "method": method, "path": path, "query": query}) + b"\n"
        )
        if path == "/_bench/go":
            self.go.set()  # --hold-watch: the watch's events start now
            return self.send(writer, 200, b"{}")
        if path == "/_bench/stats":
            return self.send(
                writer,
                200,
                orjson.dumps(
                    {
                        "sent_at": self.rec.sent_at,
                        "stream_started": self.rec.stream_started,
                        "stream_done": self.rec.stream_done,
                        "first_rv": self.rec.n + 1,
                    }
                ),
            )
        auth = headers.get("authorization", "")
        if auth and auth != f"Bearer {TOKEN}":
            return self.send(writer, 401, _status(401, "Unauthorized", "Unauthorized"))
        if method != "GET":
            return self.send(writer, 405, _status(405, "MethodNotAllowed", f"{method} is not supported"))
        doc = self.discovery(path, headers.get("accept", ""))
        if doc is not None:
            ctype = _AGGREGATED_TYPE if doc.get("kind") == "APIGroupDiscoveryList" else "application/json"
            return self.send(writer, 200, orjson.dumps(doc), ctype)
        parts = path.strip("/").split("/")
        namespace: str | None = None
        if parts[:3] == ["api", "v1", "pods"] and len(parts) == 3:
            pass
        elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            namespace = parts[3]
        elif parts == ["api", "v1", "namespaces"]:
            return self.send(writer, 200, self.namespace_list())
        else:
            return self.send(
                writer, 404, _status(404, "NotFound", "the server could not find the requested resource")
            )
        if query.get("watch") in ("1", "true"):
            await self.watch_pods(writer, namespace, query)
            return False
        await self.list_pods(writer, namespace, query)
        return True

    def discovery(self, path: str, accept: str) -> dict[str, Any] | None:
        aggregated = "as=APIGroupDiscoveryList" in accept
        if path == "/version":
            return {
                "major": "1",
                "minor": "36",
                "gitVersion": "v1.36.3",
                "platform": "linux/amd64",
                "goVersion": "go1.26",
                "compiler": "gc",
            }
        if path == "/api":
            if aggregated:
                return {
                    "kind": "APIGroupDiscoveryList",
                    "apiVersion": "apidiscovery.k8s.io/v2",
                    "metadata": {},
                    "items": [
                        {
                            "metadata": {"name": ""},
                            "versions": [
                                {
                                    "version": "v1",
                                    "freshness": "Current",
                                    "resources": [
                                        _aggregated(_POD_RESOURCE, "Namespaced"),
                                        _aggregated(_NS_RESOURCE, "Cluster"),
                                    ],
                                }
                            ],
                        }
                    ],
                }
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }
        if path == "/apis":
            if aggregated:
                return {
                    "kind": "APIGroupDiscoveryList",
                    "apiVersion": "apidiscovery.k8s.io/v2",
                    "metadata": {},
                    "items": [],
                }
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        if path == "/api/v1":
            return {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [_POD_RESOURCE, _NS_RESOURCE],
            }
        return None

    def namespace_list(self) -> bytes:
        items = [
            {
                "metadata": {"name": ns, "uid": f"ns-{ns}", "resourceVersion": "1"},
                "status": {"phase": "Active"},
            }
            for ns in self.rec.namespaces
        ]
        return orjson.dumps(
            {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rec.list_rv)},
                "items": items,
            }
        )

    def send(
        self, writer: asyncio.StreamWriter, code: int, body: bytes, ctype: str = "application/json"
    ) -> bool:
        reason = {
            200: "OK",
            401: "Unauthorized",
            404: "Not Found",
            405: "Method Not Allowed",
            410: "Gone",
        }.get(code, "Error")
        writer.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (code, reason.encode(), ctype.encode(), len(body), body)
        )
        return True

    async def list_pods(
        self, writer: asyncio.StreamWriter, namespace: str | None, query: dict[str, str]
    ) -> None:
        idx = self.rec.indices(namespace)
        limit = int(query.get("limit", "0") or 0)
        start = 0
        if query.get("continue"):
            start = int(orjson.loads(base64.urlsafe_b64decode(query["continue"]))["o"])
        stop = min(len(idx), start + limit) if limit > 0 else len(idx)
        meta: dict[str, Any] = {"resourceVersion": str(self.rec.list_rv)}
        if stop < len(idx):
            meta["continue"] = base64.urlsafe_b64encode(orjson.dumps({"o": stop})).decode()
            meta["remainingItemCount"] = len(idx) - stop
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        buf = bytearray(
            b'{"kind":"PodList","apiVersion":"v1","metadata":' + orjson.dumps(meta) + b',"items":['
        )
        for n, k in enumerate(range(start, stop)):
            if n:
                buf += b","
            buf += self.rec.item(idx[k])
            if len(buf) >= _BATCH:
                writer.write(_chunk(bytes(buf)))
                buf.clear()
                await writer.drain()
        buf += b"]}\n"
        writer.write(_chunk(bytes(buf)) + b"0\r\n\r\n")
        await writer.drain()

    async def watch_pods(
        self, writer: asyncio.StreamWriter, namespace: str | None, query: dict[str, str]
    ) -> None:
        rv_text = query.get("resourceVersion", "")
        from_rv = int(rv_text) if rv_text.isdigit() else 0
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        initial = query.get("sendInitialEvents") in ("1", "true") or from_rv == 0
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "1800") or 1800)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        last_rv = max(from_rv, self.rec.n)
        if initial:
            await self._write_all(writer, (self.rec.added_line(i) for i in self.rec.indices(namespace)))
            if query.get("sendInitialEvents") in ("1", "true"):
                writer.write(_chunk(self._bookmark(self.rec.n, initial_end=True)))
        await self._replay(writer, namespace, max(from_rv, self.rec.n))
        last_rv = max(last_rv, self.rec.n + self.rec.m)
        while time.monotonic() < deadline:
            if bookmarks:
                writer.write(_chunk(self._bookmark(last_rv)))
                await writer.drain()
            await asyncio.sleep(min(self.args.bookmark_interval, max(0.0, deadline - time.monotonic())))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _replay(self, writer: asyncio.StreamWriter, namespace: str | None, after_rv: int) -> None:
        rec = self.rec
        first = after_rv - rec.n  # events e with rv n+1+e > after_rv
        if first >= rec.m:
            return
        wanted = set(rec.indices(namespace)) if namespace is not None else None
        rate = self.args.watch_rate
        if not self.go.is_set():
            await writer.drain()
            await self.go.wait()
        t0 = time.monotonic()
        wall0 = time.time()
        if not rec.stream_started:
            rec.stream_started = wall0
        buf = bytearray()
        pending: list[int] = []
        for e in range(first, rec.m):
            if wanted is not None and e % rec.n not in wanted:
                continue
            if rate > 0:
                delay = t0 + (e - first) / rate - time.monotonic()
                if delay > 0:
                    if buf:
                        await self._flush(writer, buf, pending)
                    await asyncio.sleep(delay)
            buf += _chunk(rec.event_line(e))
            pending.append(e)
            if len(buf) >= _BATCH:
                await self._flush(writer, buf, pending)
        await self._flush(writer, buf, pending)
        if not rec.stream_done:
            rec.stream_done = time.time()

    async def _flush(self, writer: asyncio.StreamWriter, buf: bytearray, pending: list[int]) -> None:
        if buf:
            writer.write(bytes(buf))
            buf.clear()
        await writer.drain()
        now = time.time()
        for e in pending:
            if not self.rec.sent_at[e]:
                self.rec.sent_at[e] = now
        pending.clear()

    async def _write_all(self, writer: asyncio.StreamWriter, lines: Iterator[bytes]) -> None:
        buf = bytearray()
        for line in lines:
            buf += _chunk(line)
            if len(buf) >= _BATCH:
                writer.write(bytes(buf))
                buf.clear()
                await writer.drain()
        writer.write(bytes(buf))
        await writer.drain()

    def _bookmark(self, rv: int, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return (
            orjson.dumps(
                {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": meta}}
            )
            + b"\n"
        )


def _aggregated(r: dict[str, Any], scope: str) -> dict[str, Any]:
    return {
        "resource": r["name"],
        "responseKind": {"group": "", "version": "v1", "kind": r["kind"]},
        "scope": scope,
        "singularResource": r["singularName"],
        "verbs": r["verbs"],
        "shortNames": r.get("shortNames", []),
    }


def write_kubeconfig(path: Path, port: int, ca: Path, namespace: str) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: replay\n  cluster:\n    server: https://127.0.0.1:{port}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: bench\n  user:\n    token: {TOKEN}\n"
        "contexts:\n- name: replay\n  context:\n    cluster: replay\n    user: bench\n"
        f"    namespace: {namespace}\n"
        "current-context: replay\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dir", type=Path, required=True, help="where certificates, kubeconfig and the log go")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--namespaces", type=int, default=10)
    p.add_argument("--watch-events", type=int, default=0)
    p.add_argument("--watch-rate", type=float, default=0.0, help="events/s; 0 = as fast as the client reads")
    p.add_argument("--bookmark-interval", type=float, default=5.0)
    p.add_argument("--hold-watch", action="store_true",
                   help="replay the watch events only after GET /_bench/go (steady-state lag)")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    ca, crt, key = make_certs(args.dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    rec = Recording(args.objects, args.namespaces, args.watch_events)
    server = Server(rec, args, args.dir / "requests.ndjson")
    srv = await asyncio.start_server(
        server.handle, "127.0.0.1", args.port, ssl=ctx, limit=1 << 20, backlog=512
    )
    port = srv.sockets[0].getsockname()[1]
    write_kubeconfig(args.dir / "kubeconfig", port, ca, rec.namespaces[0])
    print(f"READY {port}", flush=True)
    async with srv:
        await srv.serve_forever()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
