"""Command line: ``fastobs RESOURCE [-- COMMAND [ARG...]] [flags]`` → :class:`Settings`.

Where it sits: the first stage of the parent. :func:`main` parses argv with
:func:`parse_args`, prints the deprecation notices, then hands the settings to
``daemon.run`` (imported lazily, so ``--help`` and usage errors never load the
Kubernetes client). The daemon calls :func:`check_after_discovery` once the resource is
resolved, because oc validates ``--names`` and the selector only then.

In: argv. Out: a frozen ``Settings`` plus the notice lines to print, or a
:class:`~fastobs.errors.UsageError`.

Invariant: every ``oc observe`` flag keeps its name, shorthand, default, value syntax
and message; argv is parsed the way pflag parses it (interspersed flags,
``--flag=value``, ``-abc`` shorthand groups, ``_`` → ``-`` in names, nothing parsed
after ``--``), so existing scripts run unchanged.
"""

from __future__ import annotations

import logging
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastobs import __version__
from fastobs.durations import DurationError, format_go_duration, go_quote, parse_go_duration
from fastobs.errors import EXIT_ERROR, EXIT_OK, FastobsError, UsageError
from fastobs.selector import SelectorError, validate_label_selector
from fastobs.settings import RunSettings, Settings

__all__ = ["ParseError", "ShowHelp", "check_after_discovery", "help_text", "main", "parse_args"]

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
"""Ctrl-C before the daemon installed its own handlers: the shell's SIGINT convention."""

USAGE = "fastobs RESOURCE [-- COMMAND [ARG...]] [flags]"

Kind = Literal["bool", "string", "int", "duration", "words", "choice"]
Group = Literal["observe", "new", "connection", "hidden"]


class ParseError(UsageError):
    """Bad argv: a flag pflag would reject (``show_usage``: print the usage text too), a
    wrong number of arguments, or a value out of range. ``notices`` are the deprecation
    lines printed before the error, as pflag prints them while it parses."""

    def __init__(self, message: str, notices: Sequence[str] = (), *, show_usage: bool = True) -> None:
        super().__init__(message)
        self.notices = list(notices)
        self.show_usage = show_usage


class ShowHelp(Exception):
    """``-h/--help`` or ``--version``: print ``text`` on stdout and exit 0."""

    def __init__(self, text: str, notices: Sequence[str] = ()) -> None:
        super().__init__(text)
        self.text = text
        self.notices = list(notices)


# --- Go value syntax (what pflag's value types accept) ----------------------------------


def _num_error(func: str, text: str, reason: str) -> ValueError:
    return ValueError(f"strconv.{func}: parsing {go_quote(text)}: {reason}")


def _underscores_ok(text: str) -> bool:
    """Go's ``underscoreOK``: ``_`` only between digits (or after a base prefix)."""
    body = text[1:] if text[:1] in "+-" else text
    saw, start = "^", 0
    hexadecimal = False
    if len(body) >= 2 and body[0] == "0" and body[1].lower() in "box":
        saw, start, hexadecimal = "0", 2, body[1].lower() == "x"
    for char in body[start:]:
        if char.isascii() and (char.isdigit() or (hexadecimal and char.lower() in "abcdef")):
            saw = "0"
        elif char == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def parse_go_int(text: str, *, base: int = 0, bits: int = 64) -> int:
    """Go's ``strconv.ParseInt(text, base, bits)`` (base 0: ``0x``, ``0o``, ``0b``, ``0``, ``_``)."""
    digits, negative = text, False
    if digits[:1] in ("+", "-"):
        negative, digits = digits[0] == "-", digits[1:]
    if not digits:
        raise _num_error("ParseInt", text, "invalid syntax")
    if base == 0:
        base = 10
        if digits[0] == "0":
            prefixes = {"b": 2, "o": 8, "x": 16}
            if len(digits) >= 3 and digits[1].lower() in prefixes:
                base, digits = prefixes[digits[1].lower()], digits[2:]
            else:
                base, digits = 8, digits[1:]
        underscores_allowed = True
    else:
        underscores_allowed = False
    limit = 1 << (bits - 1)
    value, saw_underscore = 0, False
    for char in digits:
        if char == "_" and underscores_allowed:
            saw_underscore = True
            continue
        digit = int(char, 36) if char.isascii() and char.isalnum() else 99
        if digit >= base:
            raise _num_error("ParseInt", text, "invalid syntax")
        value = value * base + digit
        if value > (1 << 64) - 1:
            raise _num_error("ParseInt", text, "value out of range")
    if saw_underscore and not _underscores_ok(text):
        raise _num_error("ParseInt", text, "invalid syntax")
    if value > limit - (0 if negative else 1):
        raise _num_error("ParseInt", text, "value out of range")
    return -value if negative else value


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _num_error("ParseBool", text, "invalid syntax")


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
        new("output-mode", "choice", "output_mode", "grouped", "grouped: a command's output is "
            "printed in one piece after its header; stream: line by line, prefixed with the "
            "object key.", choices=("grouped", "stream")),
        new("shutdown-grace", "duration", "shutdown_grace", 30.0, "On SIGTERM/SIGINT, time running "
            "commands get to finish before they are killed."),
        new("watch-read-timeout", "duration", "watch_read_timeout", 90.0, "Re-establish a watch that "
            "has been silent (no events, no bookmarks) for this long."),
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
_BY_NAME = {flag.name: flag for flag in FLAGS}
_BY_SHORT = {flag.short: flag for flag in FLAGS if flag.short}


