"""A group of replicas against the real API server: no overlap, no lost final state, failover.

Each scenario runs real fastobs processes sharing one lease group on a kube-apiserver of its
own (started with the ``ShardedListAndWatch`` feature gate, so the server-side filter can be
measured, and restartable without disturbing the rest of the suite), churns ConfigMaps, injects
its fault, and checks the per-invocation log the recorded command writes (``ha_harness``).
Timing is the design study's test timing: lease 4 s, renew deadline 3 s, retry 0.5 s, kill
grace 0.5 s. Every scenario prints its figures; the heavy versions live in ``bench/ha.py``.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import k8s_cluster as kc
import pytest
from ha_harness import Api, Group, Invocation, Loader, Timing, check, first_start, settle, stop_everything

pytestmark = pytest.mark.cluster
T = Timing()


@pytest.fixture(scope="module")
def ha_cluster(request: pytest.FixtureRequest) -> Iterator[kc.Cluster]:
    """A kube-apiserver of this module's own, with the sharded list and watch on."""
    state = kc.new_run_dir()
    failed_before = request.session.testsfailed
    try:
        cluster = kc.start(state, die_with_parent=True, feature_gates={"ShardedListAndWatch": True})
    except kc.ClusterError as exc:
        pytest.fail(f"the HA test cluster did not start; logs in {state / 'logs'}\n{exc}", pytrace=False)
    yield cluster
    kc.stop_started(cluster)
    if request.session.testsfailed == failed_before:
        shutil.rmtree(state, ignore_errors=True)
    else:
        print(f"\nthe HA test cluster's logs are kept in {cluster.log_dir}")


@pytest.fixture
def api(ha_cluster: kc.Cluster) -> Iterator[Api]:
    yield Api(ha_cluster)
    stop_everything()  # a test that failed half-way leaves no replica running


@pytest.fixture
def hans(api: Api, request: pytest.FixtureRequest) -> str:
    name = f"ha-{request.node.name[5:25].replace('_', '-').strip('-')}-{secrets.token_hex(3)}".lower()
    api.namespace(name)
    return name


def _print_report(title: str, group: Group, report_text: str, extra: str = "") -> None:
    print(f"\n== {title}: {report_text}{extra}")
    start = group.events[0][0] if group.events else 0.0
    for t, what in group.events:
        print(f"   t+{t - start:6.2f}s {what}")


def _assert_clean(group: Group, report: object) -> None:
    from ha_harness import Report

    assert isinstance(report, Report)
    detail = "\n".join(f"  {a.replica}/{a.incarnation} {a.type}@{a.rv} {a.start:.3f}-{a.end:.3f}  vs  "
                       f"{b.replica}/{b.incarnation} {b.type}@{b.rv} {b.start:.3f}-{b.end:.3f} ({a.key})"
                       for a, b in report.overlaps[:10])
    assert report.overlaps == [], f"runs of one key overlapped:\n{detail}\n{group.logs_tail()}"
    assert report.lost == [], f"lost final states: {report.lost[:10]}\n{group.logs_tail()}"
    assert report.unterminated == [], report.unterminated[:5]
    assert report.shared_epochs == [], report.shared_epochs
    assert report.stale == [], report.stale[:5]


def test_leader_failover_after_a_crash(api: Api, hans: str, tmp_path: Path) -> None:
    """B=1, two replicas, churn; SIGKILL the leader: the standby takes over, nothing overlaps,
    nothing is lost. Prints kill → first command of the standby against the goal
    lease + 1.2 × retry + 0.5 s."""
    group = Group(api, hans, tmp_path, lease="le", buckets=1, sleep_ms=(5, 30))
    loader = Loader(api, hans, 60, rate=40, delete_share=0.05)
    loader.create_all()
    group.add("a")
    group.add("b")
    group.start("a")
    group.wait_owned(["a"])
    group.start("b")
    group.wait_joined(["b"])
    loader.start()
    group.note("churn starts")
    time.sleep(2.0)
    killed = group.note("SIGKILL a (the leader)", group.replicas["a"].kill())
    holders = group.wait_owned(["b"], timeout=6 * T.lease_duration)
    group.note(f"bucket held by {holders[0]}")
    time.sleep(2.0)
    loader.stop()
    group.note("churn stops")
    report, _ = settle(group, set(f"{hans}/{n}" for n in loader.names))
    runs = group.invocations()
    took_over = first_start(runs, killed, replica="b")
    group.stop_all()
    assert took_over is not None, group.logs_tail()
    failover = took_over - killed
    _print_report("leader failover", group, report.summary(),
                  f"; kill → first command of the standby {failover:.2f}s (goal ≤ {T.failover_goal:.1f}s: "
                  f"{'met' if failover <= T.failover_goal else 'MISSED'})")
    _assert_clean(group, report)


