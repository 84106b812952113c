"""Lease: ``coordination.k8s.io/v1`` Lease objects, read and written with compare-and-swap.

Where it sits: under ``coordinator``, which decides what to write; this module only speaks
the Lease API through fastobs's own HTTP session (``kube.KubeClient``), with a deadline on
every request. In: Lease names, records to write, deadlines. Out: :class:`Lease` records as
the server returned them, or a :class:`LeaseError` saying what went wrong.

Invariants: every write of an existing Lease is a PUT carrying the ``resourceVersion`` it
was read at, so the server refuses it (409, :class:`Conflict`) when anyone wrote in between;
there is no unconditional write. Every request ends by its deadline, whatever the network
does (``aiohttp``'s total timeout), so a hung connection cannot keep a replica believing it
renewed. Times written into Leases are for people only: decisions are taken on this
process's own monotonic clock (see ``coordinator``).
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from fastobs.kube import KubeClient, Resource, status_message

LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)

GROUP_LABEL = "fastobs.io/lease-group"
ROLE_LABEL = "fastobs.io/lease-role"
WATERMARK = "fastobs.io/done-rv"
"""On a member Lease: ``b=rv,...`` per bucket it holds; on a bucket Lease: the watermark it
was acquired or released with."""
CONFIG = "fastobs.io/config"
RELEASED_BY = "fastobs.io/released-by"
PREVIOUS_HOLDER = "fastobs.io/previous-holder"
PREVIOUS_WATERMARKS = "fastobs.io/previous-done-rv"
"""On a member Lease: the holder it had before (a crashed incarnation of the same identity, or
this one at a graceful exit) and that holder's last watermarks, for the buckets whose Leases
may still name it (taken over from a crash, or a release that did not get through)."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_GROUP_NAME = 40
"""Leaves room for the suffixes of member and bucket Lease names, and fits a label value."""


class LeaseError(Exception):
    """A Lease request failed; ``kind`` is conflict, not_found, forbidden, timeout, connection,
    server or other."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Conflict(LeaseError):
    """409: the Lease changed since it was read (or already exists, for a create)."""


class NotFound(LeaseError):
    """404: no such Lease."""


@dataclass
class Lease:
    """One Lease as fastobs uses it (other fields of the object are kept as they were)."""

    name: str
    resource_version: str = ""
    holder: str = ""
    duration: int = 0
    """``spec.leaseDurationSeconds``."""
    transitions: int = 0
    """``spec.leaseTransitions``: the bucket's epoch, a fencing token for commands."""
    acquire_time: str = ""
    renew_time: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The object as read, so a write keeps fields fastobs does not know."""

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Lease:
        md = doc.get("metadata") or {}
        spec = doc.get("spec") or {}
        return cls(
            name=str(md.get("name") or ""),
            resource_version=str(md.get("resourceVersion") or ""),
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            labels=dict(md.get("labels") or {}),
            annotations=dict(md.get("annotations") or {}),
            raw=doc,
        )

    def to_json(self) -> dict[str, Any]:
        """The object to PUT or POST: the raw object with fastobs's fields written over it."""
        doc = dict(self.raw)
        doc["apiVersion"] = "coordination.k8s.io/v1"
        doc["kind"] = "Lease"
        md = dict(doc.get("metadata") or {})
        md["name"] = self.name
        md["labels"] = dict(self.labels)
        md["annotations"] = dict(self.annotations)
        if self.resource_version:
            md["resourceVersion"] = self.resource_version
        else:
            md.pop("resourceVersion", None)
        doc["metadata"] = md
        spec = dict(doc.get("spec") or {})
        spec["holderIdentity"] = self.holder
        spec["leaseDurationSeconds"] = self.duration
        spec["leaseTransitions"] = self.transitions
        for name, value in (("acquireTime", self.acquire_time), ("renewTime", self.renew_time)):
            if value:
                spec[name] = value
            else:
                spec.pop(name, None)
        doc["spec"] = spec
        return doc

    @property
    def released(self) -> bool:
        return not self.holder


