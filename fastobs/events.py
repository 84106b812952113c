"""Events: the values that flow from ``source`` through ``sharder`` to the workers.

Where it sits: ``source`` builds an :class:`Event` per list item and per watch event;
``tracker``/``queue`` keep them (raw object bytes only while pending); ``protocol``
encodes them into RUN frames for a worker.

Invariant: an :class:`Event` never holds a parsed object, only the raw JSON bytes of
the object as the server sent it (``obj``), so the parent never keeps Python dicts of
watched objects alive (see docs/architecture.md, "Memory model").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NewType

ObjectKey = NewType("ObjectKey", str)
"""``namespace/name`` for namespaced resources, ``name`` for cluster-scoped ones."""


class EventType(StrEnum):
    """Event types as oc observe names them (headers, --type-env-var, metrics)."""

    SYNC = "Sync"
    ADDED = "Added"
    UPDATED = "Updated"
    DELETED = "Deleted"


@dataclass(slots=True)
class Event:
    """One change to one object, as received."""

    type: EventType
    key: ObjectKey
    namespace: str
    """Empty for cluster-scoped resources."""
    name: str
    uid: str
    """metadata.uid; empty for deletes synthesized from --names keys."""
    rv: str
    """metadata.resourceVersion; empty for synthesized deletes (oc prints it empty)."""
    obj: bytes | None
    """Raw JSON of the object (with apiVersion and kind); None for synthesized deletes
    that have no cached state."""
    received: float
    """time.monotonic() when the parent received it; the lag metrics start here. An event
    that replaces a pending one (coalescing) takes over that one's receipt time, so the
    lag counts from the first change still waiting for a command."""
    dispatched: float = 0.0
    """time.monotonic() when it was last handed to a worker (0: not yet)."""
    backlog: bool = False
    """True for items of a list, relist or resync; live watch events go first."""
    cached_arg: str | None = None
    """For deletes synthesized from the tracker: the template output cached when the
    object was last handled (oc passes it instead of rendering). None = render from
    ``obj`` (or no template argument at all when ``obj`` is None)."""


def object_key(namespace: str, name: str) -> ObjectKey:
    """The key oc observe uses: ``ns/name``, or ``name`` when there is no namespace."""
    return ObjectKey(f"{namespace}/{name}" if namespace else name)
