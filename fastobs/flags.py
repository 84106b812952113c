"""Flags: the command-line flag table and the ``--help`` text made from it.

Where it sits: before ``cli``, which parses argv against :data:`FLAGS` (pflag's way) and
prints :func:`help_text` for ``-h/--help``. Also read by the tests that compare the parser
with pflag and the usage document with the table.

In: nothing (a constant table). Out: :data:`FLAGS` (one :class:`Flag` per flag, in help
order), the lookups by long name and shorthand, and the help and usage texts.

Invariant: every ``oc observe`` flag keeps its name, shorthand, default, value syntax and
deprecation text; fastobs's own flags (group ``new``) never reuse an oc spelling; the help
lists every flag that is not hidden, with its default as pflag prints it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Literal

from fastobs.gocompat import format_go_duration, go_quote

__all__ = ["BY_NAME", "BY_SHORT", "FLAGS", "USAGE", "Flag", "Kind", "format_bytes", "help_text",
           "parse_bytes", "usage_hint"]

USAGE = "fastobs RESOURCE [-- COMMAND [ARG...]] [flags]"

Kind = Literal["bool", "string", "int", "duration", "words", "choice", "bytes"]
Group = Literal["observe", "new", "connection", "hidden"]


# --- the flag table ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flag:
    """One command-line flag: how it is spelled, typed, defaulted and shown in help."""

    name: str
    kind: Kind
    dest: str
    default: Any
    help: str
    short: str = ""
    group: Group = "observe"
    deprecated: str = ""
    """pflag's deprecation text: using the flag prints ``Flag --x has been deprecated, <text>``."""
    choices: tuple[str, ...] = ()
    int_base: int = 0
    """0: Go's literal syntax (``0x1f``, ``1_000``), as pflag's int; 10: klog's level."""
    int_bits: int = 64


def _flags() -> tuple[Flag, ...]:
    observe: list[Flag] = [
        Flag("all-namespaces", "bool", "all_namespaces", False, "If true, list and watch the resource "
             "across all namespaces; the context or -n namespace is ignored.", short="A"),
        Flag("namespace", "string", "namespace", "", "The namespace to observe; default: the "
             "context's namespace, else 'default'.", short="n"),
        Flag("selector", "string", "selector", "", "Label selector to filter on; the full Kubernetes "
             "syntax (=, ==, !=, in, notin, !key, key) is supported.", short="l"),
        Flag("delete", "words", "delete", (), "A command to run when resources are deleted. Specify "
             "multiple times to add arguments.", short="d"),
        Flag("names", "words", "names", (), "A command that will list all of the currently known "
             "names, optional. Specify multiple times to add arguments. Use to get notifications "
             "when objects are deleted."),
        Flag("template", "string", "template", "", "Template whose output becomes one extra argument "
             "of the command; the language is chosen by --output."),
        Flag("output", "string", "output", "jsonpath", "Template language of --template. One of: "
             "go-template, go-template-file, template, templatefile, jsonpath, jsonpath-as-json, "
             "jsonpath-file.", short="o"),
        Flag("allow-missing-template-keys", "bool", "allow_missing_template_keys", True, "If true, "
             "ignore any errors in templates when a field or map key is missing in the template."),
        Flag("type-env-var", "string", "type_env_var", "", "The name of an env var to set with the "
             "type of event received ('Sync', 'Updated', 'Deleted', 'Added') to the reaction "
             "command or --delete."),
        Flag("object-env-var", "string", "object_env_var", "", "The name of an env var to serialize "
             "the object to when calling the command, optional."),
        Flag("maximum-errors", "int", "maximum_errors", 20, "Exit after this many errors have been "
             "detected. Set to -1 for no limit."),
        Flag("retry-on-exit-code", "int", "retry_on_exit_code", 0, "If any command returns this "
             "exit code, retry up to --retry-count times."),
        Flag("retry-count", "int", "retry_count", 2, "The number of times to retry a failing command "
             "before continuing."),
        Flag("once", "bool", "once", False, "If true, exit with a status code 0 after all current "
             "objects have been processed."),
        Flag("exit-after", "duration", "exit_after", 0.0, "Exit with status code 0 after the "
             "provided duration, optional."),
        Flag("resync-period", "duration", "resync_period", 0.0, "When non-zero, periodically "
             "reprocess every item from the server as a Sync event. Use to ensure external systems "
             "are kept up to date."),
        Flag("print-metrics-on-exit", "bool", "print_metrics_on_exit", False, "If true, on exit "
             "write all metrics to stdout."),
        Flag("listen-addr", "string", "listen_addr", ":11251", "The name of an interface to listen "
             "on to expose metrics and health checking; empty disables the server."),
        Flag("quiet", "bool", "quiet", False, "If true, skip printing information about each event "
             "prior to executing the command.", short="q"),
    ]
    return (*observe, *_new_flags(), *_connection_flags(), *_hidden_flags())