def test_kill_pause_and_partition_of_replicas(api: Api, hans: str, tmp_path: Path) -> None:
    """Three replicas, eight buckets, churn with deletes and re-creations, then in turn: SIGKILL
    of one (restarted as a new process), SIGSTOP of another for twice the lease, and a proxy that
    cuts the third off for twice the lease. 0 overlaps, 0 lost final states; commands started
    by a replica after its Lease's deadline: 0."""
    group = Group(api, hans, tmp_path, lease="kps", buckets=8)
    loader = Loader(api, hans, 200, rate=40, delete_share=0.08)
    loader.create_all()
    for name in ("a", "b"):
        group.add(name)
    group.add("c", via_proxy=True)
    group.start("a", "b", "c")
    group.wait_owned(["a", "b", "c"])
    group.wait_joined(["a", "b", "c"])
    loader.start()
    group.note("churn starts")
    time.sleep(2.0)

    group.note("SIGKILL a", group.replicas["a"].kill())
    group.wait_owned(["b", "c"], timeout=6 * T.lease_duration)
    group.note("b and c hold every bucket")
    group.start("a")
    group.wait_owned(["a", "b", "c"], timeout=6 * T.lease_duration)
    group.note("a is back; balanced")

    stopped = group.note("SIGSTOP b (the parent only)", group.replicas["b"].signal(signal.SIGSTOP))
    group.wait_owned(["a", "c"], timeout=6 * T.lease_duration)
    group.note("a and c hold every bucket")
    time.sleep(max(0.0, stopped + 2 * T.lease_duration - time.time()))
    group.note("SIGCONT b", group.replicas["b"].signal(signal.SIGCONT))
    group.wait_owned(["a", "b", "c"], timeout=8 * T.lease_duration)
    group.note("b is back; balanced")

    cut = group.note("proxy cuts c off")
    group.proxies["c"].cut()
    group.wait_owned(["a", "b"], timeout=6 * T.lease_duration)
    group.note("a and b hold every bucket")
    time.sleep(max(0.0, cut + 2 * T.lease_duration - time.time()))
    group.proxies["c"].heal()
    healed = group.note("proxy heals")
    group.wait_owned(["a", "b", "c"], timeout=8 * T.lease_duration)
    rejoined = group.note("c is back; balanced")
    time.sleep(1.0)
    loader.stop()
    group.note(f"churn stops ({dict(loader.ops)})")
    report, _ = settle(group, set(f"{hans}/{n}" for n in loader.names))
    runs = group.invocations()
    scraped = {n: group.replicas[n].metrics() for n in ("a", "b", "c")}
    group.stop_all()
    transitions = "fastobs_group_transitions_total{{reason=\"{}\"}}".format
    fenced = {n: int(m.get(transitions("fenced"), 0)) for n, m in scraped.items()}
    fencing = {n: int(m.get("fastobs_group_fencing_seconds_count", 0)) for n, m in scraped.items()}
    takeovers = sum(int(m.get(transitions("takeover"), 0)) for m in scraped.values())
    # Nothing starts on a replica while it is cut off or paused, once its Lease's deadline passed.
    b_late = [i for i in runs
              if i.replica == "b" and stopped + T.renew_deadline < i.start < stopped + 2 * T.lease_duration]
    c_late = [i for i in runs if i.replica == "c" and cut + T.renew_deadline < i.start < healed]
    _print_report("kill, pause, partition", group, report.summary(),
                  f"; started after the deadline: paused b {len(b_late)}, cut-off c {len(c_late)}; "
                  f"heal → c balanced again {rejoined - healed:.2f}s; "
                  f"/metrics: fenced transitions {fenced}, fencing durations observed {fencing}, "
                  f"takeovers {takeovers}")
    _assert_clean(group, report)
    assert b_late == [] and c_late == []
    assert fenced["b"] >= 1 and fenced["c"] >= 1 and fencing["b"] >= 1 and fencing["c"] >= 1
    assert takeovers >= 3  # a's buckets after the kill, then b's, then c's


