"""Membership: the balanced, sticky assignment of the group's buckets to its live members.

Where it sits: called by ``coordinator`` every time its view of the group changes. Pure
functions; no I/O, no clock.

In: the live members (the holder identities of member Leases not expired in this replica's
view), the bucket count B, and who holds each bucket now (a holder that is not live counts as
nobody). Out: the target owner of every bucket.

Every replica computes the same function of the same view, so converged views agree on
every bucket's target; a move still happens only through a compare-and-swap on the bucket's
Lease, so views that disagree for a moment cost a delay, never two owners.

The rule:

1. quotas: with N live members, ``B mod N`` of them get ``ceil(B/N)`` buckets and the rest
   ``floor(B/N)``; the larger quotas go to the members that hold the most now, counting
   holdings above ``ceil(B/N)`` as ``ceil(B/N)`` (ties: the identity's order), so a balanced
   group never moves a bucket to fix who has the extra one, and members shedding their surplus
   at different paces do not swap the extra one back and forth;
2. sticky: a member keeps what it holds, up to its quota; it gives up its surplus buckets
   with the lowest rendezvous score (FNV-1a of ``bucket/identity``) first;
3. free buckets (unheld, held by a dead member, or surplus) go, in bucket order, to the
   member below its quota with the highest rendezvous score for that bucket.

Properties (property-tested in tests/test_membership.py): deterministic; every bucket has a
target when there is a live member; quotas differ by at most one; a member keeps every bucket
it holds up to its quota, so the buckets that change owner are exactly
``Σ max(0, held − quota)`` plus the buckets of members that left, the fewest possible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from fastobs.buckets import fnv1a64


@lru_cache(maxsize=1 << 16)
def score(bucket: int, member: str) -> int:
    """Rendezvous (highest-random-weight) score of ``member`` for ``bucket``."""
    return fnv1a64(f"{bucket}/{member}".encode())


def quotas(members: Sequence[str], held: Mapping[int, str]) -> dict[str, int]:
    """How many buckets each live member should own (see the module docstring, rule 1)."""
    live = sorted(set(members))
    if not live:
        return {}
    base, extra = divmod(len(held), len(live))
    counts = {m: 0 for m in live}
    for holder in held.values():
        if holder in counts:
            counts[holder] += 1
    # Holdings above the larger quota count as the larger quota: while members shed their
    # surplus (each at its own pace), who gets an extra bucket must not flip with who has shed
    # more so far, or a member's drain already under way would have been one too many.
    ceiling = base + (1 if extra else 0)
    ranked = sorted(live, key=lambda m: (-min(counts[m], ceiling), m))
    return {m: base + (1 if i < extra else 0) for i, m in enumerate(ranked)}


def assign(members: Sequence[str], held: Mapping[int, str]) -> dict[int, str]:
    """The target owner of every bucket.

    ``held`` maps *every* bucket index to its holder, ``""`` when nobody holds it; a holder
    not in ``members`` is treated as nobody. Returns an empty mapping when no member is live.
    """
    quota = quotas(members, held)
    if not quota:
        return {}
    target: dict[int, str] = {}
    keeps: dict[str, list[int]] = {m: [] for m in quota}
    for bucket, holder in held.items():
        if holder in keeps:
            keeps[holder].append(bucket)
    for member, buckets in keeps.items():
        # Keep the best-scored buckets up to the quota; the rest are the surplus given up.
        buckets.sort(key=lambda b: score(b, member), reverse=True)
        for bucket in buckets[: quota[member]]:
            target[bucket] = member
    room = {m: quota[m] - min(quota[m], len(keeps[m])) for m in quota}
    for bucket in sorted(held):
        if bucket in target:
            continue
        open_members = [m for m, r in room.items() if r > 0]
        best = max(open_members, key=lambda m: (score(bucket, m), m))
        target[bucket] = best
        room[best] -= 1
    return target


def moves(before: Mapping[int, str], after: Mapping[int, str]) -> int:
    """Buckets whose owner differs between two assignments (a bucket unheld before counts)."""
    return sum(1 for b, owner in after.items() if before.get(b, "") != owner)
