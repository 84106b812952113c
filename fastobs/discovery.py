"""Discovery: the apiserver's discovery documents → the served resource types, and the
resource argument (``po``, ``deployments.apps``, a CRD) → one :class:`Resource`.

Where it sits: under ``kube`` (which fetches the documents over its session) and
``prefetch`` (which fetches them before aiohttp is imported); both resolve through
:func:`match`, so a resource argument means the same thing on either path. In: parsed
discovery documents (aggregated ``APIGroupDiscoveryList`` or legacy ``APIResourceList``).
Out: :class:`Served` entries, and the :class:`Resource` kubectl would pick.

Invariant: standard library only, nothing here does I/O: it is imported before the first
request, so its import cost is part of every start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

AGGREGATED_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
)
"""The Accept header of ``/api`` and ``/apis``: the aggregated form (one document per
prefix), else the legacy one."""


@dataclass(frozen=True)
class Resource:
    """One served resource type, resolved through discovery."""

    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool

    def collection_path(self, namespace: str | None) -> str:
        """The list/watch URL path; ``namespace`` None (or a cluster-scoped resource) = all."""
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace and self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.resource}"
        return f"{base}/{self.resource}"

    def gvr_string(self) -> str:
        """Go's ``schema.GroupVersionResource.String()``, as oc prints it in warnings."""
        return f"{self.group}/{self.version}, Resource={self.resource}"


@dataclass(frozen=True)
class Served:
    """A discovery entry: a resource with the names it answers to."""

    resource: Resource
    singular: str
    short_names: tuple[str, ...]


def from_aggregated(doc: dict[str, Any]) -> Iterator[Served]:
    """Entries of an APIGroupDiscoveryList, groups in server priority, versions preferred first."""
    for item in doc.get("items", []):
        group = item.get("metadata", {}).get("name", "")
        for ver in item.get("versions", []):
            for r in ver.get("resources", []):
                yield Served(
                    Resource(group, ver["version"], r["resource"],
                             r.get("responseKind", {}).get("kind", ""), r.get("scope") == "Namespaced"),
                    r.get("singularResource", ""), tuple(r.get("shortNames", ())),
                )


def from_resource_list(group: str, version: str, resources: Iterable[dict[str, Any]]) -> Iterator[Served]:
    for r in resources:
        if "/" in r["name"]:
            continue  # subresource (pods/log)
        yield Served(Resource(group, version, r["name"], r.get("kind", ""), bool(r.get("namespaced"))),
                      r.get("singularName", ""), tuple(r.get("shortNames", ())))


def match(served: list[Served], name: str, group: str) -> Resource | None:
    """kubectl's order: exact plural/singular/kind anywhere first, then short names;
    within each, the core group first, then groups in discovery order, preferred version first."""
    candidates = [s for s in served if not group or s.resource.group == group]
    candidates.sort(key=lambda s: s.resource.group != "")  # stable: keeps discovery order otherwise
    for s in candidates:
        if name in (s.resource.resource, s.singular, s.resource.kind.lower()):
            return s.resource
    for s in candidates:
        if name in s.short_names:
            return s.resource
    return None