def test_a_frozen_process_tree_runs_nothing_it_no_longer_owns(api: Api, hans: str, tmp_path: Path) -> None:
    """B=1, b the leader, churn. SIGSTOP to b's whole process tree (the parent, its worker and
    its running commands, as a frozen pod) for twice the lease, then SIGCONT to all of it at
    once. a takes over meanwhile; once thawed, b starts no command under the epoch it lost (its
    worker stops what was running on its own, since its Lease's deadline has passed) and wins
    nothing back by compare-and-swap. 0 lost final states; 0 commands started after the thaw
    under an older epoch than one already started. Overlaps can only come from commands that
    were already running when the tree froze (no Lease scheme stops those: docs/ha.md); prints
    how many and how long they ran on after the thaw (b's worker stops those still running at
    once; a command whose work was done by the time of the thaw ends on its own first)."""
    group = Group(api, hans, tmp_path, lease="freeze", buckets=1, sleep_ms=(100, 400))
    loader = Loader(api, hans, 100, rate=30, delete_share=0.08)
    loader.create_all()
    group.add("a")
    group.add("b")
    group.start("b")
    group.wait_owned(["b"])
    group.start("a")
    group.wait_joined(["a", "b"])
    loader.start()
    group.note("churn starts")
    time.sleep(2.0)
    b = group.replicas["b"]
    deadline = time.monotonic() + 10
    while len(b.tree()) < 4 and time.monotonic() < deadline:  # parent, worker, a command and its sleep
        time.sleep(0.01)
    frozen, pids = b.freeze()
    group.note(f"SIGSTOP b's whole tree ({len(pids)} processes: the parent, its worker, commands)", frozen)
    group.wait_owned(["a"], timeout=6 * T.lease_duration, balanced=False)
    group.note("a holds every bucket")
    time.sleep(max(0.0, frozen + 2 * T.lease_duration - time.time()))
    thawed = group.note("SIGCONT to all of it", b.thaw(pids))
    time.sleep(2.0)
    loader.stop()
    group.note(f"churn stops ({dict(loader.ops)})")
    report, _ = settle(group, set(f"{hans}/{n}" for n in loader.names))
    runs = group.invocations()
    group.stop_all()
    late = [i for i in runs if i.replica == "b" and frozen + T.renew_deadline < i.start < thawed]
    was_frozen = {str(pid) for pid in pids}

    def frozen_mid_run(i: Invocation) -> bool:
        return i.replica == "b" and i.pid in was_frozen and i.start < thawed

    caught = [(x, y) for x, y in report.overlaps if frozen_mid_run(x) or frozen_mid_run(y)]
    ran_on = [max(i.end for i in pair if frozen_mid_run(i)) - thawed for pair in caught]
    mid_run = [i for i in runs if frozen_mid_run(i)]
    stopped = [i for i in mid_run if i.status == "killed"]
    _print_report("frozen process tree", group, report.summary(),
                  f"; b started while frozen past its deadline: {len(late)}; commands frozen mid-run: "
                  f"{len(mid_run)}, {len(stopped)} of them stopped by b's worker at the thaw (the others "
                  f"had done their work by then and ended first); overlaps of commands "
                  f"already running at the freeze: {len(caught)} (ran on {max(ran_on, default=0.0):.3f}s "
                  "after the thaw at most)")
    assert [pair for pair in report.overlaps if pair not in caught] == [], report.overlaps
    assert report.lost == [] and report.unterminated == [] and report.stale == [], report.summary()
    assert report.shared_epochs == [], report.shared_epochs
    assert late == []
    assert mid_run, "no command of b was running when its tree froze"


def _moved(before: dict[int, str], after: dict[int, str]) -> int:
    return sum(1 for b, h in after.items() if before.get(b, "").split("@")[0] != h.split("@")[0])


