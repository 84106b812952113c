"""Loader: creates and patches objects on a real kube-apiserver.

Where it sits: ``run``'s ``apiserver`` scenario uses it to fill a namespace with
realistic Pods (created without a scheduler, they stay Pending) or ConfigMaps, and to
patch them while the systems under test watch. In: a kubeconfig with a bearer token
and a CA file (what ``scripts/dev-cluster up`` writes). Out: for every write, the
resourceVersion the server returned and the wall-clock time the response arrived,
which is when the change became visible to watchers (at the latest).

Invariant: at most ``concurrency`` requests are in flight; a failed write raises
with the server's message instead of being counted.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pods import pod_dict  # noqa: E402


class Loader:
    def __init__(self, kubeconfig: Path, concurrency: int = 16) -> None:
        doc = yaml.safe_load(kubeconfig.read_text())
        ctx_name = doc["current-context"]
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
        self.server = cluster["server"].rstrip("/")
        self.ssl = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.headers = {"Authorization": f"Bearer {user['token']}", "Content-Type": "application/json"}
        self.limit = asyncio.Semaphore(concurrency)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Loader:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session:
            await self.session.close()

    async def _send(
        self, method: str, path: str, body: bytes, ctype: str = "application/json"
    ) -> dict[str, Any]:
        assert self.session is not None
        async with self.limit:
            headers = dict(self.headers, **{"Content-Type": ctype})
            async with self.session.request(method, self.server + path, data=body, headers=headers) as resp:
                data = await resp.read()
                if resp.status >= 300 and not (resp.status == 409 and method == "POST"):
                    raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data[:200]!r}")
                doc: dict[str, Any] = orjson.loads(data)
                return doc

    async def namespace(self, name: str) -> None:
        body = orjson.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        await self._send("POST", "/api/v1/namespaces", body)

    async def delete_namespace(self, name: str) -> None:
        assert self.session is not None
        async with self.session.delete(f"{self.server}/api/v1/namespaces/{name}", headers=self.headers):
            pass

    async def create_pods(self, namespace: str, count: int) -> list[tuple[int, float]]:
        """Creates ``count`` Pods; returns (resourceVersion, response time) per Pod."""
        base = pod_dict(with_status=False)
        meta = base["metadata"]
        for k in (
            "managedFields",
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "ownerReferences",
            "generateName",
        ):
            meta.pop(k, None)
        base["spec"].pop("nodeName", None)
        text = orjson.dumps(base).decode().replace("%(HASH)s", "5d8f7c9b6a").replace("%(NS)s", namespace)

        async def one(i: int) -> tuple[int, float]:
            body = text.replace("%(NAME)s", f"web-{i:08d}").encode()
            doc = await self._send("POST", f"/api/v1/namespaces/{namespace}/pods", body)
            return int(doc["metadata"]["resourceVersion"]), time.time()

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def create_configmaps(self, namespace: str, count: int) -> list[tuple[int, float]]:
        async def one(i: int) -> tuple[int, float]:
            body = orjson.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"cm-{i:08d}", "labels": {"app": "bench"}},
                    "data": {"key": "x" * 200, "index": str(i)},
                }
            )
            doc = await self._send("POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
            return int(doc["metadata"]["resourceVersion"]), time.time()

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def patch_pods(
        self, namespace: str, count: int, rate: float = 0.0, round_: int = 1
    ) -> list[tuple[int, float]]:
        """Patches a label on Pods 0..count-1 (at ``rate`` patches/s when > 0)."""
        t0 = time.monotonic()

        async def one(i: int) -> tuple[int, float]:
            if rate > 0:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            body = orjson.dumps({"metadata": {"labels": {"round": str(round_)}}})
            doc = await self._send(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/pods/web-{i:08d}",
                body,
                "application/merge-patch+json",
            )
            return int(doc["metadata"]["resourceVersion"]), time.time()

        return list(await asyncio.gather(*(one(i) for i in range(count))))
