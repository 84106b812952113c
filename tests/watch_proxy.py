"""A proxy between fastobs and the API server that breaks watches on request.

Where it sits: in tests only, between a fastobs under test and the real kube-apiserver.
Plain HTTP in front (fastobs gets a kubeconfig pointing at it), the server's HTTPS behind.
A watch expiry, a silent-but-open watch and a cut stream cannot be forced on demand from
a shared API server; this proxy forces them for one fastobs without touching the others.
"""

from __future__ import annotations

import http.client
import http.server
import json
import queue
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class WatchProxy:
    """Plain HTTP in front of the API server's HTTPS, able to break watches on request.

    Non-watch requests are forwarded whole. A watch response is forwarded line by line
    (one chunk per event), and the test can ``withhold()`` events (read from the server,
    never forwarded: lost as a dropped connection would lose them), ``expire()`` every
    open watch with the in-stream ``ERROR`` 410 the server sends for a compacted
    resourceVersion, ``cut()`` open watches (clean end of stream), and answer the next
    watch request with HTTP 410.
    """

    def __init__(self, server: str, ca_file: Path) -> None:
        url = urlsplit(server)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 443)
        self.ssl = ssl.create_default_context(cafile=str(ca_file))
        self.lock = threading.Lock()
        self.generation = 0
        self.ending = b""
        self.withholding = False
        self.withheld: list[bytes] = []
        self.refuse_next_watch = False
        self.watch_requests = 0
        self.refused = 0
        self.open_watches: dict[int, float] = {}
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> WatchProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, directory: Path, token: str) -> Path:
        """A kubeconfig that reaches the API server through this proxy."""
        path = directory / "proxy.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "proxy", "user": {"token": token}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
        }))
        return path

    def withhold(self) -> None:
        with self.lock:
            self.withholding = True

    def expire(self) -> None:
        """End every open watch with an in-stream ERROR 410; later watches pass normally."""
        self._end(b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},'
                  b'"status":"Failure","message":"too old resource version: 1 (2)",'
                  b'"reason":"Expired","code":410}}\n')

    def cut(self) -> None:
        self._end(b"")

    def _end(self, line: bytes) -> None:
        with self.lock:
            self.ending = line
            self.generation += 1
            self.withholding = False

    def oldest_watch_age(self) -> float:
        with self.lock:
            return time.monotonic() - min(self.open_watches.values()) if self.open_watches else 0.0


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: WatchProxy
    _HOP = {"host", "connection", "keep-alive", "accept-encoding", "transfer-encoding", "content-length"}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        p = self.proxy
        # A streamed initial list (sendInitialEvents) is a list, not a watch: passed through.
        initial = "sendInitialEvents=true" in self.path
        watch = ("watch=1" in self.path or "watch=true" in self.path) and not initial
        if watch:
            with p.lock:
                p.watch_requests += 1
                refuse, p.refuse_next_watch = p.refuse_next_watch, False
            if refuse:
                p.refused += 1
                self._send_whole(410, "application/json", json.dumps({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "too old resource version: 1 (2)", "reason": "Expired", "code": 410,
                }).encode())
                return
        conn = http.client.HTTPSConnection(*p.upstream, context=p.ssl, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in self._HOP}
            conn.request("GET", self.path, headers=headers)
            resp = conn.getresponse()
            if (watch or initial) and resp.status == 200:
                self._stream(conn, resp, tamper=watch)
            else:
                self._send_whole(resp.status, resp.getheader("Content-Type") or "", resp.read())
        finally:
            conn.close()

    def _send_whole(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, conn: http.client.HTTPSConnection, resp: http.client.HTTPResponse,
                tamper: bool = True) -> None:
        p = self.proxy
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", resp.getheader("Content-Type") or "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        lines: queue.Queue[bytes | None] = queue.Queue()

        def read() -> None:
            try:
                for line in iter(resp.readline, b""):
                    lines.put(line)
            except Exception:  # noqa: BLE001 -- any end of the upstream stream ends the watch
                pass
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        me = threading.get_ident()
        with p.lock:
            gen = p.generation
            if tamper:
                p.open_watches[me] = time.monotonic()
        try:
            while True:
                try:
                    line = lines.get(timeout=0.02)
                except queue.Empty:
                    line = b""
                with p.lock:
                    if line is None:
                        break
                    if tamper and p.generation != gen:
                        self._chunk(p.ending)
                        break
                    if tamper and line and p.withholding:
                        p.withheld.append(line)
                        continue
                if line:
                    self._chunk(line)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass  # fastobs went away
        finally:
            with p.lock:
                p.open_watches.pop(me, None)
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)  # unblocks the reader thread
                except OSError:
                    pass

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