def test_scale_two_three_two_moves_only_what_it_must(api: Api, hans: str, tmp_path: Path) -> None:
    """B=16 under churn: a third replica joins, then leaves gracefully. Each change moves exactly
    the buckets it must (the newcomer's share, then its holdings), and a graceful move runs no
    (key, resourceVersion) twice."""
    group = Group(api, hans, tmp_path, lease="scale", buckets=16, sleep_ms=(10, 60))
    loader = Loader(api, hans, 160, rate=15, delete_share=0.05)
    loader.create_all()
    for name in ("a", "b", "c"):
        group.add(name)
    group.start("a", "b")
    two = group.wait_owned(["a", "b"])
    group.wait_joined(["a", "b"])
    loader.start()
    group.note("churn starts")
    time.sleep(2.0)
    group.start("c")
    three = group.wait_owned(["a", "b", "c"], timeout=60)
    joined = _moved(two, three)
    c_share = Counter(h.split("@")[0] for h in three.values())["c"]
    group.note(f"c joined: {joined} buckets moved, c holds {c_share}")
    time.sleep(2.0)
    group.replicas["c"].stop()
    back = group.wait_owned(["a", "b"], timeout=60)
    left = _moved(three, back)
    group.note(f"c left: {left} buckets moved")
    time.sleep(1.0)
    loader.stop()
    report, _ = settle(group, set(f"{hans}/{n}" for n in loader.names))
    runs = group.invocations()
    group.stop_all()
    twice = Counter((i.key, i.rv, i.type) for i in runs if i.finished)
    by_replicas = {k: {i.replica for i in runs if (i.key, i.rv, i.type) == k}
                   for k, n in twice.items() if n > 1}
    across = sum(1 for rs in by_replicas.values() if len(rs) > 1)
    _print_report("scale 2→3→2", group, report.summary(),
                  f"; moved on join {joined} (c's share), on leave {left} (c's holdings); "
                  f"(key, rv) run by two replicas: {across}")
    _assert_clean(group, report)
    assert joined == c_share and c_share in (5, 6)
    assert left == c_share
    assert across == 0


def test_restart_of_a_settled_group_reruns_nothing(api: Api, hans: str, tmp_path: Path) -> None:
    """Two replicas, four buckets, 300 settled objects. Stop both; meanwhile change one object,
    delete one and create one; start both again: exactly those three run (oc observe re-runs
    all 300). Then a rolling restart (a new replica in, an old one out, twice): nothing
    re-runs. Then SIGKILL both and start them again: still nothing re-runs."""
    group = Group(api, hans, tmp_path, lease="restart", buckets=4, sleep_ms=(1, 10))
    loader = Loader(api, hans, 300, rate=10)
    loader.create_all()
    group.add("a")
    group.add("b")
    group.start("a", "b")
    group.wait_owned(["a", "b"])
    every = set(f"{hans}/{n}" for n in loader.names)
    report, _ = settle(group, every)
    assert report.lost == [], report.lost[:5]
    first = len(group.invocations())
    for r in group.replicas.values():
        assert r.stop() == 0
    group.note(f"settled after {first} runs; both stopped (SIGTERM)")
    loader.counter += 1
    assert api.request("PATCH", f"/api/v1/namespaces/{hans}/configmaps/k00007", {"data": {"n": "x"}},
                       "application/merge-patch+json")[0] == 200
    assert api.request("DELETE", f"/api/v1/namespaces/{hans}/configmaps/k00011")[0] == 200
    assert loader.create("extra") == 201
    group.note("while down: k00007 changed, k00011 deleted, extra created")
    group.start("a", "b")
    group.wait_owned(["a", "b"])
    report, _ = settle(group, every | {f"{hans}/extra"})
    time.sleep(2.0)  # anything that would re-run has had time to
    after = group.invocations()[first:]
    reruns = sorted((i.key.split("/")[1], i.type) for i in after)
    group.note(f"restarted: {len(after)} runs: {reruns}")
    # A rolling restart, as a Deployment does it (maxSurge 1, maxUnavailable 0): a new replica
    # joins and takes its share, then an old one stops (SIGTERM) and hands its share over.
    rolled = len(group.invocations())
    for old_name, new_name, stays in (("a", "a2", "b"), ("b", "b2", "a2")):
        group.add(new_name)
        group.start(new_name)
        group.wait_owned([old_name, stays, new_name], timeout=8 * T.lease_duration)
        assert group.replicas[old_name].stop() == 0
        group.wait_owned([stays, new_name], timeout=8 * T.lease_duration)
        group.note(f"rolled: {new_name} in, {old_name} out")
    time.sleep(2.0)
    rolling_reruns = group.invocations()[rolled:]
    group.note(f"after the rolling restart: {len(rolling_reruns)} runs")
    old = set(group.holders().values())
    for r in group.replicas.values():
        r.kill()
    group.note("both SIGKILLed")
    second = len(group.invocations())
    group.start("a", "b")
    group.wait_owned(["a", "b"], timeout=8 * T.lease_duration, balanced=False, not_by=old)
    group.note("the new processes took every bucket over")
    time.sleep(2.0)
    crash_reruns = group.invocations()[second:]
    group.note(f"restarted after SIGKILL: {len(crash_reruns)} runs")
    report = check(group.invocations(), api.configmaps(hans), every | {f"{hans}/extra"})
    group.stop_all()
    _print_report("restart of a settled group", group, report.summary(),
                  f"; re-runs after a graceful restart: {len(after) - 3} (goal 0; oc observe: 300), "
                  f"after a rolling restart: {len(rolling_reruns)}, after SIGKILL: {len(crash_reruns)}")
    _assert_clean(group, report)
    # The change comes as Updated from the replay, or as Sync from the relist that follows it.
    assert [(k, "Updated" if t == "Sync" and k == "k00007" else t) for k, t in reruns] == \
        sorted([("extra", "Added"), ("k00007", "Updated"), ("k00011", "Deleted")]), reruns
    assert len(rolling_reruns) == 0
    assert len(crash_reruns) == 0


