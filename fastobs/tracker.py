"""Tracker: the parent's per-key memory, and oc observe's rules for deletes and relists.

Where it sits: in the parent, between ``source`` (list items and watch events) and the
queues. In: events and list boundaries. Out: the events worth running, including
``Deleted`` events it synthesizes for keys whose object was replaced by a new one under the
same name (new uid), and, returned at the end of each list for the ``engine`` to run after
the list's own events, those of keys that vanished (relist, ``--names``).

Per key it keeps only a small slotted record (resourceVersion, uid, the last
resourceVersion handled successfully, the list generation it was last seen in, and the
template output oc caches for deletes). Never the object.

Invariants: with deletion tracking on (``--delete``, ``--names`` or ``--resync-period``),
every key that disappears produces exactly one ``Deleted``; with it off, deletes are
dropped silently, as oc does. A relist does not re-run a key whose resourceVersion was
already handled successfully (a resync does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import NamesError
from .events import Event, EventType, ObjectKey


class Record:
    """What the parent remembers about one object."""

    __slots__ = ("rv", "uid", "done_rv", "gen", "arg", "last")

    def __init__(self, rv: str, uid: str, gen: int) -> None:
        self.rv = rv
        self.uid = uid
        self.done_rv = ""
        self.gen = gen
        self.arg: str | None = None
        self.last: bytes | None = None


Emit = Callable[[Event], None]


class Tracker:
    """Per-key records plus the list bookkeeping that detects vanished keys."""

    def __init__(
        self,
        *,
        emit: Emit,
        tracking: bool,
        namespaced: bool,
        keep_object: bool,
        clock: Callable[[], float],
    ) -> None:
        self.emit = emit
        self.tracking = tracking
        self.namespaced = namespaced
        self.keep_object = keep_object
        self.clock = clock
        self.records: dict[ObjectKey, Record] = {}
        self.gen = 0
        self.resync = False

    # ------------------------------------------------------------------ source events

    def list_begin(self, *, resync: bool = False) -> None:
        self.gen += 1
        self.resync = resync

    def list_item(self, ev: Event) -> None:
        rec = self.records.get(ev.key)
        if rec is None:
            self.records[ev.key] = Record(ev.rv, ev.uid, self.gen)
        else:
            if rec.uid != ev.uid and rec.uid:
                self._replaced(ev.key, rec)
                rec = self.records[ev.key] = Record(ev.rv, ev.uid, self.gen)
            rec.gen = self.gen
            if not self.resync and rec.done_rv == ev.rv and rec.rv == ev.rv:
                return  # already handled successfully at this exact state
            rec.rv = ev.rv
        self.emit(ev)

    def seed(self, ev: Event) -> None:
        """Remember an object not known here as already handled at the state ``ev`` (its
        bucket's previous owner ran it): a later list that misses it yields its ``Deleted``,
        one that has it at that same state runs nothing."""
        if ev.key in self.records:
            return
        rec = self.records[ev.key] = Record(ev.rv, ev.uid, self.gen)
        rec.done_rv = ev.rv
        if self.keep_object:
            rec.last = ev.obj

    def list_end(self, known: Iterable[str] | None = None) -> tuple[list[Event], NamesError | None]:
        """After the last page: the ``Deleted`` events of known keys missing from the list.

        ``known`` is the sorted ``--names`` output (it replaces the in-memory set, as in
        oc). The deletes are returned, not emitted, in key order: oc queues them behind the
        list's own events, in the order of the names output. A malformed ``--names`` key
        stops oc when its turn comes, so the deletes before it are returned with the
        :class:`NamesError` it raises, and none after it.
        """
        gen = self.gen
        deletes: list[Event] = []
        self.resync = False
        if known is None:
            for key in sorted(k for k, r in self.records.items() if r.gen != gen):
                gone = self.records.pop(key)
                if self.tracking:
                    deletes.append(self._synth_delete(key, gone))
            return deletes, None
        for raw in known:
            key = ObjectKey(raw)
            rec = self.records.get(key)
            if rec is not None and rec.gen == gen:
                continue
            try:
                deletes.append(self._synth_delete(key, rec))
            except NamesError as error:
                return deletes, error
            if rec is not None:
                del self.records[key]
        # Keys neither listed nor named are forgotten (oc only deletes what --names knows).
        for key in [k for k, r in self.records.items() if r.gen != gen]:
            del self.records[key]
        return deletes, None

    def watch_event(self, ev: Event) -> None:
        key = ev.key
        rec = self.records.get(key)
        if ev.type is EventType.DELETED:
            if rec is not None:
                del self.records[key]
            if self.tracking:
                self.emit(ev)
            return
        if rec is None:
            self.records[key] = Record(ev.rv, ev.uid, self.gen)
        elif rec.uid != ev.uid and rec.uid:
            # Deleted and recreated while we were not watching: the old object's delete
            # must run before the new object's command.
            self._replaced(key, rec)
            self.records[key] = Record(ev.rv, ev.uid, self.gen)
        else:
            rec.rv = ev.rv
        self.emit(ev)

    # ------------------------------------------------------------------ results

    def handled(self, ev: Event, *, ok: bool, arg: str | None) -> None:
        """A command for ``ev`` finished: remember what oc caches for later deletes."""
        if ev.type is EventType.DELETED:
            return
        rec = self.records.get(ev.key)
        if rec is None or rec.uid != ev.uid:
            return
        if ok:
            rec.done_rv = ev.rv
        if self.tracking:
            rec.arg = arg
            if self.keep_object:
                rec.last = ev.obj

    def forget(self, match: Callable[[ObjectKey, str], bool]) -> int:
        """Drop, without any event, the records ``match(key, uid)`` selects: objects this
        process stops looking after (a group of replicas moved them elsewhere)."""
        gone = [key for key, rec in self.records.items() if match(key, rec.uid)]
        for key in gone:
            del self.records[key]
        return len(gone)

    # ------------------------------------------------------------------ helpers

    def _replaced(self, key: ObjectKey, rec: Record) -> None:
        if self.tracking:
            self.emit(self._synth_delete(key, rec))

    def _synth_delete(self, key: ObjectKey, rec: Record | None) -> Event:
        """A ``Deleted`` for a key we no longer see, carrying oc's cached state."""
        ns, name = self.split_key(key)
        return Event(
            type=EventType.DELETED,
            key=key,
            namespace=ns,
            name=name,
            uid=rec.uid if rec else "",
            rv="",
            obj=rec.last if rec else None,
            received=self.clock(),
            backlog=False,
            cached_arg=rec.arg if rec else None,
        )

    def split_key(self, key: str) -> tuple[str, str]:
        """oc's key parsing for --names keys: ``ns/name`` or ``name``; more slashes is an error."""
        parts = key.split("/")
        if len(parts) > 2:
            raise NamesError(f'unexpected key format: "{key}"')
        if len(parts) == 2:
            ns, name = parts
            return (ns, name) if self.namespaced else ("", name)
        return "", parts[0]
