"""The group protocol over random schedules: fastobs's own coordinator, ownership, watermark,
tracker, key queue and worker fence, driven in virtual time by tests/ha_sim.py with several
replicas, an in-memory Lease store with compare-and-swap, and random crashes, pauses longer
than the lease, partitions, slow requests, watch lag, joins and leaves.

Each schedule checks, at every command start and every 50 ms of virtual time: no two replicas
may dispatch (or run a command) in one bucket at once; no watermark passes an event accepted
and not run; every watermark written into a Lease is backed by what ran. At its end (faults
healed, the group settled): every bucket has exactly one live owner, balanced; every object's
final state ran. ``FASTOBS_SIM_SCHEDULES`` sets how many random schedules the sweep runs.

The seeds named below are schedules that once failed; each says what was wrong.
"""

from __future__ import annotations

import os
import time

import ha_sim
import pytest

SHORT = ha_sim.Params(duration=15.0, settle=20.0, keys=12, faults=3)
"""A short schedule: 15 s of load with three faults; about 0.2 s of real time."""

DRAINS = ha_sim.Params(duration=15.0, settle=25.0, keys=12, faults=5, drain_timeout=0.3, command=(0.05, 1.5),
                       fault_kinds=("join", "leave", "join", "leave", "partition", "pause", "crash", "slow"))
"""Drains that run out of time: long commands, a short --drain-timeout, joins and leaves."""

SAFETY = ("exclusive", "live")
"""Never two replicas in a bucket at once; every bucket owned, balanced, once the faults end."""
PROGRESS = ("watermark", "complete")
"""Watermarks backed by what ran; every final state run."""


def _sweep(seeds: range, params: ha_sim.Params) -> tuple[dict[str, int], list[str], ha_sim.Figures]:
    kinds: dict[str, int] = {}
    failures: list[str] = []
    total = ha_sim.Figures()
    for seed in seeds:
        world = ha_sim.run(seed, params)
        for kind, n in world.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
        if world.violations:
            failures.append(f"seed {seed}: {world.violations[0]} (+{len(world.violations) - 1} more)")
        f = world.figures
        total.schedules += 1
        total.commands += f.commands
        total.fenced_commands += f.fenced_commands
        total.takeovers += f.takeovers
        total.fences += f.fences
        total.resumes += f.resumes
        total.releases += f.releases
        total.changes += f.changes
        total.unsettled += f.unsettled
        total.virtual_seconds += f.virtual_seconds
        for kind, n in f.faults.items():
            total.faults[kind] = total.faults.get(kind, 0) + n
    return kinds, failures, total


def _report(what: str, seconds: float, total: ha_sim.Figures, kinds: dict[str, int]) -> None:
    print(f"{what}: {total.schedules} schedules, {total.virtual_seconds:.0f} virtual s in {seconds:.1f} s; "
          f"faults {dict(sorted(total.faults.items()))}; {total.changes} object changes, "
          f"{total.commands} commands ({total.fenced_commands} stopped by fencing), "
          f"{total.takeovers} takeovers, "
          f"{total.fences} fencings, {total.resumes} resumptions, {total.releases} releases, "
          f"{total.unsettled} unsettled; violations {kinds or 0}")


@pytest.fixture(scope="module")
def sweep() -> tuple[dict[str, int], list[str], ha_sim.Figures]:
    count = int(os.environ.get("FASTOBS_SIM_SCHEDULES", "120"))
    began = time.monotonic()
    kinds, failures, total = _sweep(range(1000, 1000 + count), SHORT)
    _report("random schedules", time.monotonic() - began, total, kinds)
    return kinds, failures, total


def test_random_schedules_never_overlap_and_always_converge(
        sweep: tuple[dict[str, int], list[str], ha_sim.Figures]) -> None:
    kinds, failures, total = sweep
    assert total.takeovers and total.fences and total.resumes, "the faults must cause takeovers and fencing"
    assert not any(kinds.get(k) for k in SAFETY), "\n".join(failures[:10])


def test_random_schedules_lose_nothing(sweep: tuple[dict[str, int], list[str], ha_sim.Figures]) -> None:
    kinds, failures, _ = sweep
    assert not any(kinds.get(k) for k in PROGRESS), "\n".join(failures[:10])


def test_long_schedules_with_more_replicas() -> None:
    params = ha_sim.Params(replicas=4, buckets=16, duration=40.0, faults=6)
    began = time.monotonic()
    kinds, failures, total = _sweep(range(1, 11), params)
    _report("long schedules", time.monotonic() - began, total, kinds)
    assert not any(kinds.get(k) for k in SAFETY), "\n".join(failures[:10])