def test_apiserver_restart(api: Api, hans: str, tmp_path: Path, ha_cluster: kc.Cluster) -> None:
    """Two replicas, four buckets, churn; the API server is stopped for twice the lease and
    started again (same etcd: objects and resourceVersions survive, the watch cache does not).
    Every replica stops its commands at its renew deadline, nothing starts while the server is
    down, the buckets are owned again soon after it is back, and no final state is lost."""
    group = Group(api, hans, tmp_path, lease="apiserver", buckets=4, sleep_ms=(10, 60))
    loader = Loader(api, hans, 120, rate=15, delete_share=0.08)
    loader.create_all()
    group.add("a")
    group.add("b")
    group.start("a", "b")
    group.wait_owned(["a", "b"])
    group.wait_joined(["a", "b"])
    loader.start()
    group.note("churn starts")
    time.sleep(3.0)
    down = group.note("kube-apiserver SIGKILLed")
    took = kc.restart_apiserver(ha_cluster, down_for=2 * T.lease_duration, kill=True)
    ready = group.note(f"kube-apiserver ready again ({took:.1f}s to start)")
    owned = group.note(f"every bucket owned again: {group.owned_now()}",
                       group.wait_all_owned(timeout=12 * T.lease_duration))
    time.sleep(2.0)
    loader.stop()
    group.note(f"churn stops ({dict(loader.ops)}, {loader.errors} failed while the server was down)")
    report, _ = settle(group, set(f"{hans}/{n}" for n in loader.names))
    runs = group.invocations()
    group.stop_all()
    deadline = down + T.renew_deadline + T.kill_grace
    back = down + 2 * T.lease_duration  # the new kube-apiserver process starts then
    late = [i for i in runs if deadline < i.start < back]
    running = [i for i in runs
               if i.start < deadline < i.end and i.end > deadline + T.kill_grace and i.end < back]
    _print_report("apiserver restart", group, report.summary(),
                  f"; started while it was down (after the deadline): {len(late)}; "
                  f"ready → every bucket owned: {owned - ready:.2f}s (goal ≤ {T.failover_goal + 0.5:.1f}s)")
    _assert_clean(group, report)
    assert late == [] and running == []


