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

import k8s_cluster as kc
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
        timeout=290,  # beyond the start's own deadline (k8s_cluster.START_DEADLINE)
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


# ----------------------------------------------------------------------------- start reliability

# Started in a child process: a cluster from a thread that then ends, then the child is killed.
_THREAD_THEN_KILL = """
import json, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import k8s_cluster as kc
box = {}
state = Path(sys.argv[2])
starter = threading.Thread(target=lambda: box.setdefault("c", kc.start(state, die_with_parent=True)))
starter.start()
starter.join()
c = box["c"]
seen = []
for _ in range(30):  # 3 s after the starting thread ended
    seen.append([p.poll() is None for p in c._procs.values()] + [kc.is_ready(c)])
    time.sleep(0.1)
report = {"pids": [c.apiserver_pid, c.etcd_pid], "data_dir": str(c.data_dir), "seen": seen}
print(json.dumps(report), flush=True)
time.sleep(600)
"""


@pytest.mark.cluster
def test_servers_outlive_the_thread_that_started_them_and_die_with_the_process(tmp_path: Path) -> None:
    # PR_SET_PDEATHSIG fires when the *thread* that forked a child exits: a cluster started
    # from a helper thread used to get SIGTERM the moment that thread returned.
    state = tmp_path / "cluster"
    child = subprocess.Popen(
        [sys.executable, "-c", _THREAD_THEN_KILL, str(REPO_ROOT / "tests"), str(state)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        report = json.loads(child.stdout.readline() or "{}")
        assert report, "the child did not start its cluster"
        good = sum(all(sample) for sample in report["seen"])
        print(f"both servers alive and /readyz 200 in {good} of {len(report['seen'])} samples (every 0.1 s)")
        assert good == len(report["seen"])
    finally:
        child.kill()  # a test run killed before its teardown
        child.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in report["pids"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    waited = 10 - (deadline - time.monotonic())
    print(f"servers gone {waited:.1f} s after the process was killed")
    assert not any(_alive(pid) for pid in report["pids"])
    # Nobody holds the locks now (the kernel lets go of a killed process's files a moment
    # after it turned zombie).
    data_dir = Path(report["data_dir"])
    while (kc.in_use(data_dir) or kc.in_use(state)) and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert kc.in_use(data_dir) is False and kc.in_use(state) is False
    kc._sweep_stale_data_dirs(data_dir.parent)  # what the next start does
    assert not data_dir.exists()
    assert kc.stop(state) == []


def _hold_in_child(path: Path) -> subprocess.Popen[bytes]:
    """A live process holding ``path``'s lock, like a cluster's servers do."""
    fd = kc._hold_lock(path)
    try:
        return subprocess.Popen(["sleep", "60"], pass_fds=(fd,))
    finally:
        os.close(fd)


def test_sweeps_delete_only_dirs_no_live_process_holds(tmp_path: Path) -> None:
    shm, runs = tmp_path / "shm", tmp_path / "runs"
    shm.mkdir()
    runs.mkdir()
    old = time.time() - 7 * 86400
    dirs = {}
    for parent, prefix in ((shm, kc.DATA_PREFIX), (runs, kc.RUN_PREFIX)):
        for kind in ("held", "free", "lockless-young", "lockless-old"):
            path = parent / f"{prefix}{kind}"
            path.mkdir()
            dirs[parent.name, kind] = path
    holders = [_hold_in_child(dirs[root, "held"]) for root in ("shm", "runs")]
    try:
        for root in ("shm", "runs"):
            os.close(kc._hold_lock(dirs[root, "free"]))  # its holder is gone
            for kind in ("held", "free", "lockless-old"):
                os.utime(dirs[root, kind], (old, old))
        kc._sweep_stale_data_dirs(shm)
        kc._sweep_dead_runs(runs)
        left = sorted(f"{root}/{kind}" for (root, kind), path in dirs.items() if path.exists())
        print(f"left after the sweeps: {left}")
        # A held dir stays however old it looks: its cluster is alive.
        assert left == ["runs/held", "runs/lockless-young", "shm/held", "shm/lockless-young"]
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_reserved_ports_are_kept_from_others_but_open_to_the_servers() -> None:
    with kc.reserved_ports(3) as ports:
        assert len(set(ports)) == 3
        for port in ports:
            with socket.socket() as plain, pytest.raises(OSError):
                plain.bind(("127.0.0.1", port))  # any other program: refused
        got = set()
        for _ in range(2000):  # bind(0), what every "free port" helper does
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                got.add(s.getsockname()[1])
        assert not got & set(ports)
        with socket.socket() as server:  # what Go's listeners do: SO_REUSEADDR, then listen
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", ports[0]))
            server.listen()
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", ports[1]))  # released at the end of the block


def _fake_bin(tmp_path: Path, etcd_script: str) -> Path:
    """A FASTOBS_K8S_BIN whose etcd is ``etcd_script`` and whose kube-apiserver is the real one."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "etcd").write_text(etcd_script)
    (fake / "etcd").chmod(0o755)
    (fake / "kube-apiserver").symlink_to(kc.bin_dir() / "kube-apiserver")
    return fake


def test_a_start_that_keeps_failing_says_so_and_keeps_every_attempts_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_bin(tmp_path, '#!/bin/sh\necho "fake etcd $*"\nexit 3\n')
    monkeypatch.setenv("FASTOBS_K8S_BIN", str(fake))
    said: list[str] = []
    state = tmp_path / "cluster"
    with pytest.raises(kc.ClusterError) as failure:
        kc.start(state, announce=said.append)
    message = str(failure.value)
    print(message.splitlines()[:4])
    logs = [state / "logs" / f"attempt-{n}" / "etcd.log" for n in (1, 2, 3)]
    for n, log in enumerate(logs, 1):
        assert f"attempt {n}: etcd exited with status 3 before it was ready (logs: {log.parent})" in message
    assert len([m for m in said if "starting again on fresh ports" in m]) == 2
    client_urls = {
        next(a for a in log.read_text().split() if a.startswith("--listen-client-urls=")) for log in logs
    }
    assert len(client_urls) == 3  # every attempt on fresh ports
    assert kc._servers_mentioning([f"{state}/"]) == [] and kc.in_use(state) is False


@pytest.mark.cluster
def test_a_failed_start_is_retried_on_fresh_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first etcd dies of SIGTERM before it could log anything: how the flaky starts looked.
    real_etcd = kc.bin_dir() / "etcd"
    marker = tmp_path / "killed-once"
    once = f'if [ ! -e {marker} ]; then touch {marker}; echo "$*"; kill -TERM $$; fi'
    fake = _fake_bin(tmp_path, f'#!/bin/sh\n{once}\nexec {real_etcd} "$@"\n')
    monkeypatch.setenv("FASTOBS_K8S_BIN", str(fake))
    said: list[str] = []
    with kc.running(tmp_path / "cluster", announce=said.append) as cluster:
        print(said, cluster.timings)
        assert kc.is_ready(cluster) and cluster.timings["attempts"] == 2
        first = cluster.log_dir / "attempt-1"
        assert said == [
            f"etcd was killed by SIGTERM before it was ready; starting again on fresh ports "
            f"(attempt 1 logs: {first})"
        ]
        assert (
            f"--listen-client-urls=http://127.0.0.1:{cluster.etcd_port}"
            not in (first / "etcd.log").read_text()
        )


@pytest.mark.cluster
def test_concurrent_starts_do_not_disturb_each_other_or_the_test_cluster(
    tmp_path: Path, k8s_state: Cluster
) -> None:
    # Several independent clusters starting and stopping at once, as on a shared machine.
    # FASTOBS_STRESS_STARTS / FASTOBS_STRESS_PARALLEL run more (docs/dev-cluster.md).
    starts = os.environ.get("FASTOBS_STRESS_STARTS", "3")
    parallel = os.environ.get("FASTOBS_STRESS_PARALLEL", "3")
    args = ["stress", "--starts", starts, "--parallel", parallel, "--out", str(tmp_path / "s")]
    res = subprocess.run(
        [str(DEV_CLUSTER), *args],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{starts} starts ({parallel} at a time)" in res.stdout and ": 0 failed" in res.stdout
    # The run's own cluster went on serving throughout, with the same servers and data.
    assert [p.poll() for p in k8s_state._procs.values()] == [None, None]
    assert kc.is_ready(k8s_state) and (k8s_state.data_dir / "etcd").is_dir()


def test_the_test_cluster_lives_outside_pytests_temp_root(
    k8s_state: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert k8s_state.state_dir.parent == kc.runs_root()
    assert not k8s_state.state_dir.is_relative_to(tmp_path_factory.getbasetemp().parent)
    assert kc.in_use(k8s_state.state_dir) and kc.in_use(k8s_state.data_dir)


def test_a_test_cluster_that_fails_to_start_names_its_kept_logs(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("etcd", "kube-apiserver"):
        (fake / name).write_text(f'#!/bin/sh\necho "fake {name} cannot start"\nexit 1\n')
        (fake / name).chmod(0o755)
    env = {"FASTOBS_K8S_BIN": str(fake), "FASTOBS_REQUIRE_CLUSTER": "1", "TMPDIR": str(tmp_path)}
    res = _run_cluster_test_with(env, _path_without_go())
    assert res.returncode == 1, res.stdout
    logs = next((tmp_path / f"fastobs-test-clusters-{os.getuid()}").glob("run-*/logs"))
    assert f"the test cluster did not start; its logs are kept in {logs}" in res.stdout
    assert "fake etcd cannot start" in (logs / "attempt-3" / "etcd.log").read_text()


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
