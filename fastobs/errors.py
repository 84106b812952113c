"""Errors and exit codes: the one place that says how fastobs can fail.

Where it sits: every stage raises these; ``cli`` turns them into one ``error: ...`` line
on stderr and the exit code named here (never a traceback).

Exception tree::

    FastobsError                 exit 1 unless a subclass says otherwise
    ├── UsageError               bad flags or arguments (oc's messages)
    ├── ConfigError              kubeconfig / credentials could not be loaded
    ├── ResourceError            discovery failed or the resource type is unknown
    │   └── KubectlError         printed as kubectl prints it, without an added "error: "
    ├── TemplateError            a template failed to parse (start-up) or to render (event)
    ├── CommandLimitError        --maximum-errors command failures reached
    ├── NamesError               the --names command failed
    ├── ListErrorLimit           exit 255: more list failures than --maximum-errors (oc: klog fatal)
    ├── ListenError              exit 255: the metrics address could not be bound (oc: klog fatal)
    ├── WorkerBootError          exit 3: workers keep dying during start-up
    └── GroupConfigError         exit 2: the replica group's Leases say another configuration
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_GROUP_CONFIG = 2
"""This process's --buckets/--shard-key/resource differ from its replica group's."""
EXIT_WORKER_BOOT = 3
"""Workers failed to start again and again; restarting them forever would only hide it."""
EXIT_FATAL = 255
"""oc observe's klog-fatal exits: list error limit, metrics bind failure."""


class FastobsError(Exception):
    """Base of every error fastobs reports as ``error: <message>``."""

    exit_code = EXIT_ERROR
    prefix = "error: "
    """What ``cli`` prints before the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(FastobsError):
    """Raised for invalid flags or arguments, with oc observe's wording."""


class ConfigError(FastobsError):
    """Raised when no usable cluster configuration (kubeconfig or in-cluster) is found."""


class ResourceError(FastobsError):
    """Raised when discovery fails or the server does not serve the resource type."""


class KubectlError(ResourceError):
    """Raised for what oc reports through kubectl's error printer, which adds no ``error: ``
    of its own: an unknown resource type, an unreachable server, an error answer during
    discovery (the message carries kubectl's own prefix, if any)."""

    prefix = ""


class TemplateError(FastobsError):
    """Raised when a template cannot be parsed, or (strict mode) cannot be rendered.

    A render error's ``message`` is oc's text, which may quote object data (JSONPath's dumps
    the whole object; the resource may be Secrets); ``summary`` says what failed and where in
    the template without quoting object data, or is empty when the language cannot promise
    that; ``withheld`` says whether ``message`` has object data that ``summary`` leaves out.
    The worker's ``runner`` decides which of the two the user sees.
    """

    def __init__(self, message: str, *, summary: str = "", withheld: bool = True) -> None:
        super().__init__(message)
        self.summary = summary
        self.withheld = withheld


class CommandLimitError(FastobsError):
    """Raised when failed commands reach ``--maximum-errors``."""


class NamesError(FastobsError):
    """Raised when the ``--names`` command fails or prints a malformed key."""


class ListErrorLimit(FastobsError):
    """Raised when list failures exceed ``--maximum-errors`` (oc exits 255 through klog)."""

    exit_code = EXIT_FATAL


class ListenError(FastobsError):
    """Raised when the ``--listen-addr`` address cannot be bound (oc exits 255)."""

    exit_code = EXIT_FATAL


class WorkerBootError(FastobsError):
    """Raised when worker processes keep failing during start-up."""

    exit_code = EXIT_WORKER_BOOT


class GroupConfigError(FastobsError):
    """Raised when the group named by ``--lease-name`` was started with another configuration
    (bucket count, shard key, resource, selectors): sharing it would run objects twice or never."""

    exit_code = EXIT_GROUP_CONFIG
