"""Metrics exposition and the HTTP endpoints.

The exposition tests read the exact text lines a scraper sees (oc's formats included);
the HTTP tests start the real aiohttp server on an ephemeral port and GET every endpoint
while the health answers flip.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastobs.errors import EXIT_FATAL, ListenError
from fastobs.http import Server, parse_listen_addr, serve
from fastobs.metrics import STAGE_BUCKETS, EngineState, LoopHistogram, Metrics, go_float, render


def _state(**changes: object) -> EngineState:
    base = EngineState(
        queue_depth={0: 3, 1: 0},
        oldest_pending_seconds={0: 1.5, 1: 0.0},
        running={0: 2, 1: 0},
        longest_running_seconds={0: 0.25, 1: 0.0},
        concurrency_limit=32,
        tracked_objects=100_000,
        initial_sync_done=True,
        watch_up=True,
        watch_last_activity=time.monotonic(),
        workers_alive=2,
        workers_total=2,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class FakeProvider:
    def __init__(self, state: EngineState) -> None:
        self.state = state
        self.calls = 0

    def engine_state(self) -> EngineState:
        self.calls += 1
        return self.state


def lines(m: Metrics) -> list[str]:
    return m.exposition().decode().splitlines()


def sample(m: Metrics, name_and_labels: str) -> str:
    """The value printed for one series, e.g. sample(m, 'observe_counts{type="Sync"}')."""
    prefix = name_and_labels + " "
    found = [line[len(prefix):] for line in lines(m) if line.startswith(prefix)]
    assert len(found) == 1, f"{name_and_labels}: {found}"
    return found[0]


def finish(m: Metrics, **changes: object) -> None:
    kwargs: dict[str, object] = dict(
        type_="Sync", lag_seconds=0.5, duration_seconds=0.2, result="success", reason="", code="",
        attempts=[(0, 0.2)],
    )
    kwargs.update(changes)
    m.command_finished(**kwargs)  # type: ignore[arg-type]


# -- oc observe's series ------------------------------------------------------------


def test_oc_counts_exact_lines() -> None:
    m = Metrics()
    m.event_received("Sync")
    m.event_received("Sync")
    m.event_received("Updated")
    text = lines(m)
    i = text.index("# TYPE observe_counts counter")
    assert text[i - 1] == "# HELP observe_counts Number of changes observed to the underlying resource."
    assert text[i + 1:i + 3] == ['observe_counts{type="Sync"} 2', 'observe_counts{type="Updated"} 1']


def test_oc_exec_summary_counts_attempts_in_truncated_milliseconds() -> None:
    m = Metrics()
    finish(m, attempts=[(0, 0.0129), (0, 0.0451)])
    finish(m, type_="Deleted", result="failure", reason="signal", code="SIGKILL", attempts=[(-1, 0.0019)])
    text = lines(m)
    assert "# HELP observe_exec_durations_milliseconds Item execution latency distributions." in text
    assert "# TYPE observe_exec_durations_milliseconds summary" in text
    assert 'observe_exec_durations_milliseconds_count{exit_code="0",type="Sync"} 2' in text
    assert 'observe_exec_durations_milliseconds_sum{exit_code="0",type="Sync"} 57' in text
    assert 'observe_exec_durations_milliseconds_count{exit_code="-1",type="Deleted"} 1' in text
    assert 'observe_exec_durations_milliseconds_sum{exit_code="-1",type="Deleted"} 1' in text
    assert not any("quantile" in line for line in text)


def test_oc_name_summary() -> None:
    m = Metrics()
    m.names_executed(exit_code=0, seconds=0.0305)
    m.names_executed(exit_code=2, seconds=1.0)
    assert sample(m, 'observe_name_exec_durations_milliseconds_count{exit_code="0"}') == "1"
    assert sample(m, 'observe_name_exec_durations_milliseconds_sum{exit_code="0"}') == "30"
    assert sample(m, 'observe_name_exec_durations_milliseconds_sum{exit_code="2"}') == "1000"
    assert "# HELP observe_name_exec_durations_milliseconds Name list execution latency distributions." in (
        lines(m))


def test_unused_oc_vectors_print_nothing() -> None:
    assert "observe_" not in Metrics().exposition().decode()


def test_oc_metrics_off_prints_no_observe_series() -> None:
    m = Metrics(oc_metrics=False)
    m.event_received("Sync")
    finish(m)
    m.names_executed(exit_code=0, seconds=0.1)
    text = m.exposition().decode()
    assert "observe_" not in text
    assert 'fastobs_events_total{type="Sync"} 1' in text


# -- fastobs's own counters and histograms --------------------------------------------


def test_counters_after_each_call() -> None:
    m = Metrics()
    m.event_received("Added")
    m.events_coalesced()
    m.events_coalesced(3)
    m.retried("immediate")
    m.retried("backoff")
    m.retried("backoff")
    m.api_request("watch")
    m.api_error("watch", "expired")
    m.relisted()
    m.worker_restarted(1)
    m.worker_restarted(1)
    assert sample(m, 'fastobs_events_total{type="Added"}') == "1"
    assert sample(m, "fastobs_events_coalesced_total") == "4"
    assert sample(m, 'fastobs_workqueue_retries_total{kind="immediate"}') == "1"
    assert sample(m, 'fastobs_workqueue_retries_total{kind="backoff"}') == "2"
    assert sample(m, 'fastobs_api_requests_total{op="watch"}') == "1"
    assert sample(m, 'fastobs_api_requests_total{op="list"}') == "0"
    assert sample(m, 'fastobs_api_errors_total{kind="expired",op="watch"}') == "1"
    assert sample(m, "fastobs_relists_total") == "1"
    assert sample(m, 'fastobs_worker_restarts_total{worker="1"}') == "2"


def test_command_finished_feeds_results_failures_and_histograms() -> None:
    m = Metrics()
    finish(m, duration_seconds=0.2)
    finish(m, result="failure", reason="exit", code="3", duration_seconds=7.0, lag_seconds=9.0,
           attempts=[(3, 3.0), (3, 4.0)])
    finish(m, result="failure", reason="timeout", code="", type_="Deleted")
    assert sample(m, 'fastobs_commands_total{result="success",type="Sync"}') == "1"
    assert sample(m, 'fastobs_commands_total{result="failure",type="Sync"}') == "1"
    assert sample(m, 'fastobs_commands_total{result="failure",type="Deleted"}') == "1"
    assert sample(m, 'fastobs_command_failures_total{code="3",reason="exit"}') == "1"
    assert sample(m, 'fastobs_command_failures_total{code="",reason="timeout"}') == "1"
    assert sample(m, 'fastobs_command_duration_seconds_bucket{result="failure",le="5"}') == "1"
    assert sample(m, 'fastobs_command_duration_seconds_bucket{result="failure",le="10"}') == "2"
    assert sample(m, 'fastobs_command_duration_seconds_count{result="success"}') == "1"
    assert sample(m, 'fastobs_command_end_lag_seconds_bucket{le="0.5"}') == "2"
    assert sample(m, 'fastobs_command_end_lag_seconds_bucket{le="10"}') == "3"
    assert sample(m, "fastobs_command_end_lag_seconds_sum") == "10"


def test_start_lag_histogram_buckets_from_1ms_to_10min() -> None:
    m = Metrics()
    m.command_started(lag_seconds=0.003)
    m.command_started(lag_seconds=700.0)
    buckets = [line for line in lines(m) if line.startswith("fastobs_command_start_lag_seconds_bucket")]
    assert buckets[0] == 'fastobs_command_start_lag_seconds_bucket{le="0.001"} 0'
    assert 'fastobs_command_start_lag_seconds_bucket{le="0.0025"} 0' in buckets
    assert 'fastobs_command_start_lag_seconds_bucket{le="0.005"} 1' in buckets
    assert buckets[-2] == 'fastobs_command_start_lag_seconds_bucket{le="600"} 1'
    assert buckets[-1] == 'fastobs_command_start_lag_seconds_bucket{le="+Inf"} 2'
    assert sample(m, "fastobs_command_start_lag_seconds_count") == "2"


def test_loop_histogram_exposes_what_prometheus_client_histogram_does() -> None:
    """The per-command histograms are kept without prometheus_client's Histogram (its lock
    and bucket walk cost the completion path): same observations, same exposition."""
    from prometheus_client import CollectorRegistry, Histogram

    ours_reg, theirs_reg = CollectorRegistry(), CollectorRegistry()
    ours = LoopHistogram("x_seconds", "help", ["stage"], buckets=STAGE_BUCKETS, registry=ours_reg)
    theirs = Histogram("x_seconds", "help", ["stage"], buckets=STAGE_BUCKETS, registry=theirs_reg)
    # Bounds themselves (a value equal to a bound is in that bucket), zero, between bounds,
    # past the last bound, and a second label value.
    values = [0.0, 0.0001, 0.00010001, 0.001, 0.0025, 0.7, 600.0, 600.5, 1e9, *STAGE_BUCKETS]
    for i, v in enumerate(values):
        stage = "queue" if i % 3 else "spawn"
        ours.labels(stage=stage).observe(v)
        theirs.labels(stage=stage).observe(v)
    text = render(ours_reg).decode()
    print(text.splitlines()[2], "...", len(text.splitlines()), "lines")
    assert 'x_seconds_bucket{stage="queue",le="0.0001"} ' in text
    assert text == render(theirs_reg).decode()


def test_alerting_series_exist_at_zero_before_anything_happens() -> None:
    m = Metrics()
    for series in [
        'fastobs_commands_total{result="failure",type="Sync"}',
        'fastobs_commands_total{result="success",type="Deleted"}',
        'fastobs_events_total{type="Deleted"}',
        'fastobs_workqueue_retries_total{kind="backoff"}',
        'fastobs_api_errors_total{kind="forbidden",op="list"}',
        "fastobs_relists_total",
        "fastobs_events_coalesced_total",
    ]:
        assert sample(m, series) == "0", series


def test_no_created_series_and_build_info() -> None:
    m = Metrics(version="9.8.7")
    text = lines(m)
    assert not any("_created" in line for line in text)
    [info] = [line for line in text if line.startswith("fastobs_build_info{")]
    assert info.startswith('fastobs_build_info{python_version="3.') and info.endswith(',version="9.8.7"} 1')


def test_process_and_platform_collectors_are_registered() -> None:
    names = {line.split(" ")[2] for line in lines(Metrics()) if line.startswith("# TYPE ")}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"} <= names


def test_exposition_parses_as_prometheus_text() -> None:
    m = Metrics()
    m.set_state_provider(FakeProvider(_state()))
    m.event_received("Sync")
    finish(m)
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    assert families["fastobs_workqueue_depth"].type == "gauge"
    assert families["fastobs_command_start_lag_seconds"].type == "histogram"
    assert families["observe_exec_durations_milliseconds"].type == "summary"


def test_fresh_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.relisted()
    assert sample(a, "fastobs_relists_total") == "1"
    assert sample(b, "fastobs_relists_total") == "0"


# -- scrape-time gauges ----------------------------------------------------------------


def test_gauges_come_from_the_provider_at_scrape_time() -> None:
    m = Metrics()
    provider = FakeProvider(_state())
    m.set_state_provider(provider)
    assert sample(m, 'fastobs_workqueue_depth{worker="0"}') == "3"
    assert sample(m, 'fastobs_workqueue_oldest_pending_seconds{worker="0"}') == "1.5"
    assert sample(m, 'fastobs_commands_running{worker="0"}') == "2"
    assert sample(m, 'fastobs_workqueue_longest_running_processor_seconds{worker="0"}') == "0.25"
    assert sample(m, "fastobs_concurrency_limit") == "32"
    assert sample(m, "fastobs_tracked_objects") == "100000"
    assert sample(m, "fastobs_initial_sync_done") == "1"
    assert sample(m, "fastobs_watch_up") == "1"
    assert sample(m, "fastobs_workers_alive") == "2"
    assert sample(m, "fastobs_workers_total") == "2"
    provider.state = _state(queue_depth={0: 0, 1: 7}, initial_sync_done=False, watch_up=False,
                            tracked_objects=1_500_000, workers_alive=1)
    assert sample(m, 'fastobs_workqueue_depth{worker="1"}') == "7"
    assert sample(m, "fastobs_initial_sync_done") == "0"
    assert sample(m, "fastobs_watch_up") == "0"
    assert sample(m, "fastobs_tracked_objects") == "1.5e+06"
    assert sample(m, "fastobs_workers_alive") == "1"


def test_one_provider_call_per_scrape() -> None:
    m = Metrics()
    provider = FakeProvider(_state())
    m.set_state_provider(provider)
    m.exposition()
    m.exposition()
    assert provider.calls == 2


def test_watch_silence_is_seconds_since_last_activity() -> None:
    m = Metrics()
    m.set_state_provider(FakeProvider(_state(watch_last_activity=time.monotonic() - 42.0)))
    assert 42.0 <= float(sample(m, "fastobs_watch_silence_seconds")) < 60.0


def test_watch_silence_counts_from_start_when_the_watch_never_spoke() -> None:
    m = Metrics()
    m._started -= 100.0  # as if fastobs had started 100 s ago
    m.set_state_provider(FakeProvider(_state(watch_last_activity=0.0)))
    assert 100.0 <= float(sample(m, "fastobs_watch_silence_seconds")) < 120.0


def test_worker_restarts_exist_at_zero_for_every_configured_worker() -> None:
    m = Metrics()
    m.set_state_provider(FakeProvider(_state(workers_total=3)))
    m.worker_restarted(2)
    assert sample(m, 'fastobs_worker_restarts_total{worker="0"}') == "0"
    assert sample(m, 'fastobs_worker_restarts_total{worker="1"}') == "0"
    assert sample(m, 'fastobs_worker_restarts_total{worker="2"}') == "1"


def test_without_provider_state_gauges_are_absent() -> None:
    text = Metrics().exposition().decode()
    assert "fastobs_workqueue_depth" not in text
    assert "fastobs_watch_up" not in text


def test_a_failing_provider_leaves_the_counters_scrapable(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def engine_state(self) -> EngineState:
            raise RuntimeError("boom")

    m = Metrics()
    m.set_state_provider(Broken())
    m.relisted()
    assert sample(m, "fastobs_relists_total") == "1"
    assert "fastobs_watch_up" not in m.exposition().decode()
    assert "boom" in caplog.text


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (1.0, "1"), (2.0, "2"), (-1.0, "-1"), (0.5, "0.5"), (0.001, "0.001"), (1e-05, "1e-05"),
     (0.0001, "0.0001"), (600.0, "600"), (999999.0, "999999"), (1e6, "1e+06"), (1234567.0, "1.234567e+06"),
     (123456.5, "123456.5"), (-2.5e-7, "-2.5e-07"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"),
     (float("nan"), "NaN"), (1.7e308, "1.7e+308"),
     (-0.0, "0")],  # expfmt's writeFloat special-cases zero, where strconv and fmt print "-0"
)
def test_values_print_as_go_prints_them(value: float, text: str) -> None:
    assert go_float(value) == text


# -- HTTP ------------------------------------------------------------------------------


@dataclass
class FakeHealth:
    synced: bool = False
    watching: bool = False
    workers: bool = True
    raises: set[str] = field(default_factory=set)
    role: str | None = None
    group_loop: bool = True

    def _maybe_raise(self, name: str) -> None:
        if name in self.raises:
            raise RuntimeError(f"{name} exploded")

    def initial_sync_done(self) -> bool:
        self._maybe_raise("initial_sync_done")
        return self.synced

    def watch_up(self) -> bool:
        self._maybe_raise("watch_up")
        return self.watching

    def workers_healthy(self) -> bool:
        self._maybe_raise("workers_healthy")
        return self.workers

    def group_role(self) -> str | None:
        return self.role

    def group_healthy(self) -> bool:
        return self.group_loop


Get = Callable[[str], Awaitable[tuple[int, str, str]]]


def run_server(
    body: Callable[[Server, Get, Metrics, FakeHealth], Awaitable[None]], addr: str = "127.0.0.1:0",
) -> None:
    async def main() -> None:
        metrics, health = Metrics(), FakeHealth()
        server = await serve(addr, metrics, health)
        try:
            async with aiohttp.ClientSession() as session:
                async def get(path: str) -> tuple[int, str, str]:
                    async with session.get(f"http://127.0.0.1:{server.port}{path}") as r:
                        return r.status, await r.text(), r.headers["Content-Type"]

                await body(server, get, metrics, health)
        finally:
            await server.close()

    asyncio.run(main())


def test_metrics_endpoint_serves_the_exposition() -> None:
    async def body(server: Server, get: Get, metrics: Metrics, health: FakeHealth) -> None:
        assert server.port > 0
        metrics.event_received("Sync")
        metrics.event_received("Sync")
        status, text, ctype = await get("/metrics")
        assert status == 200
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        assert 'observe_counts{type="Sync"} 2\n' in text
        metrics.event_received("Sync")
        assert 'observe_counts{type="Sync"} 3\n' in (await get("/metrics"))[1]

    run_server(body)


def test_healthz_as_oc_while_the_initial_sync_flips() -> None:
    async def body(server: Server, get: Get, metrics: Metrics, health: FakeHealth) -> None:
        failed = "[-]ready failed: reason withheld\nhealthz check failed\n"
        assert (await get("/healthz"))[:2] == (500, failed)
        assert (await get("/healthz?verbose"))[:2] == (500, failed)
        assert (await get("/healthz/ready"))[:2] == (500, "internal server error: waiting for initial sync\n")
        health.synced = True
        status, text, ctype = await get("/healthz")
        assert (status, text) == (200, "ok")
        assert ctype == "text/plain; charset=utf-8"
        assert (await get("/healthz?verbose"))[:2] == (200, "[+]ready ok\nhealthz check passed\n")
        assert (await get("/healthz/ready"))[:2] == (200, "ok")
        health.synced = False
        assert (await get("/healthz"))[0] == 500

    run_server(body)


def test_readyz_needs_initial_sync_and_watch() -> None:
    async def body(server: Server, get: Get, metrics: Metrics, health: FakeHealth) -> None:
        status, text, _ = await get("/readyz")
        assert status == 500
        assert text == ("[-]initial-sync failed: waiting for initial sync\n"
                        "[-]watch failed: watch is not connected\nreadyz check failed\n")
        health.synced = True
        status, text, _ = await get("/readyz")
        assert (status, text) == (500, "[+]initial-sync ok\n[-]watch failed: watch is not connected\n"
                                       "readyz check failed\n")
        health.watching = True
        assert (await get("/readyz"))[:2] == (200, "ok")
        assert (await get("/readyz?verbose"))[:2] == (200, "[+]initial-sync ok\n[+]watch ok\n"
                                                            "readyz check passed\n")
        health.watching = False
        assert (await get("/readyz"))[0] == 500

    run_server(body)


def test_livez_ignores_the_api_server_and_follows_the_workers() -> None:
    async def body(server: Server, get: Get, metrics: Metrics, health: FakeHealth) -> None:
        # Not synced, watch down: an API outage. Liveness must still pass.
        assert (await get("/livez"))[:2] == (200, "ok")
        health.workers = False
        assert (await get("/livez"))[:2] == (
            500, "[-]workers failed: a worker stopped answering heartbeats\nlivez check failed\n")
        health.workers = True
        assert (await get("/livez?verbose"))[:2] == (200, "[+]workers ok\nlivez check passed\n")

    run_server(body)


def test_readyz_role_and_owner_in_a_group_of_replicas() -> None:
    """A standby stays ready (a rolling update must go on) and says so in ?verbose;
    /readyz/owner is ready only while the replica owns buckets; /livez adds the member loop."""
    async def body(server: Server, get: Get, metrics: Metrics, health: FakeHealth) -> None:
        health.synced = health.watching = True
        assert (await get("/readyz/owner"))[:2] == (
            500, "[-]owner failed: not in a group of replicas\nreadyz check failed\n")
        health.role = "standby"
        assert (await get("/readyz"))[:2] == (200, "ok")
        assert (await get("/readyz?verbose"))[:2] == (
            200, "[+]initial-sync ok\n[+]watch ok\n[+]role: standby ok\nreadyz check passed\n")
        assert (await get("/readyz/owner"))[:2] == (500, "[-]owner failed: standby\nreadyz check failed\n")
        health.role = "owner of 5 of 16 buckets"
        assert (await get("/readyz/owner"))[:2] == (200, "ok")
        assert "[+]role: owner of 5 of 16 buckets ok\n" in (await get("/readyz?verbose"))[1]
        assert (await get("/livez?verbose"))[:2] == (200, "[+]workers ok\n[+]group ok\nlivez check passed\n")
        health.group_loop = False
        assert (await get("/livez"))[:2] == (
            500, "[+]workers ok\n[-]group failed: the member loop stopped running\nlivez check failed\n")

    run_server(body)


def test_a_raising_health_check_fails_the_check_not_the_server(caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: Server, get: Get, metrics: Metrics, health: FakeHealth) -> None:
        health.synced = health.watching = True
        health.raises = {"watch_up", "workers_healthy"}
        assert (await get("/readyz"))[0] == 500
        assert (await get("/livez"))[0] == 500
        assert (await get("/healthz"))[:2] == (200, "ok")

    run_server(body)
    assert "watch_up exploded" in caplog.text


def test_unknown_paths_are_404() -> None:
    async def body(server: Server, get: Get, metrics: Metrics, health: FakeHealth) -> None:
        assert (await get("/debug/unknown"))[0] == 404

    run_server(body)


def test_empty_host_listens_on_every_interface() -> None:
    async def body(server: Server, get: Get, metrics: Metrics, health: FakeHealth) -> None:
        assert (await get("/healthz/ready"))[0] == 500  # reached through 127.0.0.1

    run_server(body, addr=":0")


def test_close_stops_listening() -> None:
    async def main() -> None:
        server = await serve("127.0.0.1:0", Metrics(), FakeHealth())
        port = server.port
        await server.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

    asyncio.run(main())


def test_bind_conflict_is_oc_listen_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        addr = f"127.0.0.1:{port}"

        async def main() -> None:
            await serve(addr, Metrics(), FakeHealth())

        with pytest.raises(ListenError) as caught:
            asyncio.run(main())
    assert caught.value.message == (
        f'Unable to listen on "{addr}": listen tcp {addr}: bind: address already in use')
    assert caught.value.exit_code == EXIT_FATAL


@pytest.mark.parametrize(
    ("addr", "message"),
    [("11251", 'Unable to listen on "11251": listen tcp: address 11251: missing port in address'),
     ("127.0.0.1:99999", 'Unable to listen on "127.0.0.1:99999": listen tcp: address 127.0.0.1:99999: '
                         "invalid port"),
     ("::1:80", 'Unable to listen on "::1:80": listen tcp: address ::1:80: too many colons in address')],
)
def test_malformed_addresses_are_listen_errors(addr: str, message: str) -> None:
    async def main() -> None:
        await serve(addr, Metrics(), FakeHealth())

    with pytest.raises(ListenError) as caught:
        asyncio.run(main())
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("addr", "parsed"),
    [(":11251", ("", 11251)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:8080", ("::1", 8080)),
     ("localhost:80", ("localhost", 80))],
)
def test_parse_listen_addr(addr: str, parsed: tuple[str, int]) -> None:
    assert parse_listen_addr(addr) == parsed


# -- a real fastobs against the real API server ---------------------------------------------




def worker_pids(parent: int) -> list[int]:
    pids = []
    for task in os.listdir(f"/proc/{parent}/task"):
        children = open(f"/proc/{parent}/task/{task}/children").read().split()
        for pid in map(int, children):
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            if b"fastobs.worker" in cmdline:
                pids.append(pid)
    return pids


@pytest.mark.cluster
def test_real_fastobs_health_endpoints_and_worker_restart_metrics(k8s: Any, ns: str, tmp_path: Path) -> None:
    from fastobs_run import configmap, free_port, http_get, recorder, start_fastobs, wait_until

    rec = recorder(tmp_path)
    k8s.apply(configmap("one", ns))
    port = free_port()
    proc = start_fastobs(k8s.env, "configmaps", "-n", ns, "--workers=2", f"--listen-addr=127.0.0.1:{port}",
                         "--", str(rec.path))
    try:
        wait_until("/healthz ok", lambda: http_get(port, "/healthz") == (200, "ok"))
        assert http_get(port, "/healthz?verbose") == (200, "[+]ready ok\nhealthz check passed\n")
        assert http_get(port, "/healthz/ready") == (200, "ok")
        wait_until("/readyz ok", lambda: http_get(port, "/readyz") == (200, "ok"))
        assert http_get(port, "/livez") == (200, "ok")

        victim = worker_pids(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)

        def restarted() -> bool:
            text = http_get(port, "/metrics")[1].splitlines()
            restarts = [line for line in text if line.startswith("fastobs_worker_restarts_total{")]
            return (sum(float(line.split()[-1]) for line in restarts) == 1
                    and "fastobs_workers_alive 2" in text)

        wait_until("a replaced worker on /metrics", restarted)
        wait_until("/livez ok after the restart", lambda: http_get(port, "/livez") == (200, "ok"))
        assert victim not in worker_pids(proc.pid)
        k8s.apply(configmap("two", ns))
        rec.wait_for(lambda calls: any("two" in c["argv"] for c in calls))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
