"""The Lease client against the real apiserver: compare-and-swap, and deadlines that hold."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import k8s_cluster as kc
import pytest
from ha_harness import Api, Proxy

from fastobs.kube import KubeClient
from fastobs.lease import Conflict, Lease, LeaseClient, LeaseError, member_lease_name, micro_time

pytestmark = pytest.mark.cluster


async def _client(kubeconfig: Path, namespace: str) -> tuple[KubeClient, LeaseClient]:
    client = await KubeClient.connect(kubeconfig=str(kubeconfig), namespace=namespace)
    return client, LeaseClient(client, namespace)


def test_writes_are_compare_and_swap(k8s_state: kc.Cluster, ns: str) -> None:
    async def main() -> None:
        client, leases = await _client(k8s_state.kubeconfig, ns)
        try:
            assert await leases.get("nope", 5) is None
            now = micro_time(time.time())
            lease = Lease("l1", holder="a", duration=4, renew_time=now, labels={"x": "y"},
                          annotations={"k": "v"})
            created = await leases.create(lease, 5)
            assert created.holder == "a" and created.resource_version
            with pytest.raises(Conflict):
                await leases.create(Lease("l1", holder="b", duration=4), 5)
            stale = Lease.from_json(created.raw)  # the same read twice: one write wins, the other is refused
            created.holder = "a2"
            first = await leases.update(created, 5)
            stale.holder = "b"
            with pytest.raises(Conflict):
                await leases.update(stale, 5)
            fresh = await leases.get("l1", 5)
            assert fresh is not None and fresh.holder == "a2" and fresh.annotations == {"k": "v"}
            fresh.holder = "c"
            won = await leases.update(fresh, 5)
            assert won.holder == "c" and won.resource_version != first.resource_version
            listed = await leases.list("x=y", 5)
            assert [lease.name for lease in listed] == ["l1"]
            await leases.delete(won, 5)
            assert await leases.get("l1", 5) is None
        finally:
            await client.close()

    asyncio.run(main())


def test_a_request_into_a_cut_network_ends_by_its_deadline(k8s_state: kc.Cluster, ns: str,
                                                           tmp_path: Path) -> None:
    """Through a proxy that stops forwarding: the read fails by its 0.5 s deadline."""
    proxy = Proxy(k8s_state.port)
    config = Api(k8s_state).kubeconfig_via(proxy.port, tmp_path / "kubeconfig")

    async def main() -> float:
        client, leases = await _client(config, ns)
        try:
            await leases.get("warm", 5)  # a connection exists, then the network stops
            proxy.cut()
            began = time.monotonic()
            with pytest.raises(LeaseError) as caught:
                await leases.get("warm", 0.5)
            assert caught.value.kind == "timeout"
            return time.monotonic() - began
        finally:
            await client.close()

    try:
        took = asyncio.run(main())
    finally:
        proxy.close()
    print(f"\nthe read into the cut network failed after {took:.2f}s (deadline 0.5s)")
    assert took < 2.0


def test_member_lease_names_are_valid_and_distinct() -> None:
    assert member_lease_name("g", "pod-1") == "g-m-pod-1"
    odd = member_lease_name("g", "Host_Name.local-12")
    assert odd.startswith("g-m-host-name-local-12-") and odd != member_lease_name("g", "host-name-local-12")
    assert len(member_lease_name("g", "x" * 300)) < 80
