"""Buckets: which of the group's B buckets an object belongs to, and the server-side filter for a set.

Where it sits: beside the parent's pipeline, used by ``ownership`` (which bucket an event's
key falls in, before the ``tracker``) and by ``source`` (the ``shardSelector`` sent with list
and watch when the server filters). Pure functions; no I/O.

In: an object's shard key value (``namespace/name``, its uid or its namespace) and the bucket
count B. Out: a bucket index in ``[0, B)``; the hash range of a bucket; a ``shardSelector``
expression for a set of buckets.

The scheme is the apiserver's sharded list and watch (KEP-5866, feature gate
``ShardedListAndWatch``): the 64-bit FNV-1a hash of the field's UTF-8 bytes (Go's
``hash/fnv``), cut into B contiguous ranges, bucket i owning
``[ceil(i·2^64/B), ceil((i+1)·2^64/B))``. ``bucket_of`` computes ``(h·B) >> 64``, which lands
every hash in exactly that range, so the filter can move into the server without remapping
anything. Range bounds are written as the server's parser demands: ``0x`` and 16 lower-case
hex digits, the end of the space as ``0x10000000000000000``.

Invariant: for every hash h and every B, h lies in the range of ``bucket_of(h, B)`` and in no
other bucket's range (tested exhaustively at the edges and against the apiserver's own code).

The ``name`` key, which the server cannot filter on, is mixed before it is cut into ranges
(:func:`mix64`): FNV-1a's high bits hardly depend on the last bytes of its input, so names that
differ only in a suffix (``web-0`` … ``web-499``, one namespace) would fall into two or three of
16 buckets, whatever the number of replicas. ``uid`` and ``namespace`` keep the server's exact
ranges (a uid is random; namespaces with a common prefix share that weakness on the server too).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

ShardKey = Literal["name", "uid", "namespace"]
SHARD_KEYS: tuple[ShardKey, ...] = ("name", "uid", "namespace")
SPACE = 1 << 64
MAX_BUCKETS = 256

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = SPACE - 1

SERVER_FIELDS: dict[ShardKey, str] = {"uid": "object.metadata.uid", "namespace": "object.metadata.namespace"}
"""The field path the server hashes for each shard key it supports (``name`` it does not)."""


def fnv1a64(data: bytes) -> int:
    """Go's ``hash/fnv`` New64a over ``data``."""
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & _MASK
    return h


def mix64(h: int) -> int:
    """splitmix64's finalizer: a bijection on 64 bits in which every input bit moves the high
    bits, so ranges of its output spread inputs that differ only in their last bytes."""
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)


def bucket_of(h: int, buckets: int) -> int:
    """The bucket whose hash range holds ``h``."""
    return (h * buckets) >> 64


def bucket_range(bucket: int, buckets: int) -> tuple[int, int]:
    """``[start, end)`` of ``bucket``'s hashes: the h with ``bucket_of(h, buckets) == bucket``."""
    return -(-bucket * SPACE // buckets), -(-(bucket + 1) * SPACE // buckets)


def hex_bound(value: int) -> str:
    """A range bound in the form the apiserver's parser accepts."""
    return "0x10000000000000000" if value == SPACE else f"0x{value:016x}"


def merged_ranges(owned: Iterable[int], buckets: int) -> list[tuple[int, int]]:
    """The hash ranges of ``owned`` buckets, adjacent ones merged, in order."""
    out: list[tuple[int, int]] = []
    for b in sorted(set(owned)):
        start, end = bucket_range(b, buckets)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


NOTHING = (0, 1)
"""A range that holds a single hash value: the closest a shard selector comes to matching
nothing (the server refuses an empty one), for a replica that owns no bucket."""


def shard_selector(owned: Iterable[int], buckets: int, key: ShardKey) -> str:
    """The ``shardSelector`` of the ``owned`` buckets: ``shardRange(...) || ...``.

    A replica that owns no bucket gets :data:`NOTHING` (its client-side filter drops the odd
    object that still matches). Raises ValueError for the ``name`` key, which the server
    cannot hash.
    """
    field = SERVER_FIELDS.get(key)
    if field is None:
        raise ValueError(f"the server cannot filter on shard key {key!r}")
    ranges = merged_ranges(owned, buckets) or [NOTHING]
    return " || ".join(f"shardRange({field}, '{hex_bound(s)}', '{hex_bound(e)}')" for s, e in ranges)


def key_value(key: ShardKey, object_key: str, namespace: str, uid: str) -> str:
    """What is hashed for one object: ``namespace/name`` (the object key), the uid or the namespace."""
    if key == "name":
        return object_key
    if key == "uid":
        return uid
    return namespace


class Bucketer:
    """Maps objects to buckets for one group (B and the shard key fixed at start-up)."""

    __slots__ = ("buckets", "key")

    def __init__(self, buckets: int, key: ShardKey) -> None:
        if not 1 <= buckets <= MAX_BUCKETS:
            raise ValueError(f"buckets must be 1..{MAX_BUCKETS}, got {buckets}")
        self.buckets = buckets
        self.key = key

    def bucket(self, object_key: str, namespace: str, uid: str) -> int:
        if self.buckets == 1:
            return 0
        value = key_value(self.key, object_key, namespace, uid)
        h = fnv1a64(value.encode("utf-8", "surrogateescape"))
        return bucket_of(mix64(h) if self.key == "name" else h, self.buckets)
