"""Fidelity of the test cluster, and the ``scripts/dev-cluster`` life cycle.

Where it sits: these tests guard the ground every other cluster test stands on. In: the
test-run cluster (``k8s``, ``ns``, ``restricted``) and ``scripts/dev-cluster`` run as a
subprocess. Out: pass/fail. Invariant: they talk to the server only with kubectl or plain
HTTP (http.client), never with fastobs code, so they prove the server, not the client.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from k8s_cluster import REPO_ROOT, Cluster, KubeCluster, RestrictedIdentity, request, ssl_context

DEV_CLUSTER = REPO_ROOT / "scripts" / "dev-cluster"
GROUP = "fidelity.fastobs.dev"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                        },
                    }
                },
            }
        ],
    },
}


def _watch(
    cluster: Cluster, path: str, query: str, until: int, timeout: float = 20
) -> Iterator[dict[str, Any]]:
    """Yield watch events from a raw HTTP watch, at most ``until`` of them."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", cluster.port, context=ssl_context(cluster), timeout=timeout
    )
    try:
        conn.request("GET", f"{path}?watch=1&{query}", headers={"Authorization": f"Bearer {cluster.token}"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        for _ in range(until):
            line = resp.readline()
            if not line:
                return
            yield json.loads(line)
    finally:
        conn.close()


def _create_configmaps(k8s: KubeCluster, ns: str, count: int, labels: dict[str, str] | None = None) -> None:
    items = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"cm-{i}", "labels": labels or {}},
            "data": {"i": str(i)},
        }
        for i in range(count)
    ]
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": items}, namespace=ns)


# ----------------------------------------------------------------------------- fidelity


def test_kubectl_lists_the_system_namespaces(k8s: KubeCluster) -> None:
    names = k8s.kubectl("get", "namespaces", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(names)


def test_server_reports_the_pinned_version(k8s_state: Cluster) -> None:
    status, version = request(k8s_state, "GET", "/version")
    assert status == 200
    assert version["gitVersion"].startswith("v1.") and version["major"] == "1" and version["minor"]


def test_crd_and_custom_resource_by_server_side_apply(k8s: KubeCluster, ns: str) -> None:
    k8s.apply(CRD)
    k8s.kubectl("wait", "--for=condition=Established", f"crd/widgets.{GROUP}", "--timeout=60s")
    k8s.apply(
        {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}},
        namespace=ns,
    )
    widget = json.loads(
        k8s.kubectl("get", "widgets", "w1", "-n", ns, "-o", "json", "--show-managed-fields").stdout
    )
    assert widget["spec"] == {"size": 3}
    assert widget["metadata"]["managedFields"][0]["operation"] == "Apply"
    bad = k8s.kubectl(
        "apply",
        "--server-side",
        "-n",
        ns,
        "-f",
        "-",
        check=False,
        input=json.dumps(
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": "Widget",
                "metadata": {"name": "w2"},
                "spec": {"size": "big"},
            }
        ),
    )
    assert bad.returncode != 0 and "spec.size" in bad.stderr  # schema validation is real


def test_watch_sends_initial_events_end_bookmark(k8s_state: Cluster, k8s: KubeCluster, ns: str) -> None:
    _create_configmaps(k8s, ns, 2)
    query = "allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
    events = list(_watch(k8s_state, f"/api/v1/namespaces/{ns}/configmaps", query, until=3))
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    annotations = events[-1]["object"]["metadata"]["annotations"]
    assert annotations == {"k8s.io/initial-events-end": "true"}


def test_watch_sends_periodic_bookmark(k8s_state: Cluster, k8s: KubeCluster, ns: str) -> None:
    # The cache sends a bookmark shortly before timeoutSeconds, once its resourceVersion has
    # moved past the watcher's: a change in another namespace moves it.
    rv = request(k8s_state, "GET", f"/api/v1/namespaces/{ns}/configmaps")[1]["metadata"]["resourceVersion"]
    poke = threading.Timer(
        1.0, lambda: k8s.kubectl("create", "configmap", f"poke-{ns}"[:63], "-n", "default")
    )
    poke.start()
    try:
        query = f"allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=8"
        events = list(_watch(k8s_state, f"/api/v1/namespaces/{ns}/configmaps", query, until=5))
    finally:
        poke.join()
    # One bookmark, or two when the cache's bookmark timer also fired after the poke.
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) > int(rv)


def test_watch_from_too_old_resource_version_gets_410(k8s_state: Cluster, k8s: KubeCluster, ns: str) -> None:
    # A CRD's watch cache starts at the resourceVersion current when the CRD was established;
    # anything older is outside the cache window, exactly like an old RV on a busy cluster.
    k8s.apply(CRD)
    k8s.kubectl("wait", "--for=condition=Established", f"crd/widgets.{GROUP}", "--timeout=60s")
    k8s.apply(
        {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "old"}, "spec": {"size": 1}},
        namespace=ns,
    )
    events = list(
        _watch(k8s_state, f"/apis/{GROUP}/v1/namespaces/{ns}/widgets", "resourceVersion=1", until=2)
    )
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")


