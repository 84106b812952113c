"""Command line: ``fastobs RESOURCE [-- COMMAND [ARG...]] [flags]`` → :class:`Settings`.

Where it sits: the first stage of the parent. :func:`main` parses argv with
:func:`parse_args` against the table in ``flags``, prints the deprecation notices, then
hands the settings to ``daemon.run`` (imported lazily, so ``--help`` and usage errors never
load the Kubernetes client). The checks oc makes only after discovery (``--names``, the
selector, the template) are the daemon's.

In: argv. Out: a frozen ``Settings`` plus the notice lines to print, or a
:class:`~fastobs.errors.UsageError`; then the process's exit code.

Invariant: argv is parsed the way pflag parses it (interspersed flags, ``--flag=value``,
``-abc`` shorthand groups, ``_`` → ``-`` in names, nothing parsed after ``--``), with
pflag's values and messages, so existing ``oc observe`` scripts run unchanged.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fastobs import __version__
from fastobs.errors import EXIT_ERROR, EXIT_OK, FastobsError, UsageError
from fastobs.flags import (
    BY_NAME,
    BY_SHORT,
    FLAGS,
    Flag,
    Kind,
    format_bytes,
    help_text,
    parse_bytes,
    usage_hint,
)
from fastobs.gocompat import (
    DurationError,
    format_go_duration,
    go_quote,
    parse_go_bool,
    parse_go_duration,
    parse_go_int,
)
from fastobs.settings import QUOTE_OBJECT_VERBOSITY, RunSettings, Settings

__all__ = ["ParseError", "ShowHelp", "main", "parse_args"]

EXIT_INTERRUPTED = 130
"""Ctrl-C before the daemon installed its own handlers: the shell's SIGINT convention."""


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
        flag = BY_NAME.get(name.replace("_", "-"))
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
            flag = BY_SHORT.get(char)
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
        "bytes": lambda: parse_bytes(text),
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
    # A result frame must stay well under the protocol's 1 GiB frame limit.
    ("output-limit", "output_limit", lambda v: 1 << 10 <= v <= 256 << 20, "from 1Ki to 256Mi"),
    ("retry-period", "retry_period", lambda v: v > 0, "more than 0"),
    ("lease-kill-grace", "lease_kill_grace", lambda v: v >= 0, "0 or more"),
    ("drain-timeout", "drain_timeout", lambda v: v >= 0, "0 or more"),
    ("buckets", "buckets", lambda v: 1 <= v <= 256, "1..256"),
)
_GROUP_FLAGS = (("buckets", 1), ("identity", ""), ("lease_namespace", ""), ("resync_on_start", False),
                ("shard_key", "name"), ("shard_filter", "auto"), ("lease_duration", 15.0),
                ("renew_deadline", 10.0), ("retry_period", 2.0), ("lease_kill_grace", 2.0),
                ("drain_timeout", 30.0))
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_ranges(values: dict[str, Any]) -> None:
    for name, dest, valid, rule in _RANGES:
        value = values[dest]
        if not valid(value):
            shown = format_go_duration(value) if isinstance(value, float) else str(value)
            if dest == "output_limit":
                shown = format_bytes(value)
            raise UsageError(f"--{name} must be {rule}, got {shown}")
    _check_group(values)
    if not _ENV_NAME.fullmatch(values["object_file_env_var"]):
        raise UsageError("--object-file-env-var must be an environment variable name "
                         f"(letters, digits, '_'), got {go_quote(values['object_file_env_var'])}")
    values["request_timeout"] = _request_timeout(values["request_timeout"])


def _check_group(values: dict[str, Any]) -> None:
    """The rules of --lease-name and its companions (client-go's timing rules, plus fencing)."""
    name = values["lease_name"]
    if not name:
        for dest, default in _GROUP_FLAGS:
            if values[dest] != default:
                raise UsageError(f"--{dest.replace('_', '-')} needs --lease-name")
        return
    from fastobs.lease import MAX_GROUP_NAME, valid_group_name

    if not valid_group_name(name):
        raise UsageError(f"--lease-name must be at most {MAX_GROUP_NAME} lower-case letters, digits "
                         f"or '-', starting and ending with a letter or digit, got {go_quote(name)}")
    ld, rd, rp, grace = (values[k] for k in ("lease_duration", "renew_deadline", "retry_period",
                                             "lease_kill_grace"))
    if not ld > rd:
        raise UsageError("--lease-duration must be greater than --renew-deadline")
    if not rd > 1.2 * rp:
        raise UsageError("--renew-deadline must be greater than 1.2 x --retry-period")
    if rd + grace + rp > ld:
        total = format_go_duration(rd + grace + rp)
        raise UsageError(f"--renew-deadline + --lease-kill-grace + --retry-period ({total}) must not "
                         f"exceed --lease-duration ({format_go_duration(ld)}): commands must be stopped "
                         "before another replica may take their objects over")
    if values["once"]:
        raise UsageError("--once cannot be used with --lease-name: run one fastobs alone for --once")
    if values["names"] and values["shard_key"] == "uid":
        raise UsageError("--names cannot be used with --shard-key uid: a name that no longer exists has "
                         "no uid to find its bucket")
    if values["shard_filter"] == "server" and values["shard_key"] == "name":
        raise UsageError("--shard-filter server needs --shard-key uid or namespace: the API server cannot "
                         "filter on names")


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
        output_limit=values["output_limit"],
        quiet=values["quiet"],
        template_errors_quote_object=values["verbosity"] >= QUOTE_OBJECT_VERBOSITY,
        log_format=values["log_format"],
        log_level=values["log_level"],
        verbosity=values["verbosity"],
    )
    copied = ("kubeconfig", "context", "namespace", "all_namespaces", "selector", "field_selector",
              "request_timeout", "server", "token", "insecure_skip_tls_verify", "maximum_errors", "once",
              "exit_after", "resync_period", "print_metrics_on_exit", "listen_addr", "shutdown_grace",
              "workers", "backoff_base", "backoff_cap", "backoff_attempts", "max_pending",
              "watch_read_timeout", "lease_name", "lease_namespace", "identity", "lease_duration",
              "renew_deadline", "retry_period", "lease_kill_grace", "drain_timeout", "buckets", "shard_key",
              "shard_filter", "resync_on_start")
    return Settings(resource=resource, run=run, names_command=tuple(values["names"]),
                    coalesce=not values["no_coalesce"], **{name: values[name] for name in copied})


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
        from fastobs.logs import oc_line  # a JSON record under --log-format json

        _write(sys.stderr, oc_line(error.message, prefix=error.prefix))
        return error.exit_code
    except Exception as error:  # a bug: one line for the user, the traceback in the debug log
        import logging  # not before: everything imported ahead of the first request delays it

        from fastobs.logs import oc_line

        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        _write(sys.stderr, oc_line(f"unexpected {type(error).__name__}: {error}"))
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
        usage = usage_hint() + "\n" if error.show_usage else ""
        _write(sys.stderr, f"{usage}error: {error.message}\n")
        return EXIT_ERROR
    _notices(notices)
    # The first list request goes out now, with the standard library alone, while the
    # daemon's libraries load (~0.25 s); it gives up silently on anything unusual.
    from fastobs import prefetch

    first = prefetch.start(settings)
    from fastobs import daemon  # lazy: imports aiohttp, uvloop and the engine

    return daemon.run(settings, first)

