"""Report: a results file -> Markdown (machine, table, targets) for bench/README.md.

Usage: ``python bench/report.py RESULTS.json [MORE.json ...] [--readme bench/README.md]``
(rows of a later file replace the earlier files' rows of the same scenarios, for a
scenario re-run on its own)
(with ``--readme`` the machine and results sections between the ``<!-- ...:start -->``
and ``<!-- ...:end -->`` markers of the README are replaced in place).

Where it sits: after ``run``; it only reads the JSON ``run`` wrote. Invariant: every
target line names the rows it divides, so a reader can check the ratio in the table;
a target whose rows are missing says "not measured" instead of guessing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Row  # noqa: E402
from run import markdown  # noqa: E402


def _find(rows: list[dict[str, Any]], scenario: str, system_prefix: str) -> dict[str, Any] | None:
    for r in rows:
        if r["scenario"] == scenario and r["system"].startswith(system_prefix) and r["events_per_s"]:
            return r
    return None


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or not b["events_per_s"]:
        return None
    return float(a["events_per_s"]) / float(b["events_per_s"])


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def targets(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| target | measured | verdict |", "|---|---|---|"]
    fo_spawn = _find(rows, "spawn", "fastobs")
    fo_io = _find(rows, "io", "fastobs")
    for label, fo, other, need in (
        ("spawn ≥ 0.9× xargs -P16 alone", fo_spawn, _find(rows, "spawn", "xargs"), 0.9),
        ("spawn ≥ 1.0× the kubectl pipeline", fo_spawn, _find(rows, "spawn", "kubectl-xargs"), 1.0),
        ("spawn ≥ 90% of the minimal Python spawner (2 processes)", fo_spawn,
         _find(rows, "spawn", "python spawner x2"), 0.9),
        ("io ≥ 1.0× the kubectl pipeline (same concurrency)", fo_io, _find(rows, "io", "kubectl-xargs"), 1.0),
        ("io ≥ kopf at the same concurrency", fo_io, _find(rows, "io", "kopf"), 1.0),
        ("io ≥ 50× oc observe", fo_io, _find(rows, "io", "oc-observe"), 50.0),
    ):
        r = _ratio(fo, other)
        shown = "-" if r is None else f"{r:.2f}×"
        out.append(f"| {label} | {shown} | {_verdict(None if r is None else r >= need)} |")
    for scen in ("ingest-list", "ingest-watch"):
        fo = _find(rows, scen, "fastobs")
        us = fo.get("parent_cpu_us") if fo else None
        shown = "-" if fo is None or us is None else f"{us:.0f} µs ({fo['events_per_s']:,.0f}/s)"
        out.append(
            f"| {scen}: parent ≤ 33 µs of CPU per event (30k events/s per core, TLS) | {shown} | "
            f"{_verdict(None if us is None else us <= 33)} |"
        )
    fo = _find(rows, "ingest-list", "fastobs")
    if fo and fo["parent_rss_mib"] is not None:
        out.append(
            f"| parent RSS ≤ 170 MiB with {fo['events']:,} objects | {fo['parent_rss_mib']} MiB | "
            f"{_verdict(fo['parent_rss_mib'] <= 170)} |"
        )
        w = fo.get("worker_rss_mib")
        out.append(f"| worker RSS ≤ 35 MiB | {w} MiB | {_verdict(None if w is None else w <= 35)} |")
    st = next((r for r in rows if r["scenario"] == "startup" and r["system"] == "fastobs"), None)
    first = st["extra"].get("first_list_ms") if st else None
    out.append(
        f"| first list request ≤ 150 ms after launch | {'-' if first is None else f'{first} ms'} | "
        f"{_verdict(None if first is None else first <= 150)} |"
    )
    lag = next((r for r in rows if r["scenario"] == "lag" and "50%" in r["system"] and r["lag_p99_ms"]), None)
    p99 = lag["lag_p99_ms"] if lag else None
    out.append(
        f"| lag p99 < 50 ms at 50% of max rate | {'-' if p99 is None else f'{p99} ms'} | "
        f"{_verdict(None if p99 is None else p99 < 50)} |"
    )
    api = {system: _mean_p99(rows, system) for system in ("fastobs", "oc-observe", "kubectl-xargs")}
    if api["fastobs"] is not None:
        for peer in ("oc-observe", "kubectl-xargs"):
            theirs = api[peer]
            out.append(
                f"| real apiserver, 200 writes/s: p99 ≤ {peer}'s (mean of the rounds) | "
                f"{api['fastobs']:.1f} ms against {'-' if theirs is None else f'{theirs:.1f} ms'} | "
                f"{_verdict(None if theirs is None else api['fastobs'] <= theirs)} |"
            )
    return out


def _mean_p99(rows: list[dict[str, Any]], system: str) -> float | None:
    """Mean p99 of a system's apiserver-lag rounds."""
    p99s = [r["lag_p99_ms"] for r in rows
            if r["scenario"] == "apiserver-lag" and r["system"].startswith(f"{system} @") and r["lag_p99_ms"]]
    return sum(p99s) / len(p99s) if p99s else None


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's document with later runs' rows replacing its rows of the same
    scenarios, in the first run's scenario order."""
    doc = dict(docs[0])
    by_family: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        fresh: dict[str, list[dict[str, Any]]] = {}
        for r in d["rows"]:
            fresh.setdefault(_family(r["scenario"]), []).append(r)
        by_family.update(fresh)
    for later in docs[1:]:
        doc["duration_s"] = f"{doc['duration_s']} + {later['duration_s']}"
    doc["rows"] = [r for rows in by_family.values() for r in rows]
    return doc


def _family(scenario: str) -> str:
    """``ingest-list`` and ``ingest-watch`` come from the one ``ingest`` scenario."""
    return scenario.split("-", 1)[0]


def render(doc: dict[str, Any]) -> tuple[str, str]:
    """(machine section, results section) as Markdown."""
    m = doc["machine"]
    machine = (
        f"{m['cpus']} × {m['cpu_model']}, {m['memory']} memory, Linux {m['kernel']}, Python {m['python']}; "
        f"{doc['mode']} run of {doc['duration_s']} s, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(doc['started']))}."
    )
    fields = set(Row.__dataclass_fields__)
    rows = [Row(**{k: v for k, v in r.items() if k in fields}) for r in doc["rows"]]
    results = markdown(rows) + "\n\n### Against the targets\n\n" + "\n".join(targets(doc["rows"]))
    return machine, results


def _replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    a, b = text.index(start) + len(start), text.index(end)
    return text[:a] + "\n" + body + "\n" + text[b:]


def main() -> None:
    p = argparse.ArgumentParser(description="results file -> Markdown")
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--readme", type=Path, help="update this README in place")
    args = p.parse_args()
    machine, results = render(merge([json.loads(f.read_text()) for f in args.results]))
    if args.readme:
        text = args.readme.read_text()
        text = _replace(_replace(text, "machine", machine), "results", results)
        args.readme.write_text(text)
    else:
        print(machine + "\n\n" + results)


if __name__ == "__main__":
    main()
