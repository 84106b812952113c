"""Daemon: the parent's entry point; start-up order, signals and the staged shutdown.

Where it sits: called by ``cli.main`` with the parsed ``Settings`` (and never calls back
into ``cli``). It connects (``kube``), resolves the resource, makes the checks oc makes
after discovery (:func:`check_after_discovery`: ``-o`` and the template, ``--names``
without ``--delete``, the label and field selectors), starts the metrics server, the worker ``pool``
and the ``source``, then waits for the run's outcome: ``--once`` done, ``--exit-after``,
an error limit, a fatal error or a signal.

Shutdown is staged: stop intake (cancel the source), let running commands finish
(``--exit-after``/``--once``: as long as they take; SIGTERM/SIGINT: ``--shutdown-grace``,
then their process groups are killed), print the metrics if asked, exit. A second signal
kills at once. A command killed at shutdown is reported like any failed command (its
header, its output, an ``error:`` line saying it was killed) and counted.

With ``--lease-name`` the replica joins its group first (``coordinator``: an unknown
configuration exits 2 before anything runs), events pass through ``ownership``, and a
graceful stop releases every bucket with its watermark once the commands ended.

Invariant: whatever happens, no worker or command process outlives fastobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from dataclasses import replace
from subprocess import Popen

from . import logs, prefetch, spawn
from .buckets import Bucketer, shard_selector
from .coordinator import Coordinator, group_config, lease_namespace
from .engine import Engine
from .errors import FastobsError, GroupConfigError, UsageError
from .gocompat import format_go_duration
from .kube import KubeClient, Resource
from .metrics import Metrics
from .output import Output
from .ownership import Ownership
from .pool import discard_workers, launch_worker
from .prefetch import Prefetch
from .selector import SelectorError, unable_to_find, validate_field_selector, validate_label_selector
from .settings import Settings
from .source import Source
from .templates import compile_template

logger = logging.getLogger(__name__)

FOREVER = 10 * 365 * 86400.0


def run(settings: Settings, prefetched: Prefetch | None = None) -> int:
    """Run fastobs until it must stop; returns the exit code (raises FastobsError).
    ``prefetched``: what ``prefetch`` loaded, resolved and sent already (taken over)."""
    logs.setup(settings.run.log_format, settings.run.log_level, settings.run.verbosity)
    logger.debug("start-up: %s", prefetch.outcome or "no prefetch")
    spawn.no_inheritance()  # what our own parent left open stays out of --names commands
    try:
        try:
            import uvloop

            return uvloop.run(_main(settings, prefetched))
        except ImportError:  # pragma: no cover
            return asyncio.run(_main(settings, prefetched))
    finally:
        if prefetched is not None:
            prefetched.close()  # a request the source never took (start-up failed first)


async def _main(settings: Settings, prefetched: Prefetch | None) -> int:
    # Everything imported so far lives for the whole run: keep it out of every collection.
    # A list page is a large tree of short-lived dicts; with the default gen-0 threshold it
    # triggers thousands of collections per page, each walking the young objects again.
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    # Workers boot (their own imports) while credentials load and discovery runs; they
    # wait for their CONFIG, which needs what discovery tells (a namespaced resource?).
    prestarted = [launch_worker() for _ in range(_worker_count(settings))]
    try:
        return await _connected(settings, prestarted, prefetched)
    finally:
        discard_workers(prestarted)


def _worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


async def _connected(settings: Settings, prestarted: list[tuple[Popen[bytes], socket.socket]],
                     prefetched: Prefetch | None) -> int:
    client = await KubeClient.connect(
        kubeconfig=settings.kubeconfig,
        context=settings.context,
        namespace=settings.namespace,
        request_timeout=settings.request_timeout,
        server=settings.server,
        token=settings.token,
        insecure_skip_tls_verify=settings.insecure_skip_tls_verify,
        prefetched=prefetched,
    )
    try:
        resource = await client.resolve(settings.resource)
        settings = _finish_settings(settings, resource)
        return await _run(settings, client, resource, prestarted, prefetched)
    finally:
        await client.close()


def _finish_settings(settings: Settings, resource: Resource) -> Settings:
    """oc's post-discovery checks, and what the resource tells us about argv."""
    # kubectl ignores blanks around a field selector (and a blank one altogether).
    settings = replace(settings, field_selector=settings.field_selector.strip())
    check_after_discovery(settings, resource)
    return replace(settings, run=replace(settings.run, namespaced=resource.namespaced))


def check_after_discovery(settings: Settings, resource: Resource | None = None) -> None:
    """oc's checks that come after the resource is resolved, in oc's order: ``-o`` and the
    template, ``--names`` without ``--delete``, the label selector; then the field selector
    (fastobs's own flag), in the words kubectl uses for the server's same verdict.

    Raises :class:`UsageError`, or :class:`~fastobs.errors.TemplateError` for a template
    that does not parse. The template is compiled here only to be checked: each worker
    compiles its own.
    """
    run = settings.run
    compile_template(run.template, run.output_format, allow_missing=run.allow_missing_template_keys)
    if settings.names_command and not run.delete_command:
        raise UsageError("--delete and --names must both be specified")
    if settings.selector:
        try:
            validate_label_selector(settings.selector)
        except SelectorError as error:
            raise UsageError(str(error)) from None
    if settings.field_selector:
        try:
            validate_field_selector(settings.field_selector)
        except SelectorError as error:
            gvr = resource.gvr_string() if resource else settings.resource
            message = unable_to_find(gvr, settings.selector, settings.field_selector, str(error))
            raise UsageError(message) from None