# --- argv scanning (pflag's algorithm) --------------------------------------------------


class _Scan:
    """The state of one left-to-right pass over argv."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.rest = list(argv)
        self.values: dict[str, Any] = {flag.dest: flag.default for flag in FLAGS}
        self.positionals: list[str] = []
        self.command: list[str] | None = None
        self.notices: list[str] = []

    def fail(self, message: str) -> ParseError:
        return ParseError(message, self.notices)

    def run(self) -> None:
        while self.rest:
            arg = self.rest.pop(0)
            if arg == "--":
                self.command = self.rest
                self.rest = []
            elif arg.startswith("--"):
                self.long_flag(arg)
            elif arg.startswith("-") and len(arg) > 1:
                self.short_flags(arg[1:])
            else:
                self.positionals.append(arg)

    def long_flag(self, arg: str) -> None:
        body = arg[2:]
        if not body or body[0] in "-=":
            raise self.fail(f"bad flag syntax: {arg}")
        name, has_value, inline = body.partition("=")
        flag = _BY_NAME.get(name.replace("_", "-"))
        if flag is None:
            raise self.fail(f"unknown flag: --{name}")
        if has_value:
            value = inline
        elif flag.kind == "bool":
            value = "true"
        elif self.rest:
            value = self.rest.pop(0)
        else:
            raise self.fail(f"flag needs an argument: {arg}")
        self.set(flag, value)

    def short_flags(self, shorthands: str) -> None:
        while shorthands:
            char, shorthands = shorthands[0], shorthands[1:]
            flag = _BY_SHORT.get(char)
            if flag is None:
                raise self.fail(f"unknown shorthand flag: '{char}' in -{char}{shorthands}")
            if shorthands.startswith("=") and len(shorthands) > 1:
                value, shorthands = shorthands[1:], ""
            elif flag.kind == "bool":
                value = "true"
            elif shorthands:
                value, shorthands = shorthands, ""
            elif self.rest:
                value = self.rest.pop(0)
            else:
                raise self.fail(f"flag needs an argument: '{char}' in -{char}")
            self.set(flag, value)

    def set(self, flag: Flag, text: str) -> None:
        try:
            value = _convert(flag, text, self.values[flag.dest])
        except ValueError as error:
            shown = f"-{flag.short}, --{flag.name}" if flag.short else f"--{flag.name}"
            message = f"invalid argument {go_quote(text)} for {go_quote(shown)} flag: {error}"
            # A wrong choice is spelled out in the message itself: the usage text adds nothing.
            raise ParseError(message, self.notices, show_usage=flag.kind != "choice") from None
        self.values[flag.dest] = value
        if flag.deprecated:
            # pflag prints this on every use, at the moment the flag is set.
            self.notices.append(f"Flag --{flag.name} has been deprecated, {flag.deprecated}")


def _convert(flag: Flag, text: str, current: Any) -> Any:
    converters: dict[Kind, Callable[[], Any]] = {
        "bool": lambda: parse_go_bool(text),
        "string": lambda: text,
        "int": lambda: parse_go_int(text, base=flag.int_base, bits=flag.int_bits),
        "duration": lambda: parse_go_duration(text),
        "words": lambda: (*current, text),
        "choice": lambda: _choice(flag, text),
    }
    return converters[flag.kind]()


def _choice(flag: Flag, text: str) -> str:
    if text not in flag.choices:
        raise ValueError("must be one of " + ", ".join(flag.choices))
    return text


# --- from parsed values to Settings -----------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[Settings, list[str]]:
    """Parse argv into :class:`Settings` and the notice lines to print on stderr.

    Raises :class:`ParseError` for anything wrong with argv, and :class:`ShowHelp`
    for ``--help``/``--version``.
    """
    scan = _Scan(argv)
    scan.run()
    values = scan.values
    if values["help"]:
        raise ShowHelp(help_text(), scan.notices)
    if values["version"]:
        raise ShowHelp(f"fastobs {__version__}\n", scan.notices)
    notices = list(scan.notices)
    try:
        resource = _resource(scan.positionals)
        if values["output"] == "gotemplate":
            values["output"] = "go-template"
            notices.append("DEPRECATED: The 'gotemplate' output format has been replaced by "
                           "'go-template', please use the new spelling instead")
        _check_ranges(values)
    except UsageError as error:
        raise ParseError(error.message, notices, show_usage=False) from None
    return _settings(resource, tuple(scan.command or ()), values), notices


def _resource(positionals: list[str]) -> str:
    if not positionals:
        raise UsageError("you must specify at least one argument containing the resource to observe")
    if len(positionals) > 1:
        raise UsageError("you may only specify one argument containing the resource to observe "
                         "(use '--' to separate your resource and your command)")
    return positionals[0]


_RANGES: tuple[tuple[str, str, Callable[[Any], bool], str], ...] = (
    ("workers", "workers", lambda v: v >= 0, "0 (one per CPU) or more"),
    ("concurrency", "concurrency", lambda v: v >= 1, "at least 1"),
    ("timeout", "timeout", lambda v: v >= 0, "0 (no limit) or more"),
    ("kill-grace", "kill_grace", lambda v: v >= 0, "0 or more"),
    ("backoff-base", "backoff_base", lambda v: v >= 0, "0 (no requeue) or more"),
    ("backoff-cap", "backoff_cap", lambda v: v > 0, "more than 0"),
    ("backoff-attempts", "backoff_attempts", lambda v: v >= 0, "0 or more"),
    ("max-pending", "max_pending", lambda v: v >= 1, "at least 1"),
    ("shutdown-grace", "shutdown_grace", lambda v: v >= 0, "0 or more"),
    ("watch-read-timeout", "watch_read_timeout", lambda v: v > 0, "more than 0"),
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_ranges(values: dict[str, Any]) -> None:
    for name, dest, valid, rule in _RANGES:
        value = values[dest]
        if not valid(value):
            shown = format_go_duration(value) if isinstance(value, float) else str(value)
            raise UsageError(f"--{name} must be {rule}, got {shown}")
    if not _ENV_NAME.fullmatch(values["object_file_env_var"]):
        raise UsageError("--object-file-env-var must be an environment variable name "
                         f"(letters, digits, '_'), got {go_quote(values['object_file_env_var'])}")
    values["request_timeout"] = _request_timeout(values["request_timeout"])


def _request_timeout(text: str) -> float:
    """kubectl's --request-timeout: a bare integer is seconds, else a Go duration ≥ 0."""
    if text in ("", "0"):
        return 0.0
    try:
        if text.lstrip("+-").isdigit():
            seconds = float(parse_go_int(text, base=10))
        else:
            seconds = parse_go_duration(text)
    except (ValueError, DurationError):
        seconds = -1.0
    if seconds < 0:
        raise UsageError("Invalid timeout value. Timeout must be a single integer in seconds, or an "
                         "integer followed by a corresponding time unit (e.g. 1s | 2m | 3h)")
    return seconds