def test_label_and_field_selectors(k8s_state: Cluster, k8s: KubeCluster, ns: str) -> None:
    _create_configmaps(k8s, ns, 3, labels={"app": "a"})
    k8s.kubectl("create", "configmap", "other", "-n", ns)
    base = f"/api/v1/namespaces/{ns}/configmaps"
    by_label = request(k8s_state, "GET", f"{base}?labelSelector=app%3Da")[1]
    assert sorted(i["metadata"]["name"] for i in by_label["items"]) == ["cm-0", "cm-1", "cm-2"]
    by_field = request(k8s_state, "GET", f"{base}?fieldSelector=metadata.name%3Dcm-1")[1]
    assert [i["metadata"]["name"] for i in by_field["items"]] == ["cm-1"]
    negated = request(k8s_state, "GET", f"{base}?labelSelector=app%21%3Da")[1]
    assert "other" in [i["metadata"]["name"] for i in negated["items"]]


def test_paginated_list_with_limit_and_continue(k8s_state: Cluster, k8s: KubeCluster, ns: str) -> None:
    _create_configmaps(k8s, ns, 5)
    names: list[str] = []
    pages = 0
    path = f"/api/v1/namespaces/{ns}/configmaps?limit=2"
    while True:
        status, page = request(k8s_state, "GET", path)
        assert status == 200
        pages += 1
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
        assert page["metadata"]["remainingItemCount"] > 0
        path = f"/api/v1/namespaces/{ns}/configmaps?limit=2&continue={token}"
    assert pages == 3 and sorted(names) == [f"cm-{i}" for i in range(5)]


