"""docs/architecture.md states modules, message fields and numbers: each is checked against the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import fastobs
from fastobs import errors, output, pool, protocol, spawn, worker
from fastobs.flags import BY_NAME
from fastobs.sharder import Sharder
from fastobs.source import Source

DOC = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
PACKAGE = Path(fastobs.__file__).resolve().parent


def _table_rows(heading: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with ``| heading |``."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def _modules_on_disk() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and parts != ["__main__"]:
            names.add(".".join(parts))
    return names


def test_the_module_table_lists_exactly_the_modules() -> None:
    """Every module in fastobs/ has a row, and every row names a module that exists."""
    listed = [row[0].strip("`") for row in _table_rows("module")]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    on_disk = _modules_on_disk()
    print(f"{len(listed)} modules in the table, {len(on_disk)} on disk")
    assert sorted(set(listed) - on_disk) == [], "rows for modules that do not exist"
    assert sorted(on_disk - set(listed)) == [], "modules without a row"


def _doc_fields(cell: str) -> tuple[set[str], set[str]]:
    """(all fields, optional fields) of the ``{a, b?, c}`` list in a protocol table cell."""
    match = re.search(r"`\{([^}]*)\}`", cell)
    assert match is not None, cell
    names = [name.strip() for name in match.group(1).split(",")]
    return {name.rstrip("?") for name in names}, {name.rstrip("?") for name in names if name.endswith("?")}


def test_the_wire_protocol_table_matches_the_typed_messages() -> None:
    """Each frame kind is documented with its message type and exactly its fields."""
    rows = {row[0][1]: row for row in _table_rows("kind")}
    assert set(rows) == {kind.decode() for kind in protocol.MESSAGES}
    for kind, message in protocol.MESSAGES.items():
        cell = rows[kind.decode()][2]
        assert f"`{message.__name__}`" in cell, f"{kind!r} should name {message.__name__}"
        if message is protocol.RunSettings:
            continue
        fields, optional = _doc_fields(cell)
        assert fields == message.__required_keys__ | message.__optional_keys__, message.__name__
        # Done's "ol" is on every frame (encode_done sets it) but not in what decode_done returns.
        assert optional == message.__optional_keys__ - {"ol"}, message.__name__


def test_the_documented_protocol_version_is_the_code_s() -> None:
    match = re.search(r"`v` is the protocol version \(now (\d+)\)", DOC)
    assert match is not None
    assert int(match.group(1)) == protocol.VERSION


@pytest.mark.parametrize(("pattern", "actual"), [
    (r"paginated \((\d+) objects a\s+page\)",
     lambda: inspect.signature(Source.__init__).parameters["page_size"].default),
    (r"`--max-pending` \(default ([\d,]+)\)", lambda: BY_NAME["max-pending"].default),
    (r"queues drain to (\d+/\d+) of it", lambda: _drain_fraction()),
    (r"\| 3 \| workers failed to start (\d+) times in a row", lambda: pool.MAX_BOOT_FAILURES),
    (r"\| (\d+) \| workers failed to start", lambda: errors.EXIT_WORKER_BOOT),
    (r"\| (\d+) \| more list failures than", lambda: errors.EXIT_FATAL),
    (r"more than (\d+) MiB of\s+output waits", lambda: f"{output.HIGH_WATER / 2**20:g}"),
    (r"until less than\s+(\d+) KiB does", lambda: f"{output.LOW_WATER / 2**10:g}"),
    (r"`T` tick \| worker → parent \| every (second):",
     lambda: "second" if worker.HEARTBEAT_SECONDS == 1 else f"{worker.HEARTBEAT_SECONDS} s"),
])
def test_numbers_in_the_doc_are_the_code_s(pattern: str, actual: object) -> None:
    match = re.search(pattern, DOC)
    assert match is not None, f"the doc no longer says {pattern!r}"
    stated = match.group(1).replace(",", "")
    value = actual() if callable(actual) else actual
    print(f"{pattern!r}: doc {stated}, code {value}")
    assert stated == str(value)


def _drain_fraction() -> str:
    """The fraction of --max-pending below which a paused source reads again, as the sharder does it."""
    from fractions import Fraction

    from fastobs.events import Event, EventType, ObjectKey

    limit = 8
    sharder = Sharder(shards=1, coalesce=False, max_pending=limit, clock=lambda: 0.0)
    for i in range(limit):
        sharder.add(Event(EventType.SYNC, ObjectKey(f"ns/o{i}"), "ns", f"o{i}", "u", "1", b"{}", 0.0))
    queue = sharder.queues[0]
    assert not sharder._room.is_set(), "the source is not paused at --max-pending"
    while not sharder._room.is_set():
        ev = queue.pop()
        assert ev is not None
        queue.done(ev.key)
        sharder.released()
    resumed_below = sharder.pending_events() + 1
    fraction = Fraction(resumed_below, limit)
    return f"{fraction.numerator}/{fraction.denominator}"


def test_commands_start_as_the_doc_says() -> None:
    """The doc names the call that starts commands and says each gets its own process group
    (``setpgroup=0``, not a new session)."""
    code = inspect.getsource(spawn)
    assert "os.posix_spawnp(" in code and "setpgroup=0" in code and "setsid=" not in code
    assert "`os.posix_spawnp` in a new process group" in DOC and "start_new_session" not in DOC