def _new_flags() -> list[Flag]:
    def new(name: str, kind: Kind, dest: str, default: Any, text: str, **extra: Any) -> Flag:
        return Flag(name, kind, dest, default, text, group="new", **extra)

    return [
        new("field-selector", "string", "field_selector", "", "Field selector sent with list and "
            "watch (e.g. status.phase=Running)."),
        new("workers", "int", "workers", 0, "Worker processes that run commands; 0 = one per CPU."),
        new("concurrency", "int", "concurrency", 16, "Commands running at once in each worker."),
        new("no-coalesce", "bool", "no_coalesce", False, "Run the command for every event, as oc "
            "does, instead of once with the newest state of an object that changed while queued."),
        new("timeout", "duration", "timeout", 0.0, "Kill a command (its whole process group) that "
            "runs longer than this; 0 = no limit."),
        new("kill-grace", "duration", "kill_grace", 5.0, "Time between SIGTERM and SIGKILL when a "
            "command times out or at shutdown."),
        new("backoff-base", "duration", "backoff_base", 0.0, "Requeue an object whose command failed "
            "after base x 2^attempt (jittered); 0 = no requeue, as oc."),
        new("backoff-cap", "duration", "backoff_cap", 300.0, "Longest requeue delay."),
        new("backoff-attempts", "int", "backoff_attempts", 5, "Requeues of one failing object before "
            "giving up until its next change."),
        new("max-pending", "int", "max_pending", 10000, "With --no-coalesce: events held before the "
            "watch is paused."),
        new("object-channel", "choice", "object_channel", "env", "How the object JSON reaches the "
            "command beyond --object-env-var: env (only the env var), stdin, or file (path in "
            "--object-file-env-var).", choices=("env", "stdin", "file")),
        new("object-file-env-var", "string", "object_file_env_var", "FASTOBS_OBJECT_FILE", "With "
            "--object-channel=file: the env var that holds the object file's path."),
        new("output-limit", "bytes", "output_limit", 4 << 20, "Most bytes of one command's output "
            "fastobs holds: in grouped mode its whole output (stdout and stderr, all attempts), in "
            "stream mode one line. The rest is dropped and a line '[fastobs: N more bytes of stdout "
            "dropped (--output-limit=L)]' takes its place. A number of bytes, or with a suffix: Ki, "
            "Mi, Gi, k, M, G; from 1Ki to 256Mi."),
        new("output-mode", "choice", "output_mode", "grouped", "grouped: a command's output is "
            "printed in one piece after its header; stream: line by line, prefixed with the "
            "object key.", choices=("grouped", "stream")),
        new("shutdown-grace", "duration", "shutdown_grace", 30.0, "On SIGTERM/SIGINT, time running "
            "commands get to finish before they are killed."),
        new("watch-read-timeout", "duration", "watch_read_timeout", 90.0, "Re-establish a watch that "
            "has been silent (no events, no bookmarks) for this long."),
        new("lease-name", "string", "lease_name", "", "Join the group of replicas that share this "
            "resource through Leases of this name (coordination.k8s.io/v1); empty: run alone. See "
            "docs/ha.md."),
        new("lease-namespace", "string", "lease_namespace", "", "Namespace of the group's Leases; "
            "empty: the pod's namespace in a cluster, else the observed namespace."),
        new("identity", "string", "identity", "", "This replica's name in the group; empty: "
            "hostname-pid."),
        new("lease-duration", "duration", "lease_duration", 15.0, "How long other replicas wait "
            "after this one's last renewal before taking its buckets over (client-go's rule: "
            "more than --renew-deadline)."),
        new("renew-deadline", "duration", "renew_deadline", 10.0, "Stop commands when the Lease "
            "could not be renewed for this long (more than 1.2 x --retry-period)."),
        new("retry-period", "duration", "retry_period", 2.0, "How often the Lease is renewed and "
            "the group looked at."),
        new("lease-kill-grace", "duration", "lease_kill_grace", 2.0, "SIGTERM to SIGKILL for "
            "commands stopped because the Lease was lost or a bucket moved; renew deadline + this "
            "+ retry period must not exceed the lease duration."),
        new("drain-timeout", "duration", "drain_timeout", 30.0, "A bucket handed to another "
            "replica waits this long for its running commands before they are stopped."),
        new("buckets", "int", "buckets", 1, "With --lease-name: 1 = leader election (one replica "
            "runs, the others stand by); more = the objects are spread over this many buckets and "
            "the buckets over the live replicas (at most 256; the same in every replica)."),
        new("shard-key", "choice", "shard_key", "name", "What puts an object in a bucket: name "
            "(namespace/name; per-name order across replicas), uid or namespace (these two can "
            "be filtered by the API server).", choices=("name", "uid", "namespace")),
        new("shard-filter", "choice", "shard_filter", "auto", "Who drops the objects of other "
            "replicas' buckets: auto (the API server's shardSelector when it applies it, else "
            "fastobs), client or server.", choices=("auto", "client", "server")),
        new("resync-on-start", "bool", "resync_on_start", False, "Run every object of the buckets "
            "this replica takes at start-up, as oc does, instead of resuming after what the group "
            "already ran."),
        new("log-format", "choice", "log_format", "text", "Format of fastobs's own log lines on "
            "stderr: text or json.", choices=("text", "json")),
        new("log-level", "choice", "log_level", "info", "Least severe log level shown: debug, info, "
            "warning or error.", choices=("debug", "info", "warning", "error")),
        new("version", "bool", "version", False, "Print the version and exit."),
        new("help", "bool", "help", False, "Print this help and exit.", short="h"),
    ]