def test_takeover_after_an_apiserver_restart_still_runs_the_deletes(
        api: Api, hans: str, tmp_path: Path, ha_cluster: kc.Cluster) -> None:
    """Two replicas, four buckets, 80 settled objects. b is cut off (a proxy) and the API server
    restarts (its watch cache, the history a replay needs, starts empty); while b stays cut
    off, four of b's objects are deleted and two changed. a takes b's buckets over: its replay
    from b's watermark gets "too old resource version", so it lists the objects as they were
    at that watermark (from etcd) and then relists: the four deletes and the two changes run
    on a. When b is back, it finds its buckets taken and forgets them. No final state lost."""
    from fastobs.buckets import Bucketer

    group = Group(api, hans, tmp_path, lease="takeover", buckets=4, sleep_ms=(1, 10))
    loader = Loader(api, hans, 80)
    loader.create_all()
    group.add("a")
    group.add("b", via_proxy=True)
    group.start("a", "b")
    holders = group.wait_owned(["a", "b"])
    group.wait_joined(["a", "b"])
    every = set(f"{hans}/{n}" for n in loader.names)
    report, _ = settle(group, every)
    assert report.lost == [], report.lost[:5]
    bucketer = Bucketer(4, "name")
    of_b = [n for n in loader.names
            if holders[bucketer.bucket(f"{hans}/{n}", hans, "")].startswith("b@")]
    gone, changed = of_b[:4], of_b[4:6]
    group.note(f"settled; b holds {sorted(b for b, h in holders.items() if h.startswith('b@'))}")
    group.proxies["b"].cut()
    cut = group.note("proxy cuts b off")
    took = kc.restart_apiserver(ha_cluster)
    group.note(f"kube-apiserver restarted ({took:.1f}s to start)")
    for name in gone:
        assert api.request("DELETE", f"/api/v1/namespaces/{hans}/configmaps/{name}")[0] == 200
    for name in changed:
        assert api.request("PATCH", f"/api/v1/namespaces/{hans}/configmaps/{name}", {"data": {"n": "x"}},
                           "application/merge-patch+json")[0] == 200
    group.note(f"while b is cut off: deleted {gone}, changed {changed}")
    group.wait_owned(["a"], timeout=8 * T.lease_duration, balanced=False)
    group.note("a holds every bucket")
    time.sleep(max(0.0, cut + 2 * T.lease_duration - time.time()))
    group.proxies["b"].heal()
    group.note("proxy heals")
    group.wait_owned(["a", "b"], timeout=8 * T.lease_duration)
    group.note("b is back; balanced")
    report, final = settle(group, every)
    runs = group.invocations()
    ran = {f"{hans}/{n}": [(i.type, i.replica) for i in runs if i.key == f"{hans}/{n}" and i.start > cut]
           for n in gone + changed}
    expired = group.replicas["a"].metrics().get("fastobs_group_history_expired_total", -1.0)
    a_log = group.replicas["a"].log()
    group.stop_all()
    _print_report("takeover after an apiserver restart", group, report.summary(),
                  f"; runs after the cut of the deleted and changed objects: {ran}; a's "
                  f"history_expired {expired:g}")
    assert "taking bucket" in a_log, group.logs_tail()
    _assert_clean(group, report)
    assert "listing the objects as they were then" in a_log
    assert all(ran[f"{hans}/{n}"] == [("Deleted", "a")] for n in gone), ran
    assert all(ran[f"{hans}/{n}"] and ran[f"{hans}/{n}"][-1][1] == "a" for n in changed), ran
    assert expired == 0