def _settings(resource: str, command: tuple[str, ...], values: dict[str, Any]) -> Settings:
    template = values["template"]
    merged_arguments = " ".join(values["argument"])
    if merged_arguments:
        template = merged_arguments  # oc: the -a flags, joined, replace --template
    run = RunSettings(
        command=command,
        delete_command=tuple(values["delete"]),
        template=template,
        output_format=values["output"],
        allow_missing_template_keys=values["allow_missing_template_keys"] and not values["strict_templates"],
        type_env_var=values["type_env_var"],
        object_env_var=values["object_env_var"],
        object_channel=values["object_channel"],
        object_file_env_var=values["object_file_env_var"],
        retry_on_exit_code=values["retry_on_exit_code"],
        retry_count=values["retry_count"],
        timeout=values["timeout"],
        kill_grace=values["kill_grace"],
        concurrency=values["concurrency"],
        output_mode=values["output_mode"],
        quiet=values["quiet"],
    )
    copied = ("kubeconfig", "context", "namespace", "all_namespaces", "selector", "field_selector",
              "request_timeout", "server", "token", "insecure_skip_tls_verify", "maximum_errors", "once",
              "exit_after", "resync_period", "print_metrics_on_exit", "listen_addr", "shutdown_grace",
              "workers", "backoff_base", "backoff_cap", "backoff_attempts", "max_pending",
              "watch_read_timeout", "log_format", "log_level", "verbosity")
    return Settings(resource=resource, run=run, names_command=tuple(values["names"]),
                    coalesce=not values["no_coalesce"], **{name: values[name] for name in copied})