def micro_time(wall: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC) for ``wall`` seconds since the epoch."""
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_watermarks(text: str) -> dict[int, int]:
    """``"3=1234,7=1250"`` → ``{3: 1234, 7: 1250}``; malformed entries are skipped."""
    out: dict[int, int] = {}
    for part in text.split(","):
        bucket, sep, rv = part.partition("=")
        if sep and bucket.strip().isdigit() and rv.strip().isdigit():
            out[int(bucket)] = int(rv)
    return out


def format_watermarks(marks: dict[int, int]) -> str:
    return ",".join(f"{b}={rv}" for b, rv in sorted(marks.items()))


def valid_group_name(name: str) -> bool:
    return len(name) <= MAX_GROUP_NAME and _DNS_LABEL.fullmatch(name) is not None


def member_lease_name(group: str, identity: str) -> str:
    """``<group>-m-<identity>``, the identity made a valid name (lower case, ``-`` for anything
    else, a hash suffix when that changed it or it is too long)."""
    clean = re.sub(r"[^a-z0-9-]+", "-", identity.lower()).strip("-")
    if clean != identity or len(clean) > 60:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
        clean = f"{clean[:50].strip('-')}-{digest}".strip("-")
    return f"{group}-m-{clean}"


def bucket_lease_name(group: str, bucket: int, buckets: int) -> str:
    """``<group>`` with one bucket (plain leader election); else ``<group>-b<ii>-of-<BB>``."""
    if buckets == 1:
        return group
    width = len(str(buckets))
    return f"{group}-b{bucket:0{width}d}-of-{buckets}"


class LeaseClient:
    """Get, list, create, update and delete Leases in one namespace."""

    def __init__(self, client: KubeClient, namespace: str) -> None:
        self._client = client
        self.namespace = namespace
        self._path = LEASES.collection_path(namespace)

    async def get(self, name: str, deadline: float) -> Lease | None:
        """The Lease as of now (a consistent read from etcd), or None when it does not exist."""
        try:
            doc = await self._call("GET", f"{self._path}/{name}", deadline)
        except NotFound:
            return None
        return Lease.from_json(doc)

    async def list(self, label_selector: str, deadline: float) -> list[Lease]:
        doc = await self._call("GET", self._path, deadline, params={"labelSelector": label_selector})
        return [Lease.from_json(item) for item in doc.get("items") or []]

    async def create(self, lease: Lease, deadline: float) -> Lease:
        """POST a new Lease; :class:`Conflict` when one of that name exists."""
        lease.resource_version = ""
        doc = await self._call("POST", self._path, deadline, body=lease.to_json())
        return Lease.from_json(doc)

    async def update(self, lease: Lease, deadline: float) -> Lease:
        """PUT ``lease`` conditional on its ``resource_version``; :class:`Conflict` when it changed."""
        if not lease.resource_version:
            raise ValueError("an update needs the resourceVersion it was read at")
        doc = await self._call("PUT", f"{self._path}/{lease.name}", deadline, body=lease.to_json())
        return Lease.from_json(doc)

    async def delete(self, lease: Lease, deadline: float) -> None:
        """DELETE ``lease`` if it is still at its ``resource_version`` (a precondition)."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions",
                "preconditions": {"resourceVersion": lease.resource_version}}
        await self._call("DELETE", f"{self._path}/{lease.name}", deadline, body=body)

    async def _call(self, method: str, path: str, deadline: float, *, params: dict[str, str] | None = None,
                    body: dict[str, Any] | None = None) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=max(deadline, 0.05))
        data = orjson.dumps(body) if body is not None else None
        try:
            resp = await self._client.request(method, path, params, timeout=timeout, body=data)
            async with resp:
                raw = await resp.read()
        except TimeoutError:
            raise LeaseError("timeout", f"{method} {path}: no answer within {deadline:.2f}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise LeaseError("connection", f"{method} {path}: {text}") from None
        if resp.status in (200, 201):
            try:
                doc: dict[str, Any] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise LeaseError("other", f"{method} {path}: invalid JSON in the answer") from None
            return doc
        message = f"{method} {path}: {status_message(resp.status, raw)}"
        if resp.status == 409:
            raise Conflict("conflict", message)
        if resp.status == 404:
            raise NotFound("not_found", message)
        if resp.status == 403:
            raise LeaseError("forbidden", message)
        raise LeaseError("server" if resp.status >= 500 or resp.status == 429 else "other", message)