def _connection_flags() -> list[Flag]:
    def connection(name: str, kind: Kind, dest: str, default: Any, text: str, **extra: Any) -> Flag:
        return Flag(name, kind, dest, default, text, group="connection", **extra)

    return [
        connection("kubeconfig", "string", "kubeconfig", "", "Path to the kubeconfig file to use."),
        connection("context", "string", "context", "", "The name of the kubeconfig context to use."),
        connection("server", "string", "server", "", "The address and port of the Kubernetes API "
                   "server.", short="s"),
        connection("token", "string", "token", "", "Bearer token for authentication to the API "
                   "server."),
        connection("insecure-skip-tls-verify", "bool", "insecure_skip_tls_verify", False, "If true, "
                   "the server's certificate will not be checked for validity."),
        connection("request-timeout", "string", "request_timeout", "0", "The length of time to wait "
                   "before giving up on a single server request (e.g. 1s, 2m, 3h; a bare integer is "
                   "seconds); 0 = no timeout."),
        connection("loglevel", "int", "verbosity", 0, "Set the level of log output (0-10), like "
                   "oc's --loglevel.", int_base=10, int_bits=32),
        connection("v", "int", "verbosity", 0, "Number for the log level verbosity (alias of "
                   "--loglevel).", short="v", int_base=10, int_bits=32),
    ]


def _hidden_flags() -> list[Flag]:
    def hidden(name: str, kind: Kind, dest: str, default: Any, deprecated: str, **extra: Any) -> Flag:
        return Flag(name, kind, dest, default, "", group="hidden", deprecated=deprecated, **extra)

    return [
        hidden("argument", "words", "argument", (), "and will be removed in a future release. Use "
               "--template instead.", short="a"),
        hidden("strict-templates", "bool", "strict_templates", False, "and will be removed in a "
               "future release. Use --allow-missing-template-keys=false instead."),
        hidden("no-headers", "bool", "quiet", False, "and will be removed in a future release. "
               "Use --quiet instead."),
    ]


FLAGS: tuple[Flag, ...] = _flags()
BY_NAME = {flag.name: flag for flag in FLAGS}
BY_SHORT = {flag.short: flag for flag in FLAGS if flag.short}

