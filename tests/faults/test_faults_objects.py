"""Fault scenarios in the objects themselves: an object nested deeper than the JSON parser
goes, and an object near etcd's size limit.

A hostile or broken object must cost at most the events of its own key: the watch, the
list and every other key keep going. Each scenario creates such an object both before
fastobs starts (it is in the initial list) and while it runs (it comes by the watch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastobs_run import run_fastobs
from faultlib import Fastobs, InvocationLog, apply_values, check, report

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

GROUP = "faults.example.com"
BLOBS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": f"faultblobs.{GROUP}"},
    "spec": {"group": GROUP, "scope": "Namespaced",
             "names": {"plural": "faultblobs", "singular": "faultblob", "kind": "FaultBlob"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}
DEPTH = 1500
"""Levels of nesting: past the 1,024 orjson parses (the apiserver took 5,000 in a trial;
kubectl's own decoder stops at 10,000)."""


def blob(ns: str, name: str, value: str, depth: int = 0) -> str:
    """A FaultBlob as JSON text, its ``spec.nested`` ``depth`` levels deep (written out by
    hand: Python's json module stops at its recursion limit)."""
    nested = '{"a":' * depth + json.dumps(value) + "}" * depth
    meta = json.dumps({"name": name, "namespace": ns})
    return (f'{{"apiVersion":"{GROUP}/v1","kind":"FaultBlob","metadata":{meta},'
            f'"spec":{{"v":{json.dumps(value)},"nested":{nested}}}}}')


def shallow_blobs(ns: str, names: list[str], value: str) -> str:
    items = [json.loads(blob(ns, n, value)) for n in names]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def create(k8s: Any, text: str) -> None:
    # kubectl's own decoder stops at 10,000 levels, well past DEPTH.
    k8s.kubectl("apply", "--server-side", "-f", "-", input=text)


@pytest.fixture(scope="module")
def blobs(k8s: Any) -> str:
    k8s.apply(BLOBS_CRD)
    k8s.kubectl("wait", "--for=condition=Established", f"crd/faultblobs.{GROUP}", "--timeout=60s")
    return "faultblobs"


def test_deeply_nested_object_costs_one_event_not_the_watch(k8s: Any, ns: str, tmp_path: Path,
                                                           blobs: str) -> None:
    names = [f"b{i}" for i in range(20)]
    create(k8s, shallow_blobs(ns, names, "0"))
    create(k8s, blob(ns, "deep-listed", "0", DEPTH))
    log = InvocationLog(tmp_path, template="{.metadata.resourceVersion} {.spec.v}")
    with Fastobs(k8s.env, tmp_path, blobs, "-n", ns, "--workers", "2", *log.argv) as fo:
        fo.wait_ready()  # the initial list got through, the deep object in it
        log.wait_for("every shallow key's first run",
                     lambda runs: {f"{ns}/{n}" for n in names} <= {r.key for r in runs if r.end is not None})
        create(k8s, blob(ns, "deep-watched", "1", DEPTH))
        create(k8s, shallow_blobs(ns, names, "1"))
        # The deep object that was listed becomes an ordinary one: its key runs normally.
        create(k8s, blob(ns, "deep-listed", "2"))
        final = {f"{ns}/{n}": "1" for n in names} | {f"{ns}/deep-listed": "2"}
        runs = log.wait_for("every final state", lambda runs: not check(runs, final).lost, 60)
        source = fo.metric("fastobs_invalid_objects_total", stage="source")
        command = fo.metric("fastobs_invalid_objects_total", stage="command")
        relists = fo.metric("fastobs_relists_total")
        api_errors = fo.metric("fastobs_api_errors_total")
        assert fo.proc.poll() is None, fo.stderr()[-2000:]
    err = fo.stderr()
    verdict = check(runs, final)
    deep_runs = [r for r in runs if r.key == f"{ns}/deep-watched"]
    report(f"deeply nested object ({DEPTH} levels), listed and watched", **verdict.figures(),
           **{"objects the source could not decode": int(source),
              "events failed for their key": int(command), "relists": int(relists),
              "list and watch errors": int(api_errors)})
    verdict.assert_ok()
    assert source == 2 and command == 2 and not deep_runs
    assert relists == 0 and api_errors == 0
    for key in (f"{ns}/deep-listed", f"{ns}/deep-watched"):
        assert f"key={key}" in err, err[-3000:]  # each failure is logged with its key
    assert "Traceback" not in err


def test_object_near_etcds_size_limit(k8s: Any, ns: str, tmp_path: Path) -> None:
    """A ~1.4 MB configmap (1 MiB of data, 256 KiB of annotations, 1,500 labels) reaches the
    command whole on stdin, from the list and from the watch, and holds nobody up."""
    names = [f"c{i}" for i in range(20)]
    apply_values(k8s, ns, names, "0")
    sizes = tmp_path / "sizes"
    huge = huge_configmap(ns, "huge", "0")
    k8s.apply(huge)
    log = InvocationLog(tmp_path, body=f'printf "%s %s\\n" "$2" "$(wc -c)" >> {sizes}')
    with Fastobs(k8s.env, tmp_path, "configmaps", "-n", ns, "--workers", "2", "--object-channel", "stdin",
                 *log.argv) as fo:
        fo.wait_ready()
        k8s.apply(huge_configmap(ns, "huge", "1"))
        k8s.apply(huge_configmap(ns, "huge-watched", "1"))
        apply_values(k8s, ns, names, "1")
        final = {f"{ns}/{n}": "1" for n in names} | {f"{ns}/huge": "1", f"{ns}/huge-watched": "1"}
        runs = log.wait_for("every final state", lambda runs: not check(runs, final).lost, 60)
    seen = [line.split() for line in sizes.read_text().splitlines()]
    big = [int(size) for name, size in seen if name.startswith("huge")]
    verdict = check(runs, final)
    report("object near etcd's size limit (~1.4 MB configmap)", **verdict.figures(),
           **{"huge objects delivered": len(big), "smallest delivered bytes": min(big, default=0)})
    verdict.assert_ok()
    assert len(big) >= 3 and min(big) > 1_400_000, big


def huge_configmap(ns: str, name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {f"l{i:04d}": "z" * 63 for i in range(1500)},
                         "annotations": {"a": "y" * (256 * 1024 - 200)}},
            "data": {"v": value, "blob": value * (1024 * 1024 - 300)}}


def test_a_command_that_needs_no_decoding_gets_the_deep_object_whole(k8s: Any, ns: str, tmp_path: Path,
                                                                    blobs: str) -> None:
    """With the object on stdin and no template, nothing in fastobs must parse it: the
    command runs and reads the server's bytes, all of them."""
    create(k8s, blob(ns, "deep-stdin", "0", DEPTH))
    served = k8s.kubectl("get", "--raw", f"/apis/{GROUP}/v1/namespaces/{ns}/{blobs}/deep-stdin").stdout
    out = tmp_path / "seen"
    res = run_fastobs(k8s.env, blobs, "-n", ns, "--once", "--listen-addr=", "--object-channel", "stdin", "--",
                      "sh", "-c", f'cat > {out}', "sh")
    assert res.returncode == 0, res.stderr
    seen = out.read_bytes()
    assert seen.count(b'{"a":') == served.count('{"a":') == DEPTH  # every level of the spec
    assert b'"name":"deep-stdin"' in seen and "failed" not in res.stderr
    report("deeply nested object on stdin, no template", **{"bytes delivered": len(seen),
                                                            "levels": seen.count(b'{"a":')})