# --- checks that oc makes after discovery -----------------------------------------------

TEMPLATE_FORMATS = ("go-template", "go-template-file", "jsonpath", "jsonpath-as-json", "jsonpath-file",
                    "template", "templatefile")


def check_after_discovery(settings: Settings) -> None:
    """oc's checks that come after the resource is resolved, in oc's order: ``-o`` and the
    template, ``--names`` without ``--delete``, the label selector.

    Raises :class:`UsageError`, or :class:`~fastobs.errors.TemplateError` for a template
    that does not parse.
    """
    run = settings.run
    if run.template:
        if run.output_format not in TEMPLATE_FORMATS:
            raise UsageError(f"unable to match a printer suitable for the output format "
                             f"{go_quote(run.output_format)}, allowed formats are: "
                             f"{','.join(TEMPLATE_FORMATS)}")
        from fastobs.templates import compile_template  # raises TemplateError (exit 1) as oc

        compile_template(run.template, run.output_format, allow_missing=run.allow_missing_template_keys)
    if settings.names_command and not run.delete_command:
        raise UsageError("--delete and --names must both be specified")
    if settings.selector:
        try:
            validate_label_selector(settings.selector)
        except SelectorError as error:
            raise UsageError(str(error)) from None


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


def _usage_hint() -> str:
    return f"Usage:\n  {USAGE}\n\nUse 'fastobs --help' for the flags and examples.\n"


# --- entry point ------------------------------------------------------------------------


def _write(stream: Any, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:  # `fastobs --help | head` closed the pipe: not an error
        pass


def _notices(lines: Sequence[str]) -> None:
    if lines:
        _write(sys.stderr, "".join(f"{line}\n" for line in lines))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``fastobs`` console script: parse, run the daemon, map errors to exit codes."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except FastobsError as error:
        _write(sys.stderr, f"error: {error.message}\n")
        return error.exit_code
    except Exception as error:  # a bug: one line for the user, the traceback in the debug log
        logger.debug("unexpected error", exc_info=True)
        _write(sys.stderr, f"error: unexpected {type(error).__name__}: {error}\n")
        return EXIT_ERROR


def _main(args: list[str]) -> int:
    try:
        settings, notices = parse_args(args)
    except ShowHelp as shown:
        _notices(shown.notices)
        _write(sys.stdout, shown.text)
        return EXIT_OK
    except ParseError as error:
        _notices(error.notices)
        usage = _usage_hint() + "\n" if error.show_usage else ""
        _write(sys.stderr, f"{usage}error: {error.message}\n")
        return EXIT_ERROR
    _notices(notices)
    from fastobs import daemon  # lazy: imports the Kubernetes client (~0.3 s)

    return daemon.run(settings)