def test_restricted_identity_is_forbidden_outside_its_role(
    k8s_state: Cluster,
    k8s: KubeCluster,
    restricted: RestrictedIdentity,
) -> None:
    token = restricted.token
    own = f"/api/v1/namespaces/{restricted.namespace}/{restricted.resource}"
    assert request(k8s_state, "GET", own, token=token)[0] == 200
    status, body = request(k8s_state, "GET", "/api/v1/namespaces/default/configmaps", token=token)
    assert (status, body["reason"]) == (403, "Forbidden")
    assert (
        request(k8s_state, "GET", f"/api/v1/namespaces/{restricted.namespace}/secrets", token=token)[0] == 403
    )
    denied = k8s.kubectl("get", "configmaps", "-A", kubeconfig=restricted.kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
    assert k8s.kubectl("get", "configmaps", kubeconfig=restricted.kubeconfig).returncode == 0


# ----------------------------------------------------------------------------- dev-cluster


def _dev(state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "FASTOBS_DEV_CLUSTER_DIR": str(state), **(env or {})}
    return subprocess.run(
        [str(DEV_CLUSTER), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd="/",
        timeout=240,
        check=False,
    )


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _processes_under(path: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if entry.name.isdigit() and f"{path}/" in cmdline and _alive(int(entry.name)):
            found.append(cmdline)
    return found


def _up(state: Path, k8s: KubeCluster, env: dict[str, str] | None = None) -> tuple[Cluster, str]:
    res = _dev(state, "up", env=env)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last == f"export KUBECONFIG={state / 'kubeconfig'}"
    assert "Active" in k8s.kubectl("get", "namespace", "default", kubeconfig=state / "kubeconfig").stdout
    cluster = Cluster.load(state)
    assert cluster is not None
    return cluster, res.stderr


@pytest.fixture
def dev_state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "dev-cluster"
    yield state
    _dev(state, "down")  # whatever the test did, leave nothing running


@pytest.mark.cluster
def test_dev_cluster_up_status_down(dev_state: Path, k8s: KubeCluster) -> None:
    cluster, _ = _up(dev_state, k8s)
    again = _dev(dev_state, "up")
    assert again.returncode == 0
    assert again.stdout.strip().splitlines()[-1] == f"export KUBECONFIG={dev_state / 'kubeconfig'}"
    assert Cluster.load(dev_state) == cluster  # no restart: same pids and ports

    st = _dev(dev_state, "status")
    assert st.returncode == 0
    for fact in (
        "up",
        cluster.server,
        str(dev_state / "kubeconfig"),
        str(cluster.apiserver_pid),
        str(cluster.etcd_pid),
    ):
        assert fact in st.stdout
    restricted = k8s.kubectl("get", "secrets", kubeconfig=dev_state / "restricted.kubeconfig", check=False)
    assert restricted.returncode != 0 and "forbidden" in restricted.stderr

    down = _dev(dev_state, "down")
    assert down.returncode == 0, down.stderr
    assert not _alive(cluster.apiserver_pid) and not _alive(cluster.etcd_pid)
    assert _processes_under(dev_state) == [] and _processes_under(cluster.data_dir) == []
    assert not dev_state.exists() and not cluster.data_dir.exists()
    assert _dev(dev_state, "status").returncode == 3


@pytest.mark.cluster
def test_dev_cluster_recovers_after_kill_and_avoids_a_taken_port(dev_state: Path, k8s: KubeCluster) -> None:
    first, _ = _up(dev_state, k8s)
    for pid in (first.apiserver_pid, first.etcd_pid):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (_alive(first.apiserver_pid) or _alive(first.etcd_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dev(dev_state, "status").returncode == 1  # recorded but dead

    with socket.socket() as squatter:  # someone else takes the old port meanwhile
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", first.port))
        squatter.listen()
        second, messages = _up(dev_state, k8s)
    assert f"port {first.port} is taken, using {second.port}" in messages
    assert second.port != first.port and second.apiserver_pid != first.apiserver_pid
    assert _dev(dev_state, "down").returncode == 0
    assert _processes_under(dev_state) == [] and _processes_under(second.data_dir) == []


@pytest.mark.cluster
def test_dev_cluster_keeps_a_free_port_across_restarts_and_cleans_up_a_crash(
    dev_state: Path, k8s: KubeCluster
) -> None:
    first, _ = _up(dev_state, k8s)
    os.kill(first.apiserver_pid, signal.SIGKILL)
    second, messages = _up(dev_state, k8s)
    assert second.port == first.port and "taken" not in messages

    # down after a crash: the surviving etcd must go, and the state with it.
    os.kill(second.apiserver_pid, signal.SIGKILL)
    assert _dev(dev_state, "down").returncode == 0
    assert not _alive(second.etcd_pid)
    assert _processes_under(dev_state) == [] and _processes_under(second.data_dir) == []
    assert not dev_state.exists() and not second.data_dir.exists()


def test_dev_cluster_rejects_an_unknown_subcommand(tmp_path: Path) -> None:
    res = _dev(tmp_path / "unused", "upp")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("usage: dev-cluster {up,down,status,stress}")
    assert "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- k8s-env-generate


def test_k8s_env_generate_replaces_only_exact_v0_0_0_staging_modules(tmp_path: Path) -> None:
    gomod = tmp_path / "go.mod"
    gomod.write_text(
        "module k8s.io/kubernetes\n\ngo 1.26.0\n\n"
        "require k8s.io/api v0.0.0\n\n"
        "require (\n"
        "\tgithub.com/spf13/cobra v1.10.2\n"
        "\tk8s.io/apimachinery v0.0.0\n"
        "\tk8s.io/ktesting v0.0.0 // indirect\n"
        "\tk8s.io/utils v0.0.0-20260210185600-b8788abfbbc2\n"
        "\tk8s.io/kube-openapi v0.0.0-20260317180543-43fb72c5454a // indirect\n"
        "\tk8s.io/klog/v2 v2.140.0\n"
        ")\n\n"
        "replace k8s.io/api => ./staging/src/k8s.io/api\n"
    )
    res = subprocess.run(
        [str(REPO_ROOT / "scripts" / "k8s-env-generate"), "--staging", str(gomod)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["k8s.io/api", "k8s.io/apimachinery", "k8s.io/ktesting"]


def test_k8s_env_generate_rejects_a_bad_version() -> None:
    res = subprocess.run(
        [str(REPO_ROOT / "scripts" / "k8s-env-generate"), "latest"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and res.stderr.startswith("usage: scripts/k8s-env-generate")


# ----------------------------------------------------------------------------- fixture policy


def _run_cluster_test_with(
    env_changes: Mapping[str, str | None], path_dirs: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run one cluster test in a child pytest with a doctored PATH and environment."""
    env = {**os.environ, "PATH": os.pathsep.join(path_dirs)}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    test = "tests/test_dev_cluster.py::test_kubectl_lists_the_system_namespaces"
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsfE", test]
    return subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _path_without_go() -> list[str]:
    return [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "go").exists()]


def test_cluster_tests_skip_without_go_or_binaries(tmp_path: Path) -> None:
    env = {"FASTOBS_K8S_BIN": str(tmp_path), "FASTOBS_REQUIRE_CLUSTER": None}
    res = _run_cluster_test_with(env, _path_without_go())
    assert res.returncode == 0, res.stdout
    assert "1 skipped" in res.stdout and "Go 1.26+ is not installed" in res.stdout


def test_cluster_tests_fail_without_go_when_required(tmp_path: Path) -> None:
    env = {"FASTOBS_K8S_BIN": str(tmp_path), "FASTOBS_REQUIRE_CLUSTER": "1"}
    res = _run_cluster_test_with(env, _path_without_go())
    assert res.returncode == 1, res.stdout
    # A failure in setup is reported as an error: either way the run fails, loudly.
    assert "1 error" in res.stdout and "Go 1.26+ is not installed" in res.stdout


def test_cluster_tests_fail_when_the_build_fails(tmp_path: Path) -> None:
    fake = tmp_path / "fake-go"
    fake.mkdir()
    (fake / "go").write_text("#!/bin/sh\necho 'go: k8s.io/kubernetes@v1.36.3: 403 Forbidden' >&2\nexit 1\n")
    (fake / "go").chmod(0o755)
    env = {"FASTOBS_K8S_BIN": str(tmp_path / "bin"), "FASTOBS_REQUIRE_CLUSTER": None}
    res = _run_cluster_test_with(env, [str(fake), *_path_without_go()])
    assert res.returncode == 1, res.stdout
    assert "1 error" in res.stdout
    assert "scripts/build-k8s failed" in res.stdout and "403 Forbidden" in res.stdout
