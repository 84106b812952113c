"""Fault scenarios of load from the API server: churn (many keys changed in rounds while their
commands run) in both coalescing modes, and deletes of half the keys under that load.

The promises at stake are the per-key guarantees: the last command of every key sees its
final state (deleted keys: a ``Deleted`` run), one key never runs twice at once, a key's
states run in order, and ``--no-coalesce`` runs every state.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from faultlib import Fastobs, InvocationLog, Run, Writer, apply_values, check, report

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

KEYS = 60
ROUNDS = 6
DELETE_KEYS = 40
COMMAND = "sleep 0.1"
"""Slower than a key's changes come (back to back), so each key is still running, or
waiting, when its next state comes."""


def per_key_values(runs: list[Run]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for r in sorted(runs, key=lambda r: r.start):
        if r.type != "Deleted" and r.end is not None:
            seen.setdefault(r.key, []).append(int(r.value))
    return seen


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalescing", "no-coalesce"])
def test_churn_runs_every_final_state_in_order_without_overlap(k8s: Any, ns: str, tmp_path: Path,
                                                               coalesce: bool) -> None:
    names = [f"k{i}" for i in range(KEYS)]
    apply_values(k8s, ns, names, "0")
    log = InvocationLog(tmp_path, body=COMMAND)
    mode = [] if coalesce else ["--no-coalesce"]
    with Fastobs(k8s.env, tmp_path, "configmaps", "-n", ns, "--workers", "2", "--concurrency", "8", *mode,
                 *log.argv) as fo:
        fo.wait_ready()
        t0 = time.monotonic()
        with Writer(k8s) as writer:
            for name in names:  # each key's changes back to back: its command is still running
                for round_ in range(1, ROUNDS + 1):
                    writer.set_value(ns, name, str(round_))
        final = {f"{ns}/{n}": str(ROUNDS) for n in names}
        if coalesce:
            runs = log.wait_for("every final state", lambda runs: not check(runs, final).lost, 90)
        else:
            want = KEYS * (ROUNDS + 1)
            runs = log.wait_for("every state", lambda runs: sum(r.end is not None for r in runs) >= want, 90)
        took = time.monotonic() - t0
        coalesced = fo.metric("fastobs_events_coalesced_total")
    verdict = check(runs, final)
    values = per_key_values(runs)
    disordered = [k for k, v in values.items() if v != sorted(v)]
    report(f"churn, {'coalescing' if coalesce else '--no-coalesce'} ({KEYS} keys x {ROUNDS} changes)",
           **verdict.figures(), **{"updates written": KEYS * ROUNDS, "coalesced": int(coalesced),
                                   "keys out of order": len(disordered), "seconds to settle": took})
    verdict.assert_ok()
    assert not disordered, {k: values[k] for k in disordered[:5]}
    if coalesce:
        assert coalesced > 0 and len(runs) < KEYS * (ROUNDS + 1)
    else:
        everything = list(range(ROUNDS + 1))
        assert coalesced == 0 and all(v == everything for v in values.values()), values


def test_deletes_under_load_end_every_deleted_key_with_its_delete(k8s: Any, ns: str, tmp_path: Path) -> None:
    names = [f"d{i}" for i in range(DELETE_KEYS)]
    apply_values(k8s, ns, names, "0")
    log = InvocationLog(tmp_path, body=COMMAND)
    doomed, kept = names[: DELETE_KEYS // 2], names[DELETE_KEYS // 2:]
    with Fastobs(k8s.env, tmp_path, "configmaps", "-n", ns, "--workers", "2", "--concurrency", "8",
                 "--delete", str(log.path), *log.argv) as fo:
        fo.wait_ready()
        with Writer(k8s) as writer:
            for round_ in range(1, 3):
                writer.set_values(ns, names, str(round_))
            k8s.kubectl("delete", "configmap", "-n", ns, "--wait=false", *doomed)
            writer.set_values(ns, kept, "3")
        final = {f"{ns}/{n}": "Deleted" for n in doomed} | {f"{ns}/{n}": "3" for n in kept}
        runs = log.wait_for("every final state", lambda runs: not check(runs, final).lost, 90)
        assert fo.proc.poll() is None, fo.stderr()[-2000:]
    verdict = check(runs, final)
    deletes = [r for r in runs if r.type == "Deleted"]
    after_delete = [r for r in runs if r.type != "Deleted" and any(
        d.key == r.key and d.end is not None and r.start > d.end for d in deletes)]
    report(f"deletes under load ({len(doomed)} of {DELETE_KEYS} keys deleted mid-churn)", **verdict.figures(),
           **{"delete runs": len(deletes), "runs after a key's delete": len(after_delete)})
    verdict.assert_ok()
    assert sorted(r.key for r in deletes) == sorted(f"{ns}/{n}" for n in doomed)  # each delete ran once
    assert not after_delete