def test_one_replica_restarts_past_the_servers_history_and_with_resync_on_start(
        api: Api, hans: str, tmp_path: Path, ha_cluster: kc.Cluster) -> None:
    """One replica (B=1) on 40 settled objects. Stop it, restart the API server (its watch
    cache, the history a replay needs, starts empty), change one object and delete another,
    and compact etcd (what the API server does every 5 minutes: no list as of the watermark
    either); start the replica: it says the history is gone (log line and metric), runs the
    changed object and nothing it already ran, and --names catches the delete, as in oc. Then a
    restart with --resync-on-start runs every object again, as oc observe does."""
    names = tmp_path / "names.sh"
    loader = Loader(api, hans, 40)
    names.write_text("#!/bin/sh\n" + "".join(f"echo {hans}/{n}\n" for n in loader.names))
    names.chmod(0o755)
    group = Group(api, hans, tmp_path, lease="solo", buckets=1, sleep_ms=(1, 5),
                  extra=["--names", str(names)])
    loader.create_all()
    group.add("a")
    group.start("a")
    group.wait_owned(["a"])
    every = set(f"{hans}/{n}" for n in loader.names)
    report, _ = settle(group, every)
    assert report.lost == [], report.lost[:5]
    first = len(group.invocations())
    assert group.replicas["a"].stop() == 0
    took = kc.restart_apiserver(ha_cluster)
    group.note(f"settled after {first} runs; stopped; kube-apiserver restarted ({took:.1f}s)")
    assert api.request("PATCH", f"/api/v1/namespaces/{hans}/configmaps/k00003", {"data": {"n": "x"}},
                       "application/merge-patch+json")[0] == 200
    assert api.request("DELETE", f"/api/v1/namespaces/{hans}/configmaps/k00005")[0] == 200
    revision = kc.compact_etcd(ha_cluster)
    group.note(f"while down: k00003 changed, k00005 deleted; etcd compacted at {revision}")
    group.start("a")
    group.wait_owned(["a"])
    report, _ = settle(group, every)
    time.sleep(2.0)  # anything that would re-run has had time to
    after = group.invocations()[first:]
    reruns = sorted((i.key.split("/")[1], i.type) for i in after)
    metrics = group.replicas["a"].metrics()
    expired = metrics.get("fastobs_group_history_expired_total", 0.0)
    said = [line for line in group.replicas["a"].log().splitlines() if "no longer has the changes" in line]
    group.note(f"restarted: {len(after)} runs {reruns}; history expired {expired:g}; {len(said)} log line(s)")
    assert group.replicas["a"].stop() == 0
    second = len(group.invocations())
    group.replicas["a"].argv.insert(-2, "--resync-on-start")
    group.start("a")
    group.wait_owned(["a"])
    deadline = time.monotonic() + 60
    while len({i.key for i in group.invocations()[second:] if i.finished}) < len(every) - 1 \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    resynced = group.invocations()[second:]
    report = check(group.invocations(), api.configmaps(hans), every)
    group.stop_all()
    _print_report("one replica, restarts", group, report.summary(),
                  f"; after an API server restart: {len(after)} runs (the change and the delete; "
                  f"oc observe: 39 + the delete), history expired {expired:g}; with --resync-on-start: "
                  f"{len(resynced)} runs for {len(every) - 1} objects (and the --names delete)")
    _assert_clean(group, report)
    assert reruns == [("k00003", "Sync"), ("k00005", "Deleted")] or \
        reruns == [("k00003", "Updated"), ("k00005", "Deleted")], reruns
    assert expired >= 1 and len(said) >= 1, group.logs_tail()
    synced = [i for i in resynced if i.type != "Deleted"]  # --names reports k00005 at every start
    assert sorted(i.key for i in synced) == sorted(every - {f"{hans}/k00005"})
    assert {i.type for i in synced} == {"Sync"}


def _events_per_replica(group: Group) -> dict[str, dict[str, int]]:
    out = {}
    for name, r in group.replicas.items():
        m = r.metrics()
        out[name] = {fate: int(m.get(f'fastobs_group_events_total{{fate="{fate}"}}', 0))
                     for fate in ("owned", "foreign")}
        out[name]["server_filter"] = int(m.get("fastobs_group_server_filter", -1))
    return out


def _filtering_run(api: Api, ns: str, tmp_path: Path, filter_: str,
                   objects: int) -> tuple[Group, dict[str, dict[str, int]], dict[int, str], float]:
    group = Group(api, ns, tmp_path, lease=f"f-{filter_}", buckets=4, sleep_ms=(1, 5),
                  extra=["--shard-key", "uid", "--shard-filter", filter_])
    loader = Loader(api, ns, objects)
    loader.create_all()
    group.add("a")
    group.add("b")
    group.start("a", "b")
    group.wait_owned(["a", "b"])
    every = set(f"{ns}/{n}" for n in loader.names)
    settle(group, every)
    time.sleep(1.0)
    before = _events_per_replica(group)
    holders = group.holders()
    changes = group.note(f"settled; buckets {holders}")
    for name in loader.names:  # one change per object: the events the watch delivers
        loader.counter += 1
        api.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/{name}",
                    {"data": {"n": str(loader.counter)}}, "application/merge-patch+json")
    report, final = settle(group, every)
    after = _events_per_replica(group)
    group.stop_all()
    _assert_clean(group, report)
    counts = {r: {k: (v - before[r][k] if k != "server_filter" else v) for k, v in c.items()}
              for r, c in after.items()}
    return group, counts, holders, changes


