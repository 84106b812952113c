"""Settings: the frozen configuration every stage reads.

Where it sits: ``cli`` maps command-line flags onto one :class:`Settings`; the parent
(``daemon``, ``source``, ``sharder``, ``pool``, ``metrics``) reads all of it, and the
subset a worker needs (:class:`RunSettings`) travels to each worker at spawn time as
JSON (see ``protocol``).

Invariant: settings never change after start-up; every field has a default that
matches ``oc observe`` unless the field is a fastobs addition (marked *new*).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

OutputMode = Literal["grouped", "stream"]
ObjectChannel = Literal["env", "stdin", "file"]
LogFormat = Literal["text", "json"]
ShardKey = Literal["name", "uid", "namespace"]
ShardFilter = Literal["auto", "client", "server"]

DEBUG_VERBOSITY = 4
"""``--loglevel`` from which fastobs's debug log lines show (klog's debug level)."""
QUOTE_OBJECT_VERBOSITY = 8
"""``--loglevel`` from which a template that fails for an object quotes the whole object,
as oc always does. Below it only the object's key and what failed: the object may be a
Secret. 8 is where kubectl starts printing HTTP bodies, objects included."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What a worker needs to build and run one command (sent to workers as JSON)."""

    command: tuple[str, ...] = ()
    """The ``--`` command: executable then leading arguments; empty = none configured."""
    delete_command: tuple[str, ...] = ()
    """``--delete`` words; empty = none configured."""
    template: str = ""
    """Effective template text (``--template``, or the space-joined ``-a`` flags)."""
    output_format: str = "jsonpath"
    """Template language (``-o``): jsonpath, jsonpath-as-json, jsonpath-file, go-template..."""
    allow_missing_template_keys: bool = True
    type_env_var: str = ""
    object_env_var: str = ""
    object_channel: ObjectChannel = "env"
    """*new*: how the object reaches the command besides ``--object-env-var``:
    ``env`` (only the env var, oc's way), ``stdin`` (object JSON on stdin), ``file``
    (a temporary file whose path is in ``object_file_env_var``)."""
    object_file_env_var: str = "FASTOBS_OBJECT_FILE"
    retry_on_exit_code: int = 0
    retry_count: int = 2
    timeout: float = 0.0
    """*new*: per-command timeout in seconds; 0 = none (oc)."""
    kill_grace: float = 5.0
    """*new*: seconds between SIGTERM and SIGKILL when a command times out or at shutdown."""
    concurrency: int = 16
    """*new*: commands running at once per worker."""
    output_mode: OutputMode = "grouped"
    """*new*: grouped = a command's output printed together under its header when it
    ends; stream = each line as it comes, prefixed with the object key."""
    output_limit: int = 4 << 20
    """*new*: bytes of one command's output held at most (grouped mode: stdout and stderr
    of all its attempts together; stream mode: one line); the rest is dropped and a marker
    line says how much."""
    quiet: bool = False
    namespaced: bool = True
    """Whether the resource is namespaced (argv gets the namespace before the name)."""
    template_errors_quote_object: bool = False
    """Whether a template that fails for an object prints the whole object (oc always
    does; fastobs from ``--loglevel`` :data:`QUOTE_OBJECT_VERBOSITY`)."""
    object_dir: str = ""
    """The private directory of one worker's object files (``--object-channel=file``),
    made by the parent for each worker it starts, so that it can remove a dead worker's."""
    identity: str = ""
    """In a group of replicas: this process's holder (identity and incarnation), the
    commands' ``FASTOBS_IDENTITY``. It goes in the CONFIG frame because the workers start
    (during discovery) before the replica joins its group."""

    # --- logs: the parent's and the workers' alike
    log_format: LogFormat = "text"
    """*new*: ``--log-format``."""
    log_level: str = "info"
    """*new*: ``--log-level``."""
    verbosity: int = 0
    """``--loglevel``/``-v`` of oc (klog verbosity): debug logs from :data:`DEBUG_VERBOSITY`
    (among them the worker's ``retrying command: ...``, as oc logs at that level), objects
    in template errors from :data:`QUOTE_OBJECT_VERBOSITY`."""

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> RunSettings:
        data = dict(data)
        data["command"] = tuple(data.get("command", ()))
        data["delete_command"] = tuple(data.get("delete_command", ()))
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration of one fastobs run."""

    resource: str = ""
    """The resource argument as typed (``pods``, ``deploy``, ``foos.example.com``)."""
    run: RunSettings = field(default_factory=RunSettings)

    # --- connection (oc/kubectl global flags)
    kubeconfig: str = ""
    context: str = ""
    namespace: str = ""
    """``-n``; empty = the context's namespace, else ``default``."""
    all_namespaces: bool = False
    selector: str = ""
    field_selector: str = ""
    """*new*: ``--field-selector``."""
    request_timeout: float = 0.0
    """``--request-timeout``: seconds per API request; 0 = none."""
    server: str = ""
    """``-s/--server``: overrides the kubeconfig's server URL; empty = the kubeconfig's."""
    token: str = ""
    """``--token``: bearer token that overrides the kubeconfig's credentials; empty = none."""
    insecure_skip_tls_verify: bool = False
    """``--insecure-skip-tls-verify``: do not verify the server's certificate."""

    # --- deletes
    names_command: tuple[str, ...] = ()

    # --- lifecycle
    maximum_errors: int = 20
    once: bool = False
    exit_after: float = 0.0
    resync_period: float = 0.0
    print_metrics_on_exit: bool = False
    listen_addr: str = ":11251"
    shutdown_grace: float = 30.0
    """*new*: on SIGTERM/SIGINT, seconds running commands get before their process
    groups are killed."""

    # --- engine (*new*)
    workers: int = 0
    """Worker processes; 0 = the number of CPUs."""
    coalesce: bool = True
    backoff_base: float = 0.0
    """Base delay of the per-key requeue after a failed command; 0 = no requeue (oc)."""
    backoff_cap: float = 300.0
    backoff_attempts: int = 5
    max_pending: int = 10000
    """Events held in the queues (their object bytes in memory) before the source stops
    reading from the API server (back-pressure, in both coalescing modes)."""
    watch_read_timeout: float = 90.0
    """Seconds without a byte on the watch (events or bookmarks) before the connection
    is considered half-open and re-established."""

    # --- a group of replicas sharing the resource (*new*; see docs/ha.md)
    lease_name: str = ""
    """Joins the group of replicas named so; empty = one process alone, as oc."""
    lease_namespace: str = ""
    """Where the group's Leases live; empty = the pod's namespace in a cluster, else the
    namespace fastobs observes (or the context's)."""
    identity: str = ""
    """This replica's name in the group; empty = hostname-pid."""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    lease_kill_grace: float = 2.0
    """SIGTERM→SIGKILL for commands stopped because the Lease is lost or a bucket moves."""
    drain_timeout: float = 30.0
    """How long a bucket being handed over waits for its running commands."""
    buckets: int = 1
    shard_key: ShardKey = "name"
    shard_filter: ShardFilter = "auto"
    resync_on_start: bool = False

    @property
    def deletion_tracking(self) -> bool:
        """oc's rule: deletes are tracked when --delete, --names or --resync-period is set."""
        return bool(self.run.delete_command or self.names_command or self.resync_period > 0)