async def _run(settings: Settings, client: KubeClient, resource: Resource,
               prestarted: list[tuple[Popen[bytes], socket.socket]], prefetched: Prefetch | None) -> int:
    if settings.run.delete_command and not settings.names_command:
        sys.stderr.write(logs.oc_line(
            f'If you are modifying resources outside of "{resource.gvr_string()}", you should '
            "use the --names command to ensure you don't miss deletions that occur while the command is "
            "not running.", "warning"))
    workers = _worker_count(settings)
    output = Output(quiet=settings.run.quiet, stream=settings.run.output_mode == "stream")
    metrics = Metrics(oc_metrics=bool(settings.listen_addr))
    ownership = None
    if settings.lease_name:
        bucketer = Bucketer(settings.buckets, settings.shard_key)
        ownership = Ownership(bucketer, kill_grace=settings.lease_kill_grace)
    engine = Engine(settings, workers=workers, metrics=metrics, output=output, ownership=ownership)
    metrics.set_state_provider(engine)
    server = None
    if settings.listen_addr:
        from .http import serve

        server = await serve(settings.listen_addr, metrics, engine)
        logger.debug("listening on %s at /metrics and /healthz", settings.listen_addr)
    bridge = _SourceMetrics(metrics)
    namespace = None if settings.all_namespaces or not resource.namespaced else client.namespace
    source = Source(
        client,
        resource,
        namespace=namespace,
        label_selector=settings.selector,
        field_selector=settings.field_selector,
        sink=engine,
        maximum_errors=settings.maximum_errors,
        read_timeout=settings.watch_read_timeout,
        on_stats=bridge.sync,
        shard_selector=ownership.selector if ownership is not None else None,
    )
    source.prefetched = prefetched  # its first list was sent already: the source reads it
    bridge.source = source
    engine.watch_activity = lambda: source.stats.last_activity
    coordinator = None
    if ownership is not None:
        coordinator = await _join_group(settings, client, resource, namespace, engine, source, ownership,
                                        metrics)
    # Workers boot while the source already lists: events wait in the queues until their
    # worker says HELLO, so start-up costs max(boot, first list), not their sum.
    # A dead worker's commands come to us, to be stopped before their keys run again.
    engine.pool.adopts_orphans = spawn.become_subreaper()
    engine.pool.prestarted.extend(prestarted)
    prestarted.clear()
    # Back-pressure from stdout: while the output cannot keep up, nothing new is dispatched
    # and the workers' results wait in their sockets (so a flood of lines waits in its pipe).
    engine.pool.may_dispatch = output.has_room
    output.on_full = engine.pool.hold_results
    output.on_room = engine.pool.release_results
    boot = asyncio.create_task(engine.pool.start())
    boot.add_done_callback(lambda t: _task_ended(t, engine))
    try:
        return await _supervise(settings, engine, source, output, metrics, coordinator)
    finally:
        boot.cancel()
        engine.pool.kill()
        if coordinator is not None:
            await coordinator.close()
        if server is not None:
            await server.close()


async def _join_group(settings: Settings, client: KubeClient, resource: Resource, namespace: str | None,
                      engine: Engine, source: Source, ownership: Ownership, metrics: Metrics) -> Coordinator:
    """Wire the replica into its group and take its first buckets (before any command runs)."""
    ownership.bind(engine=engine, pool=engine.pool, stream=source)
    ownership.server_side = await _server_filters(settings, source)
    if not ownership.server_side:
        source.clear_shard_selector()

    def rewound(rv: str | None, expired: bool) -> None:
        ownership.rewound(rv, expired)
        if rv is not None and not expired:
            engine.resumed()  # a watch from a watermark: what came before it already ran

    source.on_rewind = rewound
    source.on_seed = engine.seed_item
    source.on_seeded = ownership.seeded
    scope = f"ns/{namespace}" if namespace else "*"
    kind = resource.resource + (f".{resource.group}" if resource.group else "")
    coordinator = Coordinator(client, settings, ownership,
                              namespace=lease_namespace(settings, client.namespace),
                              config=group_config(settings, kind, scope))
    coordinator.on_failure = engine.fail
    coordinator.on_handover = metrics.group_handover
    coordinator.on_fencing = metrics.group_fencing
    coordinator.on_contact = source.retry_now
    metrics.set_group_provider(coordinator)
    engine.role = coordinator.role
    engine.group_loop = coordinator.loop_healthy
    # The commands see who runs them; the workers started before the group was joined.
    engine.pool.configure(replace(engine.pool.run_settings, identity=coordinator.holder))
    await coordinator.start()
    return coordinator