_BYTE_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 1000, "M": 1000**2, "G": 1000**3, "": 1}


def parse_bytes(text: str) -> int:
    """A byte count as Kubernetes quantities spell it: ``4194304``, ``4Mi``, ``512Ki``, ``4M``."""
    digits = text.rstrip("KiMGk")
    unit = text[len(digits):]
    if not digits.isdigit() or not digits.isascii() or unit not in _BYTE_UNITS:
        raise ValueError("must be a number of bytes, optionally followed by Ki, Mi, Gi, k, M or G")
    return int(digits) * _BYTE_UNITS[unit]


def format_bytes(n: int) -> str:
    """The shortest exact spelling :func:`parse_bytes` reads back: ``4Mi``, ``1500k``, ``7``."""
    for unit in ("Gi", "Mi", "Ki", "G", "M", "k"):
        if n and n % _BYTE_UNITS[unit] == 0:
            return f"{n // _BYTE_UNITS[unit]}{unit}"
    return str(n)


# --- help -------------------------------------------------------------------------------

_DESCRIPTION = """\
Observe changes to resources and react to them.

fastobs lists every object of one resource type and runs a command for each, then
watches the resource and runs the command again for every change: a controller made
of a shell script. It is a drop-in successor of 'oc observe' (same arguments, flags,
output and exit codes) that runs commands in parallel, never two at once for the
same object, and merges changes that arrive while an object is queued.

It fits problems shaped like "for every X, make sure Y is true": a quota in every
namespace, a DNS record for every service, an alert when a node is NotReady.

The command runs with the object's namespace (for namespaced resources) and name as
arguments, then one argument with the output of --template (empty when there is
no template). --type-env-var and --object-env-var name environment variables that
receive the event type and the object's JSON. Deleted objects run the --delete
command instead; --names lists the keys an external system knows, so deletions
that happened while fastobs was not running are caught too.

Usage:
  {usage}

Examples:
  # Observe changes to services
  fastobs services

  # Observe changes to services, passing the cluster IP as an argument
  fastobs services --template '{{ .spec.clusterIP }}' -- register_dns.sh

  # Observe changes to services labelled regist-dns=true
  fastobs services -l regist-dns=true --template '{{ .spec.clusterIP }}' -- register_dns.sh

  # Keep an external inventory of nodes, deletions included
  fastobs nodes --template '{{ .status.addresses[0].address }}' --names ./known_nodes.sh \\
    --delete ./remove_from_inventory.sh -- ./add_to_inventory.sh

  # 64 commands at a time, each killed after 2 minutes, the object JSON on stdin
  fastobs pods -A --workers 4 --concurrency 16 --timeout 2m --object-channel stdin -- ./reconcile.py
"""

_GROUP_TITLES: dict[Group, str] = {
    "observe": "Options (as oc observe):",
    "new": "fastobs options:",
    "connection": "Connection options (as oc/kubectl):",
}


def _flag_line(flag: Flag) -> str:
    names = f"-{flag.short}, --{flag.name}" if flag.short else f"--{flag.name}"
    if flag.kind == "words":
        return f"    {names}=[]:"
    if flag.kind == "duration":
        return f"    {names}={format_go_duration(flag.default)}:"
    if flag.kind == "bytes":
        return f"    {names}={format_bytes(flag.default)}:"
    default = str(flag.default).lower() if flag.kind == "bool" else str(flag.default)
    return f"    {names}={go_quote(default) if flag.kind == 'string' and not default else default}:"


def help_text() -> str:
    """The ``--help`` text: description, usage, examples, then every visible flag by group."""
    lines = [_DESCRIPTION.format(usage=USAGE)]
    for group, title in _GROUP_TITLES.items():
        lines.append(title)
        for flag in FLAGS:
            if flag.group == group:
                lines.append(_flag_line(flag))
                lines.append(textwrap.fill(flag.help, width=80, initial_indent=" " * 8,
                                           subsequent_indent=" " * 8))
                lines.append("")
    lines.append("Durations use Go syntax: 300ms, 1.5s, 2m, 1h30m, or 0.")
    return "\n".join(lines) + "\n"


def usage_hint() -> str:
    return f"Usage:\n  {USAGE}\n\nUse 'fastobs --help' for the flags and examples.\n"