def test_server_side_filtering_sends_each_replica_its_share(api: Api, hans: str, tmp_path: Path) -> None:
    """--shard-key uid on a server with ShardedListAndWatch: each replica receives only the
    events of its buckets (client-side filtering: every replica receives all of them), and the
    objects the server sends each replica are exactly those fastobs's FNV-1a ranges put in its
    buckets."""
    from fastobs.buckets import Bucketer

    objects = 200
    server_group, server, holders, changes = _filtering_run(api, hans, tmp_path / "server", "auto", objects)
    client_ns = hans + "-c"
    api.namespace(client_ns)
    _, client, _, _ = _filtering_run(api, client_ns, tmp_path / "client", "client", objects)
    print(f"\n== events received per replica while each of {objects} objects changes once "
          "(2 replicas, 4 buckets):")
    for mode, counts in (("server-side", server), ("client-side", client)):
        for name, c in sorted(counts.items()):
            print(f"   {mode}: {name} owned {c['owned']}, dropped {c['foreign']} "
                  f"(received {c['owned'] + c['foreign']}; server filter {c['server_filter']})")
    assert all(c["server_filter"] == 1 for c in server.values())
    assert all(c["server_filter"] == 0 for c in client.values())
    assert all(c["foreign"] == 0 for c in server.values()), server
    assert all(c["foreign"] > 0 for c in client.values()), client
    # Fidelity: what each replica ran is exactly its buckets' objects by fastobs's own hash.
    uids = {f"{hans}/{i['metadata']['name']}": i["metadata"]["uid"]
            for i in api.request("GET", f"/api/v1/namespaces/{hans}/configmaps")[1]["items"]}
    bucketer = Bucketer(4, "uid")
    # Updated, or Sync when the relist that follows a replica's catch-up came first.
    ran = [i for i in server_group.invocations() if i.start > changes and i.type in ("Updated", "Sync")]
    wrong = [i for i in ran if holders[bucketer.bucket(i.key, hans, uids[i.key])].split("@")[0] != i.replica]
    print(f"   fidelity: {len(ran)} changes ran, {len(wrong)} on a replica whose buckets do not hold them")
    assert len(ran) >= objects and wrong == []


def test_client_side_fallback_where_the_server_does_not_filter(k8s_state: kc.Cluster, tmp_path: Path) -> None:
    """The same on a server without the feature gate: fastobs sees no shardInfo, says so once,
    and filters on its own; nothing is lost."""
    api = Api(k8s_state)
    ns = f"ha-fallback-{secrets.token_hex(3)}"
    api.namespace(ns)
    group, counts, _, _ = _filtering_run(api, ns, tmp_path, "auto", 60)
    warned = [r.name for r in group.replicas.values() if "does not apply shardSelector" in r.log()]
    print(f"\n== fallback: {counts}; warned: {warned}")
    assert all(c["server_filter"] == 0 and c["foreign"] > 0 for c in counts.values())
    assert sorted(warned) == ["a", "b"]


def test_a_replica_of_another_configuration_exits_2(api: Api, hans: str, tmp_path: Path) -> None:
    """A group runs with --buckets 4; a replica started with --buckets 8 exits 2 with one line,
    quickly, having run nothing."""
    group = Group(api, hans, tmp_path, lease="cfg", buckets=4)
    Loader(api, hans, 5).create_all()
    group.add("a")
    group.start("a")
    group.wait_owned(["a"])
    odd = group.add("odd", extra=["--buckets", "8"])
    started = time.monotonic()
    odd.start()
    code = odd.wait(60)
    took = time.monotonic() - started
    runs = [i for i in group.invocations() if i.replica == "odd"]
    group.stop_all()
    errors = [line for line in odd.log().splitlines() if line.startswith("error:")]
    print(f"\n== mismatched replica: exit {code} after {took:.1f}s, {len(runs)} commands; {errors}")
    assert code == 2
    assert errors == [f"error: lease group 'cfg' is buckets=4,key=name,resource=configmaps,scope=ns/{hans}; "
                      f"this process is buckets=8,key=name,resource=configmaps,scope=ns/{hans} "
                      "(use another --lease-name to change that)"]
    assert runs == []