def test_a_draining_bucket_takes_no_delete_made_up_by_a_relist() -> None:
    """Seed 152: a relist ran while a bucket was being drained; its items of that bucket were
    not admitted, so the tracker took the bucket's objects for deleted and made up a Deleted
    for each; one was accepted and ran after the drain had found the bucket idle, while the
    bucket's next owner already dispatched in it (and the object still existed)."""
    world = ha_sim.run(152, SHORT)
    f = world.figures
    print(f"violations: {world.kinds or 0}; {f.releases} releases, {f.takeovers} takeovers")
    assert not world.kinds.get("exclusive"), world.violations[:5]


def test_a_restarted_identity_takes_its_old_buckets_over_with_their_watermarks() -> None:
    """Seed 156: a replica restarted under the same identity took its member Lease over, then
    its old buckets before its watch had seen that write; the fresh read showed the Lease held
    by itself, so the takeover used no watermark: it ran every object again and relisted, and
    a delete made while no replica ran was lost."""
    world = ha_sim.run(156, SHORT)
    print(f"violations: {world.kinds or 0}; {world.figures.takeovers} takeovers")
    assert not world.violations, world.violations[:5]


def test_a_replay_starts_with_the_objects_as_of_its_start() -> None:
    """Seeds 1064 and 1067 (before the simulated source had the list that opens a replay): a
    bucket caught up by a replay knew only the objects changed since its watermark, so the
    relist that completed it after the replay's end could not tell which of the others had been
    deleted meanwhile; a delete made between the replay's end and that relist never ran, and
    the watermark passed it. Like ``Source``, the simulated stream now lists the objects as of
    the replay's start first (``seeded``), and no such relist is needed."""
    for seed in (1064, 1067):
        world = ha_sim.run(seed, SHORT)
        print(f"seed {seed}: violations {world.kinds or 0}; {world.figures.takeovers} takeovers, "
              f"{world.figures.releases} releases")
        assert not world.violations, world.violations[:5]


def test_the_last_suspended_bucket_taken_over_lets_the_resumed_ones_run() -> None:
    """Seed 1273: a partitioned replica suspended its three buckets, kept receiving events of
    them, won one back and learnt that the other two had been taken over. The gate opens only
    when no bucket is suspended, so the resumed bucket's queued events waited for an event or a
    result to pump them, and none came: two final states never ran. Releasing the last
    suspended bucket now pumps the queues."""
    world = ha_sim.run(1273, SHORT)
    f = world.figures
    print(f"violations: {world.kinds or 0}; {f.fences} fencings, {f.resumes} resumptions")
    assert not world.violations, world.violations[:5]


def test_a_crashed_holder_restarted_under_its_identity_leaves_its_watermarks() -> None:
    """Seed 1190: a replica crashed and came back under the same identity; the new incarnation
    took its member Lease over (writing its own watermarks, none), and another replica then
    took the crashed holder's bucket over: no member Lease had that holder any more, so the
    takeover had no watermark, ran everything of the bucket and missed a delete made while no
    replica ran it. The member Lease now keeps the crashed holder's last watermarks."""
    world = ha_sim.run(1190, SHORT)
    print(f"violations: {world.kinds or 0}; {world.figures.takeovers} takeovers")
    assert not world.violations, world.violations[:5]


def test_a_replay_begun_before_anything_was_read_ends() -> None:
    """Seeds 125 and 20 of drain-heavy schedules: a bucket was acquired with a watermark before
    the stream had a position, so its replay had no point to end at and the bucket stayed
    "catching up" for good. A replay begun later for another bucket purged its pending work
    and holds as if the replay would deliver them again; but the bucket was then drained, took
    nothing new, and its commands stopped by the drain's timeout held nothing back: the
    watermark it was released with passed states that never ran. Such a replay now ends at its
    first live event."""
    for seed in (125, 20):
        world = ha_sim.run(seed, DRAINS)
        f = world.figures
        print(f"seed {seed}: violations {world.kinds or 0}; {f.releases} releases, "
              f"{f.fenced_commands} commands stopped by fencing or a drain")
        assert not world.violations, world.violations[:5]


def test_an_answer_older_than_the_view_does_not_free_a_taken_bucket() -> None:
    """Seed 177 of drain-heavy schedules: on a slow API server a replica's release of a bucket
    was applied, another replica acquired the bucket, and the watch showed that; then the
    answer to the release arrived and replaced the newer record in the view. The bucket looked
    free, every acquisition of it failed its compare-and-swap on that stale copy, and when its
    owner crashed nothing changed the Lease again: the bucket stayed without an owner. The view
    now never goes back to an older resourceVersion."""
    world = ha_sim.run(177, DRAINS)
    f = world.figures
    print(f"violations: {world.kinds or 0}; {f.takeovers} takeovers, {f.releases} releases")
    assert not world.violations, world.violations[:5]


