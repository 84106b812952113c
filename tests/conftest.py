"""Shared pytest fixtures: one real kube-apiserver + etcd per test run.

Where it sits: below every test that talks to Kubernetes. In: the binaries from
``scripts/build-k8s`` (built here once per run when Go is available). Out: the fixtures

* ``k8s`` (session): :class:`k8s_cluster.KubeCluster`, an admin view (kubeconfig, server,
  ca_file, token, env, ``kubectl()``, ``apply()``);
* ``ns`` (function): a fresh, uniquely named namespace;
* ``restricted`` (session): :class:`k8s_cluster.RestrictedIdentity`, a token user that can
  only get/list/watch configmaps in one namespace.

Invariant: the cluster is started at most once per run and always stopped at the end. It
lives in its own dir under :func:`k8s_cluster.runs_root` (never ``.dev-cluster``, never
pytest's temp root, whose old runs any other pytest run deletes); that dir is removed after
a clean run and kept, and named, when the start or any test failed. Tests that need it skip
when Go and prebuilt binaries are both missing, unless ``FASTOBS_REQUIRE_CLUSTER=1`` (CI)
turns that, and any build failure, into a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_cluster import Cluster as _Cluster
from k8s_cluster import (
    ClusterError,
    KubeCluster,
    RestrictedIdentity,
    bin_dir,
    binaries_present,
    build,
    new_run_dir,
    start,
    stop_started,
)

CLUSTER_FIXTURES = {"k8s", "ns", "restricted", "k8s_state"}
_availability = pytest.StashKey[tuple[str, str] | None]()
_kept_logs = pytest.StashKey[Path]()


def _needs_cluster(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    return item.get_closest_marker("cluster") is not None or bool(names & CLUSTER_FIXTURES)


def _check_binaries() -> tuple[str, str] | None:
    """Build if possible; returns None when usable, else ("skip"|"fail", reason)."""
    required = os.environ.get("FASTOBS_REQUIRE_CLUSTER") == "1"
    if shutil.which("go") is None:
        if binaries_present():
            return None
        reason = (
            f"Go 1.26+ is not installed and {bin_dir()} has no kube-apiserver/etcd (see docs/dev-cluster.md)"
        )
        return ("fail" if required else "skip", reason)
    res = build()
    if res.returncode == 0:
        return None
    output = (res.stderr + res.stdout).strip().splitlines()
    reason = "scripts/build-k8s failed:\n" + "\n".join(output[-40:])
    if binaries_present() and not required:
        return None  # an older build is still usable offline; CI insists on a fresh one
    return ("fail", reason)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build here, once, outside any test's timeout: a cold build takes minutes.
    if any(_needs_cluster(item) for item in session.items):
        session.config.stash[_availability] = _check_binaries()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not _needs_cluster(item):
        return
    verdict = item.config.stash.get(_availability, None)
    if verdict is None:
        return
    kind, reason = verdict
    if kind == "skip":
        pytest.skip(reason)
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="session")
def k8s_state(request: pytest.FixtureRequest) -> Iterator[_Cluster]:
    """The running cluster's full state (ports, pids, log paths); most tests want ``k8s``."""
    state_dir = new_run_dir()
    try:
        cluster = start(state_dir, die_with_parent=True)
    except ClusterError as exc:
        pytest.fail(
            f"the test cluster did not start; its logs are kept in {state_dir / 'logs'}\n{exc}", pytrace=False
        )
    try:
        yield cluster
    finally:
        survivors = stop_started(cluster)
        if survivors or request.session.testsfailed:
            request.config.stash[_kept_logs] = cluster.log_dir
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
        assert not survivors, f"cluster processes survived teardown: {survivors} (logs in {cluster.log_dir})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    kept = terminalreporter.config.stash.get(_kept_logs, None)
    if kept is not None:
        terminalreporter.write_line(f"the test cluster's logs are kept in {kept}")


@pytest.fixture(scope="session")
def k8s(k8s_state: _Cluster) -> KubeCluster:
    return KubeCluster.for_cluster(k8s_state)


@pytest.fixture(scope="session")
def restricted(k8s_state: _Cluster) -> RestrictedIdentity:
    return RestrictedIdentity.for_cluster(k8s_state)


@pytest.fixture
def ns(k8s: KubeCluster, request: pytest.FixtureRequest) -> str:
    """A new namespace named after the test. Never deleted: nothing would finalize it."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:48].strip("-")
    name = f"{stem or 't'}-{secrets.token_hex(4)}"
    k8s.kubectl("create", "namespace", name)
    return name