async def _server_filters(settings: Settings, source: Source) -> bool:
    """Whether the API server filters the buckets itself (``--shard-filter``, ``shardSelector``)."""
    if settings.shard_key == "name" or settings.shard_filter == "client":
        return False
    everything = shard_selector(range(settings.buckets), settings.buckets, settings.shard_key)
    if await source.server_filters(everything):
        logger.info("the API server filters the buckets (shardSelector on %s)", settings.shard_key)
        return True
    if settings.shard_filter == "server":
        raise UsageError("the API server does not apply shardSelector (it needs the ShardedListAndWatch "
                         "feature gate); use --shard-filter auto or client")
    logger.warning("the API server does not apply shardSelector: every replica receives every event "
                   "and drops those of other replicas' buckets")
    return False


async def _supervise(
    settings: Settings, engine: Engine, source: Source, output: Output, metrics: Metrics,
    coordinator: Coordinator | None,
) -> int:
    loop = asyncio.get_running_loop()
    signals: list[int] = []
    killing: list[asyncio.Task[None]] = []  # the loop keeps only a weak reference to a task

    def on_signal(sig: int) -> None:
        signals.append(sig)
        if len(signals) == 1:
            name = signal.Signals(sig).name
            logger.info("received %s: stopping intake, letting running commands finish", name)
            engine.finish(0)
        elif len(signals) == 2:
            logger.warning("received a second signal: killing running commands now")
            killing.append(asyncio.ensure_future(_kill_now(engine, output, sig)))
        else:  # a third signal: no more waiting for the killed commands' reports
            engine.pool.kill()
            output.close(timeout=1.0)  # what the reader takes at once; a stuck stdout is left
            os._exit(128 + sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    source_task = asyncio.create_task(source.run())
    source_task.add_done_callback(lambda t: _task_ended(t, engine))
    timers = _start_timers(settings, engine, source)
    exit_after = False
    try:
        try:
            code = await engine.outcome
            exit_after = engine.exit_after_fired
            error: FastobsError | None = None
        except FastobsError as exc:
            code, error = exc.exit_code, exc
        source_task.cancel()
        with contextlib.suppress(BaseException):
            await source_task
        grace = settings.shutdown_grace if signals or error else FOREVER
        await engine.pool.stop(grace)
        if coordinator is not None and not isinstance(error, GroupConfigError):
            await coordinator.shutdown()  # the commands ended: hand every bucket over
        # oc closes an open Sync block when --once is done, not when an error stops it.
        output.end_sync() if settings.once and error is None else output.flush()
        if settings.print_metrics_on_exit and not signals:
            output.stdout(metrics.exposition())
            output.flush()
        if exit_after:
            output.notice(f"Shutting down after {format_go_duration(settings.exit_after)} ...")
            output.flush()
        if error is not None:
            raise error
        return code
    finally:
        # Everything printed reaches stdout before fastobs exits (or cli prints an error);
        # a second signal still ends fastobs while a stuck stdout holds this up.
        await output.drain()
        for handle in timers.values():
            handle.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _kill_now(engine: Engine, output: Output, sig: int) -> None:
    """The second signal: commands are killed at once, each reported (header, output, error
    line) as it is killed; then exit 128+N."""
    try:
        await engine.pool.stop_now()
    finally:
        output.close(timeout=1.0)  # what the reader takes at once; a stuck stdout is left
        os._exit(128 + sig)


def _task_ended(task: asyncio.Task[None], engine: Engine) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        engine.fail(exc)


def _start_timers(settings: Settings, engine: Engine, source: Source) -> dict[str, asyncio.TimerHandle]:
    """``--exit-after`` and ``--resync-period``: the pending handle of each, by name, for
    cancelling at the end (the periodic one replaces its own entry each time it fires)."""
    loop = asyncio.get_running_loop()
    timers: dict[str, asyncio.TimerHandle] = {}
    if settings.exit_after > 0:

        def exit_after() -> None:
            engine.exit_after_fired = True
            engine.finish(0)

        timers["exit-after"] = loop.call_later(settings.exit_after, exit_after)
    if settings.resync_period > 0:

        def resync() -> None:
            engine.request_resync()
            source.request_relist()
            timers["resync"] = loop.call_later(settings.resync_period, resync)

        timers["resync"] = loop.call_later(settings.resync_period, resync)
    return timers


class _SourceMetrics:
    """Turns the source's counters into metric increments (the source knows no Prometheus)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.source: Source | None = None
        self.seen: dict[object, int] = {}

    def sync(self) -> None:
        if self.source is None:
            return
        st, seen, m = self.source.stats, self.seen, self.metrics
        for op, value in (("list", st.list_requests), ("watch", st.watch_requests)):
            for _ in range(value - seen.get(op, 0)):
                m.api_request(op)
            seen[op] = value
        for (op, kind), value in list(st.errors.items()):
            for _ in range(value - seen.get((op, kind), 0)):
                m.api_error(op, kind)
            seen[(op, kind)] = value
        for _ in range(st.undecodable - seen.get("undecodable", 0)):
            m.invalid_object("source")
        seen["undecodable"] = st.undecodable