def test_a_bucket_won_after_the_lease_ran_out_starts_suspended() -> None:
    """A takeover's compare-and-swap answered after the replica's Lease had run out (a slow
    API server; found by the random schedules before the name key was mixed, seed 18): the
    bucket came in owned, another replica took it over from the lapsed replica, and the first
    renewal after that let both dispatch in it. Now such a bucket starts suspended and a
    resumption answered late leaves it suspended: only a compare-and-swap made while the Lease
    is valid lets it dispatch again."""
    from fastobs.lease import Lease
    from fastobs.ownership import State

    world = ha_sim.World(7, ha_sim.Params(replicas=1, buckets=4))

    async def scenario() -> tuple[State | None, State | None]:
        r = await world.add_replica()
        while len(r.own.states) < 4:
            await ha_sim.asyncio.sleep(0.1)
        c = r.c

        def lapse_and_win() -> State | None:
            record = c.records[2]
            c.ownership.release(2)
            c.valid_until = r.clock() - 0.1  # the answer came after the deadline
            c._won(2, record, None, "takeover")
            return c.ownership.states.get(2)

        won = r.within(lapse_and_win)
        record = c.records[2]
        written = Lease.from_json(record.to_json())
        written.resource_version = str(int(record.resource_version) + 1)
        c.leases = _AnsweredLate(written, r)  # type: ignore[assignment]
        await r.context.run(ha_sim.asyncio.ensure_future, c._resume(2))
        return won, c.ownership.states.get(2)

    with ha_sim.patched():
        try:
            won, resumed = world.loop.run_until_complete(scenario())
        finally:
            ha_sim._shutdown(world)
    print(f"won after the deadline: {won}; resumed with a late answer: {resumed}")
    assert won is State.SUSPENDED
    assert resumed is State.SUSPENDED


class _AnsweredLate:
    """A Lease client whose update is applied, but answered after the Lease's deadline."""

    def __init__(self, written: object, replica: ha_sim.Replica) -> None:
        self.written, self.r = written, replica

    async def update(self, lease: object, deadline: float) -> object:
        self.r.c.valid_until = self.r.clock() - 0.1
        return self.written


def test_a_graceful_exit_whose_release_fails_leaves_its_watermarks() -> None:
    """A replica exits while its bucket releases do not get through (the API server answers
    none in time): its bucket Leases still name it, and its member Lease, released at exit,
    used to drop its watermarks, so the replica that took those buckets over ran everything of
    them with no floor (and missed the deletes made before its relist). The member Lease now
    keeps the exiting holder's last watermarks, and the takeover resumes after them."""
    from fastobs.lease import PREVIOUS_HOLDER, PREVIOUS_WATERMARKS, ROLE_LABEL, LeaseError, parse_watermarks

    world = ha_sim.World(11, ha_sim.Params(replicas=2, buckets=4))
    ha_sim.coordinator_mod.random.seed(11)  # the retry jitter too: one schedule every time

    async def scenario() -> tuple[dict[int, int], dict[int, int | None], dict[str, str]]:
        r0 = await world.add_replica()
        r1 = await world.add_replica()
        while not ha_sim._settled(world):
            await ha_sim.asyncio.sleep(0.25)
        for _ in range(30):
            world.objects.change(next(world.rv))
            await ha_sim.asyncio.sleep(0.1)
        await ha_sim.asyncio.sleep(2.0)
        marks = r0.within(r0.own.watermarks)
        real = r0.c.leases.update

        async def update(lease: ha_sim.Lease, deadline: float) -> ha_sim.Lease:
            if lease.labels.get(ROLE_LABEL) == "bucket":
                raise LeaseError("timeout", "update: no answer")  # the release never arrives
            return await real(lease, deadline)

        r0.c.leases.update = update  # type: ignore[method-assign]
        r0.leaving = True
        await world.loop.create_task(r0.leave(), context=r0.context)
        while set(r1.own.owned()) != set(range(4)) or r1.own.awaiting:
            await ha_sim.asyncio.sleep(0.1)
        member = world.store.leases[r0.c.member_name]["metadata"].get("annotations") or {}
        return marks, {b: r1.own.progress.floors.get(b) for b in marks}, member

    with ha_sim.patched():
        try:
            marks, floors, member = world.loop.run_until_complete(scenario())
        finally:
            ha_sim._shutdown(world)
    print(f"exiting replica's watermarks {marks}; the new owner's floors {floors}; its member Lease "
          f"says {member.get(PREVIOUS_HOLDER)} left {member.get(PREVIOUS_WATERMARKS)}")
    assert marks, "the exiting replica held buckets with watermarks"
    left = parse_watermarks(member.get(PREVIOUS_WATERMARKS, ""))
    assert left.keys() == marks.keys() and all(left[b] >= marks[b] for b in marks), left
    for b, mark in marks.items():
        floor = floors[b]
        assert floor is not None and floor >= mark, (b, mark, floor)
