"""The command line: parse_args for every flag, and the real entry point as a subprocess."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastobs import __version__
from fastobs.cli import ParseError, ShowHelp, _Scan, main, parse_args
from fastobs.daemon import check_after_discovery
from fastobs.errors import TemplateError, UsageError
from fastobs.flags import BY_NAME, BY_SHORT, FLAGS, help_text, plain, with_generated_tables
from fastobs.settings import RunSettings, Settings

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> Settings:
    settings, _ = parse_args(["pods", *argv])
    return settings


def get(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


# --- defaults -------------------------------------------------------------------------


def test_defaults_match_oc_and_settings() -> None:
    """With only a resource, every field has oc's default (or the *new* field's default)."""
    settings, notices = parse_args(["pods"])
    assert notices == []
    assert settings == Settings(resource="pods", run=RunSettings())
    assert settings.run.output_format == "jsonpath"
    assert settings.listen_addr == ":11251"
    assert settings.maximum_errors == 20
    assert settings.run.retry_count == 2
    assert settings.run.allow_missing_template_keys is True
    assert settings.coalesce is True


# --- every flag onto Settings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "path", "expected"),
    [
        pytest.param(["-A"], "all_namespaces", True, id="A"),
        pytest.param(["--all-namespaces"], "all_namespaces", True, id="all-namespaces"),
        pytest.param(["-n", "kube-system"], "namespace", "kube-system", id="n"),
        pytest.param(["-nkube-system"], "namespace", "kube-system", id="n-attached"),
        pytest.param(["-n=kube-system"], "namespace", "kube-system", id="n-equals"),
        pytest.param(["--namespace=x"], "namespace", "x", id="namespace"),
        pytest.param(["--kubeconfig", "/tmp/kc"], "kubeconfig", "/tmp/kc", id="kubeconfig"),
        pytest.param(["--context", "prod"], "context", "prod", id="context"),
        pytest.param(["-l", "app in (a,b)"], "selector", "app in (a,b)", id="l"),
        pytest.param(["--selector=x=y"], "selector", "x=y", id="selector"),
        pytest.param(["-d", "rm", "-d", "-f"], "run.delete_command", ("rm", "-f"), id="d-repeated"),
        pytest.param(["--delete", "echo x"], "run.delete_command", ("echo x",), id="delete-one-word"),
        pytest.param(["--names", "ls", "--names=-1"], "names_command", ("ls", "-1"), id="names"),
        pytest.param(["--template", "{.metadata.uid}"], "run.template", "{.metadata.uid}", id="template"),
        pytest.param(["-o", "go-template"], "run.output_format", "go-template", id="o"),
        pytest.param(["--output=jsonpath-file"], "run.output_format", "jsonpath-file", id="output"),
        pytest.param(
            ["--allow-missing-template-keys=false"],
            "run.allow_missing_template_keys",
            False,
            id="allow-missing-false",
        ),
        pytest.param(
            ["--allow-missing-template-keys=0"],
            "run.allow_missing_template_keys",
            False,
            id="allow-missing-0",
        ),
        pytest.param(["--type-env-var", "EVENT"], "run.type_env_var", "EVENT", id="type-env-var"),
        pytest.param(["--object-env-var", "OBJ"], "run.object_env_var", "OBJ", id="object-env-var"),
        pytest.param(["--maximum-errors", "-1"], "maximum_errors", -1, id="maximum-errors-unlimited"),
        pytest.param(["--maximum-errors=0x10"], "maximum_errors", 16, id="maximum-errors-hex"),
        pytest.param(["--retry-on-exit-code", "3"], "run.retry_on_exit_code", 3, id="retry-on-exit-code"),
        pytest.param(["--retry-count=5"], "run.retry_count", 5, id="retry-count"),
        pytest.param(["--once"], "once", True, id="once"),
        pytest.param(["--once=false"], "once", False, id="once-false"),
        pytest.param(["--exit-after", "1m30s"], "exit_after", 90.0, id="exit-after"),
        pytest.param(["--exit_after=2s"], "exit_after", 2.0, id="underscore-normalized"),
        pytest.param(["--resync-period", "10m"], "resync_period", 600.0, id="resync-period"),
        pytest.param(["--print-metrics-on-exit"], "print_metrics_on_exit", True, id="print-metrics"),
        pytest.param(["--listen-addr="], "listen_addr", "", id="listen-addr-empty"),
        pytest.param(["--listen-addr", "127.0.0.1:9000"], "listen_addr", "127.0.0.1:9000", id="listen-addr"),
        pytest.param(["-q"], "run.quiet", True, id="q"),
        pytest.param(["--quiet"], "run.quiet", True, id="quiet"),
        pytest.param(["--no-headers"], "run.quiet", True, id="no-headers"),
        pytest.param(["--quiet", "--no-headers=false"], "run.quiet", False, id="no-headers-same-variable"),
        pytest.param(["--request-timeout", "30"], "request_timeout", 30.0, id="request-timeout-int"),
        pytest.param(["--request-timeout=1m"], "request_timeout", 60.0, id="request-timeout-duration"),
        pytest.param(["--loglevel", "4"], "run.verbosity", 4, id="loglevel"),
        pytest.param(["-v", "6"], "run.verbosity", 6, id="v"),
        pytest.param(["--v=2"], "run.verbosity", 2, id="v-long"),
        pytest.param(["-s", "https://api:6443"], "server", "https://api:6443", id="s"),
        pytest.param(["--server=https://x"], "server", "https://x", id="server"),
        pytest.param(["--token", "abc"], "token", "abc", id="token"),
        pytest.param(["--insecure-skip-tls-verify"], "insecure_skip_tls_verify", True, id="insecure"),
        pytest.param(
            ["--field-selector", "spec.nodeName=n1"],
            "field_selector",
            "spec.nodeName=n1",
            id="field-selector",
        ),
        pytest.param(["--workers", "4"], "workers", 4, id="workers"),
        pytest.param(["--concurrency", "64"], "run.concurrency", 64, id="concurrency"),
        pytest.param(["--no-coalesce"], "coalesce", False, id="no-coalesce"),
        pytest.param(["--timeout", "30s"], "run.timeout", 30.0, id="timeout"),
        pytest.param(["--kill-grace", "1s"], "run.kill_grace", 1.0, id="kill-grace"),
        pytest.param(["--backoff-base", "500ms"], "backoff_base", 0.5, id="backoff-base"),
        pytest.param(["--backoff-cap", "1m"], "backoff_cap", 60.0, id="backoff-cap"),
        pytest.param(["--backoff-attempts", "0"], "backoff_attempts", 0, id="backoff-attempts"),
        pytest.param(["--max-pending", "50"], "max_pending", 50, id="max-pending"),
        pytest.param(["--object-channel", "stdin"], "run.object_channel", "stdin", id="object-channel"),
        pytest.param(
            ["--object-file-env-var", "OBJ_PATH"],
            "run.object_file_env_var",
            "OBJ_PATH",
            id="object-file-env-var",
        ),
        pytest.param(["--output-mode=stream"], "run.output_mode", "stream", id="output-mode"),
        pytest.param(["--output-limit", "512Ki"], "run.output_limit", 512 << 10, id="output-limit-quantity"),
        pytest.param(["--output-limit=2000000"], "run.output_limit", 2_000_000, id="output-limit-bytes"),
        pytest.param(["--output-limit=3M"], "run.output_limit", 3_000_000, id="output-limit-decimal"),
        pytest.param(["--shutdown-grace", "0"], "shutdown_grace", 0.0, id="shutdown-grace"),
        pytest.param(["--watch-read-timeout", "2m"], "watch_read_timeout", 120.0, id="watch-read-timeout"),
        pytest.param(["--log-format", "json"], "run.log_format", "json", id="log-format"),
        pytest.param(["--log-level", "debug"], "run.log_level", "debug", id="log-level"),
        pytest.param(["--lease-name", "obs"], "lease_name", "obs", id="lease-name"),
        pytest.param(["--lease-name=g", "--lease-namespace", "ops"], "lease_namespace", "ops",
                     id="lease-namespace"),
        pytest.param(["--lease-name=g", "--identity", "pod-7"], "identity", "pod-7", id="identity"),
        pytest.param(["--lease-name=g", "--lease-duration", "20s"], "lease_duration", 20.0,
                     id="lease-duration"),
        pytest.param(["--lease-name=g", "--renew-deadline", "8s"], "renew_deadline", 8.0,
                     id="renew-deadline"),
        pytest.param(["--lease-name=g", "--retry-period", "1s"], "retry_period", 1.0, id="retry-period"),
        pytest.param(["--lease-name=g", "--lease-kill-grace", "1s"], "lease_kill_grace", 1.0,
                     id="lease-kill-grace"),
        pytest.param(["--lease-name=g", "--drain-timeout", "1m"], "drain_timeout", 60.0, id="drain-timeout"),
        pytest.param(["--lease-name=g", "--buckets", "16"], "buckets", 16, id="buckets"),
        pytest.param(["--lease-name=g", "--shard-key", "uid"], "shard_key", "uid", id="shard-key"),
        pytest.param(["--lease-name=g", "--shard-key=namespace", "--shard-filter", "server"], "shard_filter",
                     "server", id="shard-filter"),
        pytest.param(["--lease-name=g", "--resync-on-start"], "resync_on_start", True, id="resync-on-start"),
    ],
)
def test_flag_maps_onto_settings(argv: list[str], path: str, expected: object) -> None:
    """Each flag, in each spelling, lands in its Settings field."""
    assert get(parse(*argv), path) == expected


_NOT_MAPPED = ("help", "version", "argument", "strict-templates")
"""Flags whose effect is not a Settings field of their own (tested elsewhere in this file)."""


def _mapping_rows() -> list[Any]:
    return list(test_flag_maps_onto_settings.pytestmark[0].args[1])  # type: ignore[attr-defined]


def _flags_spelled(argv: list[str]) -> set[str]:
    """Long names of the flags an argv spells: ``--name``, ``--name=v``, ``-s``, ``-sv``, ``-s=v``."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            names.add(token[2:].partition("=")[0].replace("_", "-"))
        elif token.startswith("-") and len(token) > 1 and token[1] in BY_SHORT:
            names.add(BY_SHORT[token[1]].name)
    return names


def _unmapped(rows: list[Any]) -> list[str]:
    spelled = set().union(*(_flags_spelled(row.values[0]) for row in rows))
    return [flag.name for flag in FLAGS if flag.name not in spelled and flag.name not in _NOT_MAPPED]


def test_every_flag_is_covered_by_the_mapping_table() -> None:
    """A new flag without a mapping test fails here."""
    assert _unmapped(_mapping_rows()) == []


def test_the_coverage_check_notices_each_missing_flag() -> None:
    """The check above can fail: without the rows that spell a flag, that flag is reported."""
    rows = _mapping_rows()
    checked = 0
    for flag in FLAGS:
        if flag.name in _NOT_MAPPED:
            continue
        kept = [row for row in rows if flag.name not in _flags_spelled(row.values[0])]
        assert len(kept) < len(rows), f"no row spells --{flag.name}"
        assert flag.name in _unmapped(kept)
        checked += 1
    print(f"each of {checked} flags is reported once its rows are removed")
    assert checked == len(FLAGS) - len(_NOT_MAPPED)


# --- arguments and `--` ---------------------------------------------------------------


def test_command_after_dash_is_verbatim() -> None:
    """Everything after the first `--` is the command; flags there are not parsed, a 2nd `--` passes."""
    settings = parse("-q", "--", "./s.sh", "-n", "x", "--", "--once", "")
    assert settings.run.command == ("./s.sh", "-n", "x", "--", "--once", "")
    assert settings.once is False
    assert settings.namespace == ""


def test_flags_interspersed_before_and_after_resource() -> None:
    """Flags may come before or after the resource (pflag interspersed)."""
    settings, _ = parse_args(["-n", "a", "services", "--once", "--", "cmd"])
    assert (settings.resource, settings.namespace, settings.once, settings.run.command) == (
        "services",
        "a",
        True,
        ("cmd",),
    )


def test_empty_command_after_dash() -> None:
    """`fastobs services --` is the same as no command."""
    assert parse("--").run.command == ()


def test_grouped_shorthands() -> None:
    """`-Aq` sets both bools; `-qnfoo` sets a bool then takes the rest as the value."""
    settings = parse("-Aq")
    assert settings.all_namespaces and settings.run.quiet
    settings = parse("-qnfoo")
    assert settings.run.quiet and settings.namespace == "foo"


def test_single_dash_is_a_positional() -> None:
    """A lone `-` is an argument, as in pflag."""
    with pytest.raises(ParseError, match="only specify one argument"):
        parse_args(["pods", "-"])


def test_bool_flag_does_not_take_a_separate_word() -> None:
    """`--once false` makes `false` a second positional argument, as pflag does."""
    with pytest.raises(ParseError, match="you may only specify one argument"):
        parse_args(["pods", "--once", "false"])


def test_string_flag_takes_the_next_word_even_if_it_is_a_dash() -> None:
    """pflag gives `-n --` the value `--`; the command then becomes a second positional."""
    settings, _ = parse_args(["pods", "-n", "--"])
    assert settings.namespace == "--"


# --- deprecated flags and notices -------------------------------------------------------

ARGUMENT_NOTICE = (
    "Flag --argument has been deprecated, and will be removed in a future release. Use --template instead."
)


def test_argument_flags_join_into_one_template() -> None:
    """All -a flags are joined by single spaces into one template that replaces --template."""
    settings, notices = parse_args(["pods", "--template", "{.a}", "-a", "{.b}", "--argument", "{.c}"])
    assert settings.run.template == "{.b} {.c}"
    assert notices == [ARGUMENT_NOTICE, ARGUMENT_NOTICE]


def test_empty_argument_does_not_replace_template() -> None:
    """An -a that joins to nothing leaves --template alone."""
    settings, _ = parse_args(["pods", "--template", "{.a}", "-a", ""])
    assert settings.run.template == "{.a}"


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        pytest.param(["--strict-templates"], False, id="strict"),
        pytest.param(["--strict-templates=false"], True, id="strict-false"),
        pytest.param(
            ["--allow-missing-template-keys=false", "--strict-templates=false"],
            False,
            id="strict-false-does-not-undo",
        ),
        pytest.param(
            ["--strict-templates", "--allow-missing-template-keys=true"], False, id="strict-wins-over-allow"
        ),
    ],
)
def test_strict_templates(argv: list[str], allowed: bool) -> None:
    """--strict-templates forces allow_missing_template_keys off; =false never turns it on."""
    settings, notices = parse_args(["pods", *argv])
    assert settings.run.allow_missing_template_keys is allowed
    assert notices == [
        "Flag --strict-templates has been deprecated, and will be removed in a future "
        "release. Use --allow-missing-template-keys=false instead."
    ]


def test_gotemplate_is_rewritten() -> None:
    """-o gotemplate becomes go-template with oc's DEPRECATED line, even without a template."""
    settings, notices = parse_args(["pods", "-o", "gotemplate"])
    assert settings.run.output_format == "go-template"
    assert notices == [
        "DEPRECATED: The 'gotemplate' output format has been replaced by 'go-template', "
        "please use the new spelling instead"
    ]


# --- parse errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--foo"], "unknown flag: --foo", id="unknown-long"),
        pytest.param(["-x"], "unknown shorthand flag: 'x' in -x", id="unknown-short"),
        pytest.param(["-Ax"], "unknown shorthand flag: 'x' in -x", id="unknown-in-group"),
        pytest.param(["---x"], "bad flag syntax: ---x", id="triple-dash"),
        pytest.param(["--=x"], "bad flag syntax: --=x", id="empty-name"),
        pytest.param(["--namespace"], "flag needs an argument: --namespace", id="missing-long"),
        pytest.param(["-n"], "flag needs an argument: 'n' in -n", id="missing-short"),
        pytest.param(
            ["--exit-after", "5"],
            'invalid argument "5" for "--exit-after" flag: time: missing unit in duration "5"',
            id="duration-unitless",
        ),
        pytest.param(
            ["--resync-period=x"],
            'invalid argument "x" for "--resync-period" flag: time: invalid duration "x"',
            id="duration-invalid",
        ),
        pytest.param(
            ["--maximum-errors", "ten"],
            'invalid argument "ten" for "--maximum-errors" flag: '
            'strconv.ParseInt: parsing "ten": invalid syntax',
            id="int-invalid",
        ),
        pytest.param(
            ["--retry-count=99999999999999999999"],
            'invalid argument "99999999999999999999" for '
            '"--retry-count" flag: strconv.ParseInt: parsing "99999999999999999999": value out of '
            "range",
            id="int-range",
        ),
        pytest.param(
            ["--once=maybe"],
            'invalid argument "maybe" for "--once" flag: strconv.ParseBool: parsing "maybe": invalid syntax',
            id="bool-invalid",
        ),
        pytest.param(
            ["-q=yes"],
            'invalid argument "yes" for "-q, --quiet" flag: strconv.ParseBool: parsing "yes": invalid syntax',
            id="bool-shorthand-name",
        ),
        pytest.param(
            ["--object-channel", "pipe"],
            'invalid argument "pipe" for "--object-channel" flag: must be one of env, stdin, file',
            id="enum",
        ),
        pytest.param(
            ["--log-level", "trace"],
            'invalid argument "trace" for "--log-level" flag: must be one of debug, info, warning, error',
            id="log-level-enum",
        ),
        pytest.param(
            ["--output-limit", "4MB"],
            'invalid argument "4MB" for "--output-limit" flag: must be a number of bytes, optionally '
            "followed by Ki, Mi, Gi, k, M or G",
            id="output-limit-unit",
        ),
    ],
)
def test_flag_errors_use_pflag_wording(argv: list[str], message: str) -> None:
    """Flag errors carry pflag's message and ask for the usage text (not for a wrong choice)."""
    with pytest.raises(ParseError) as caught:
        parse_args(["pods", *argv])
    assert caught.value.message == message
    assert caught.value.show_usage is ("must be one of" not in message)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--workers", "-1"], "--workers must be 0 (one per CPU) or more, got -1", id="workers"),
        pytest.param(["--concurrency", "0"], "--concurrency must be at least 1, got 0", id="concurrency"),
        pytest.param(["--timeout", "-1s"], "--timeout must be 0 (no limit) or more, got -1s", id="timeout"),
        pytest.param(["--backoff-cap", "0"], "--backoff-cap must be more than 0, got 0s", id="backoff-cap"),
        pytest.param(["--max-pending", "0"], "--max-pending must be at least 1, got 0", id="max-pending"),
        pytest.param(["--output-limit", "1Gi"], "--output-limit must be from 1Ki to 256Mi, got 1Gi",
                     id="output-limit"),
        pytest.param(
            ["--watch-read-timeout", "0"],
            "--watch-read-timeout must be more than 0, got 0s",
            id="watch-read-timeout",
        ),
        pytest.param(
            ["--object-file-env-var", "A=B"],
            "--object-file-env-var must be an environment variable name (letters, digits, '_'), got \"A=B\"",
            id="env-name",
        ),
        pytest.param(
            ["--request-timeout", "5x"],
            "Invalid timeout value. Timeout must be a single integer "
            "in seconds, or an integer followed by a corresponding time unit (e.g. 1s | 2m | 3h)",
            id="request-timeout",
        ),
    ],
)
def test_range_errors_are_one_line(argv: list[str], message: str) -> None:
    """Out-of-range values of fastobs's flags give one clear line, without the usage text."""
    with pytest.raises(ParseError) as caught:
        parse_args(["pods", *argv])
    assert caught.value.message == message
    assert not caught.value.show_usage


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            [], "you must specify at least one argument containing the resource to observe", id="none"
        ),
        pytest.param(
            ["--", "cmd"],
            "you must specify at least one argument containing the resource to observe",
            id="only-command",
        ),
        pytest.param(
            ["pods", "cmd"],
            "you may only specify one argument containing the resource to "
            "observe (use '--' to separate your resource and your command)",
            id="two",
        ),
    ],
)
def test_resource_argument_count(argv: list[str], message: str) -> None:
    """Exactly one positional argument before `--`, with oc's messages."""
    with pytest.raises(ParseError) as caught:
        parse_args(argv)
    assert caught.value.message == message


def test_help_and_version() -> None:
    """-h/--help and --version raise ShowHelp with the text to print."""
    for argv in (["-h"], ["--help"], ["pods", "--help"]):
        with pytest.raises(ShowHelp) as caught:
            parse_args(argv)
        assert caught.value.text == help_text()
    with pytest.raises(ShowHelp) as caught:
        parse_args(["--version"])
    assert caught.value.text == f"fastobs {__version__}\n"


# --- checks after discovery -------------------------------------------------------------


def test_names_without_delete() -> None:
    """--names without --delete is rejected with oc's message."""
    settings, _ = parse_args(["pods", "--names", "./known.sh"])
    with pytest.raises(UsageError, match="^--delete and --names must both be specified$"):
        check_after_discovery(settings)
    check_after_discovery(parse("--names", "./known.sh", "--delete", "./rm.sh"))


def test_bad_selector_after_discovery() -> None:
    """A malformed -l is rejected after discovery with kubectl's message; names comes first."""
    with pytest.raises(UsageError, match="^unable to parse requirement: found 'b', expected: in, notin"):
        check_after_discovery(parse("-l", "a b"))
    with pytest.raises(UsageError, match="--delete and --names"):
        check_after_discovery(parse("-l", "a b", "--names", "x"))
    check_after_discovery(parse("-l", "app in (a,b),!canary,tier"))


def test_unknown_output_format_with_template() -> None:
    """-o is checked only when a template is given, with oc's message."""
    check_after_discovery(parse("-o", "json"))
    with pytest.raises(UsageError) as caught:
        check_after_discovery(parse("-o", "json", "--template", "{.a}"))
    assert caught.value.message == (
        'unable to match a printer suitable for the output format "json", allowed formats are: '
        "go-template,go-template-file,jsonpath,jsonpath-as-json,jsonpath-file,template,templatefile"
    )


# --- help text ---------------------------------------------------------------------------


def test_help_lists_every_visible_flag_and_hides_deprecated_ones() -> None:
    """--help shows each flag with its default, and never the hidden deprecated flags."""
    text = help_text()
    for flag in FLAGS:
        shown = f"--{flag.name}="
        if flag.group == "hidden":
            assert shown not in text
        else:
            assert shown in text
    assert "--exit-after=0s:" in text and "--listen-addr=:11251:" in text


def test_usage_doc_mentions_every_flag() -> None:
    """docs/usage.md documents every flag, deprecated ones included."""
    doc = (ROOT / "docs" / "usage.md").read_text()
    missing = [flag.name for flag in FLAGS if f"--{flag.name}" not in doc]
    assert missing == []


def test_usage_doc_flag_tables_are_the_help_texts() -> None:
    """The flag tables of docs/usage.md are generated from the table --help prints, so the
    two cannot disagree: every table in the document is the generated one."""
    doc = (ROOT / "docs" / "usage.md").read_text()
    blocks = re.findall(r"<!-- flags:(\w+) ", doc)
    print(f"generated flag tables in docs/usage.md: {blocks}")
    assert sorted(blocks) == ["connection", "hidden", "new", "observe"]
    assert with_generated_tables(doc) == doc, "docs/usage.md is stale: run scripts/update-usage-doc"
    for flag in FLAGS:
        row = next(line for line in doc.splitlines() if line.startswith(f"| `--{flag.name}`"))
        assert flag.help.replace("|", "\\|") in row
        if flag.group != "hidden":
            assert " ".join(plain(flag.help).split()) in " ".join(help_text().split()), flag.name


def test_the_doc_check_notices_an_edited_table() -> None:
    """Changing a help text, or the document's copy of it, makes the check above fail."""
    doc = (ROOT / "docs" / "usage.md").read_text()
    edited = doc.replace("Retries after the first attempt", "Retries before the first attempt")
    assert edited != doc and with_generated_tables(edited) == doc


@pytest.mark.parametrize(("phrase", "why"), [
    ("(empty when there is no template)", "no argument is passed without a template"),
    ("With --no-coalesce: events held", "--max-pending applies in both modes"),
])
def test_help_no_longer_says(phrase: str, why: str) -> None:
    assert phrase not in help_text(), why


def test_help_says_what_the_command_receives() -> None:
    text = " ".join(help_text().split())
    assert "then, only when --template is given, one argument with its output" in text
    assert "with or without --no-coalesce" in text


# --- the real entry point ---------------------------------------------------------------


def run_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "fastobs", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "last_line"),
    [
        pytest.param(
            [],
            "error: you must specify at least one argument containing the resource to observe",
            id="no-resource",
        ),
        pytest.param(
            ["pods", "svc"],
            "error: you may only specify one argument containing the resource "
            "to observe (use '--' to separate your resource and your command)",
            id="two",
        ),
        pytest.param(
            ["pods", "--exit-after", "5"],
            'error: invalid argument "5" for "--exit-after" flag: time: missing unit in duration "5"',
            id="bad-duration",
        ),
        pytest.param(["pods", "--bogus"], "error: unknown flag: --bogus", id="unknown-flag"),
        pytest.param(
            ["pods", "--workers=-3"], "error: --workers must be 0 (one per CPU) or more, got -3", id="range"
        ),
    ],
)
def test_subprocess_usage_errors(argv: list[str], last_line: str) -> None:
    """The console entry prints `error: ...` last on stderr, exits 1, never a traceback."""
    done = run_cli(*argv)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == last_line
    assert "Traceback" not in done.stderr


def test_subprocess_flag_error_prints_usage() -> None:
    """A flag parse error prints the usage text before the error; an argument error does not."""
    assert "Usage:\n  fastobs RESOURCE [-- COMMAND [ARG...]] [flags]" in run_cli("pods", "--bogus").stderr
    assert "Usage:" not in run_cli("pods", "svc").stderr


def test_subprocess_deprecation_lines() -> None:
    """Deprecated flags print pflag's line once per use, before the error that stops the run."""
    done = run_cli("pods", "extra", "-a", "{.a}", "-a", "{.b}", "--strict-templates", "--no-headers")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        ARGUMENT_NOTICE,
        ARGUMENT_NOTICE,
        "Flag --strict-templates has been deprecated, and will be removed in a future release. "
        "Use --allow-missing-template-keys=false instead.",
        "Flag --no-headers has been deprecated, and will be removed in a future release. "
        "Use --quiet instead.",
        "error: you may only specify one argument containing the resource to observe "
        "(use '--' to separate your resource and your command)",
    ]


def test_subprocess_help_and_version() -> None:
    """--help prints the help on stdout and exits 0 without loading the Kubernetes client."""
    for flag in ("--help", "-h"):
        done = run_cli(flag)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == help_text()
    done = run_cli("--version")
    assert (done.returncode, done.stdout) == (0, f"fastobs {__version__}\n")
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom fastobs.cli import main\n"
            "code = main(['--help'])\nassert 'kubernetes' not in sys.modules\n"
            "assert 'fastobs.daemon' not in sys.modules\nsys.exit(code)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr


def test_subprocess_missing_kubeconfig_is_one_error_line(tmp_path: Path) -> None:
    """A failure past parsing is still one `error:` line and exit 1, not a traceback."""
    done = run_cli("pods", "--kubeconfig", str(tmp_path / "missing"), "--listen-addr=", "--once")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: ")


# --- exit codes of main() with a daemon that fails in a known way -------------------------

_FAKE_DAEMON = """
import sys, time, types
from fastobs import errors
module = types.ModuleType("fastobs.daemon")
def run(settings, prefetched=None):
    how = settings.resource
    if how == "sleep":
        print("ready", flush=True)
        time.sleep(60)
    if how == "ok":
        return 0
    if how == "bug":
        raise RuntimeError("boom")
    raise getattr(errors, how)("it failed")
module.run = run
sys.modules["fastobs.daemon"] = module
import fastobs
fastobs.daemon = module
from fastobs.cli import main
sys.exit(main())
"""


def run_with_daemon(*argv: str) -> subprocess.Popen[str]:
    """The real main() in a fresh interpreter whose daemon.run behaves as the resource says."""
    return subprocess.Popen(
        [sys.executable, "-c", _FAKE_DAEMON, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize(
    ("how", "code", "stderr"),
    [
        pytest.param("ok", 0, "", id="ok"),
        pytest.param("ConfigError", 1, "error: it failed\n", id="config-error"),
        pytest.param("ListErrorLimit", 255, "error: it failed\n", id="list-error-limit"),
        pytest.param("ListenError", 255, "error: it failed\n", id="listen-error"),
        pytest.param("WorkerBootError", 3, "error: it failed\n", id="worker-boot"),
        pytest.param("bug", 1, "error: unexpected RuntimeError: boom\n", id="unexpected"),
    ],
)
def test_exit_codes(how: str, code: int, stderr: str) -> None:
    """FastobsError subclasses map to their exit codes with one `error:` line; bugs never trace."""
    process = run_with_daemon(how)
    out, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (code, stderr)


def test_sigint_exits_130_quietly() -> None:
    """Ctrl-C while running exits 130 with nothing on stderr."""
    process = run_with_daemon("sleep")
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert (process.returncode, err) == (130, "")


def test_main_in_process_returns_code(capsys: pytest.CaptureFixture[str]) -> None:
    """main(argv) returns the exit code instead of exiting, and writes to the std streams."""
    assert main(["pods", "--exit-after", "x"]) == 1
    captured = capsys.readouterr()
    assert captured.err.endswith(
        'error: invalid argument "x" for "--exit-after" flag: time: invalid duration "x"\n'
    )
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fastobs {__version__}\n"


def test_console_script_entry() -> None:
    """The installed `fastobs` script (fastobs.cli:main) behaves like `python -m fastobs`."""
    script = Path(sys.executable).parent / "fastobs"
    if not script.exists():
        pytest.skip("fastobs is not installed as a console script in this environment")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, f"fastobs {__version__}\n")


# --- against the real pflag ---------------------------------------------------------------

_PFLAG_PROGRAM = """
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

type spec struct {
	Name, Short, Kind, Dest string
	Default                 any
	Choices                 []string
	IntBase                 int
	Deprecated              string
}

type choice struct {
	value   *string
	choices []string
}

func (c *choice) String() string { return *c.value }
func (c *choice) Type() string   { return "string" }
func (c *choice) Set(s string) error {
	for _, allowed := range c.choices {
		if s == allowed {
			*c.value = s
			return nil
		}
	}
	return errors.New("must be one of " + strings.Join(c.choices, ", "))
}

// A byte count as fastobs spells it (a Kubernetes quantity's binary or decimal suffix).
type byteSize struct{ value *int }

func (b *byteSize) String() string { return strconv.Itoa(*b.value) }
func (b *byteSize) Type() string   { return "bytes" }
func (b *byteSize) Set(s string) error {
	units := map[string]int{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30,
		"k": 1000, "M": 1000000, "G": 1000000000, "": 1}
	digits := strings.TrimRight(s, "KiMGk")
	unit, ok := units[s[len(digits):]]
	n, err := strconv.Atoi(digits)
	if !ok || err != nil || strings.Trim(digits, "0123456789") != "" {
		return errors.New("must be a number of bytes, optionally followed by Ki, Mi, Gi, k, M or G")
	}
	*b.value = n * unit
	return nil
}

type level struct{ value *int }

func (l *level) String() string { return strconv.Itoa(*l.value) }
func (l *level) Type() string   { return "Level" }
func (l *level) Set(s string) error {
	v, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return err
	}
	*l.value = int(v)
	return nil
}

func parse(specs []spec, argv []string) map[string]any {
	var out bytes.Buffer
	fs := pflag.NewFlagSet("fastobs", pflag.ContinueOnError)
	fs.SetOutput(&out)
	fs.Usage = func() {}
	fs.SetNormalizeFunc(func(f *pflag.FlagSet, name string) pflag.NormalizedName {
		return pflag.NormalizedName(strings.ReplaceAll(name, "_", "-"))
	})
	bools, strs, ints, durs, words := map[string]*bool{}, map[string]*string{}, map[string]*int{},
		map[string]*time.Duration{}, map[string]*[]string{}
	for _, s := range specs {
		switch s.Kind {
		case "bool":
			if bools[s.Dest] == nil {
				bools[s.Dest] = new(bool)
				*bools[s.Dest] = s.Default.(bool)
			}
			fs.BoolVarP(bools[s.Dest], s.Name, s.Short, s.Default.(bool), "")
		case "string":
			strs[s.Dest] = new(string)
			fs.StringVarP(strs[s.Dest], s.Name, s.Short, s.Default.(string), "")
		case "choice":
			strs[s.Dest] = new(string)
			*strs[s.Dest] = s.Default.(string)
			fs.VarP(&choice{strs[s.Dest], s.Choices}, s.Name, s.Short, "")
		case "int":
			if ints[s.Dest] == nil {
				ints[s.Dest] = new(int)
				*ints[s.Dest] = int(s.Default.(float64))
			}
			if s.IntBase == 10 {
				fs.VarP(&level{ints[s.Dest]}, s.Name, s.Short, "")
			} else {
				fs.IntVarP(ints[s.Dest], s.Name, s.Short, int(s.Default.(float64)), "")
			}
		case "bytes":
			ints[s.Dest] = new(int)
			*ints[s.Dest] = int(s.Default.(float64))
			fs.VarP(&byteSize{ints[s.Dest]}, s.Name, s.Short, "")
		case "duration":
			durs[s.Dest] = new(time.Duration)
			fs.DurationVarP(durs[s.Dest], s.Name, s.Short, time.Duration(s.Default.(float64)*1e9), "")
		case "words":
			words[s.Dest] = new([]string)
			fs.StringArrayVarP(words[s.Dest], s.Name, s.Short, nil, "")
		}
		if s.Deprecated != "" {
			fs.MarkDeprecated(s.Name, s.Deprecated)
		}
	}
	err := fs.Parse(argv)
	notices := []string{}
	for _, line := range strings.Split(out.String(), "\\n") {
		if strings.HasPrefix(line, "Flag --") {
			notices = append(notices, line)
		}
	}
	result := map[string]any{"notices": notices}
	if err != nil {
		result["error"] = err.Error()
		return result
	}
	values := map[string]any{}
	for k, v := range bools {
		values[k] = *v
	}
	for k, v := range strs {
		values[k] = *v
	}
	for k, v := range ints {
		values[k] = *v
	}
	for k, v := range durs {
		values[k] = int64(*v)
	}
	for k, v := range words {
		values[k] = append([]string{}, (*v)...)
	}
	result["values"] = values
	result["args"] = append([]string{}, fs.Args()...)
	result["dash"] = fs.ArgsLenAtDash()
	return result
}

func main() {
	var req struct {
		Flags []spec
		Cases [][]string
	}
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	results := []map[string]any{}
	for _, argv := range req.Cases {
		results = append(results, parse(req.Flags, argv))
	}
	json.NewEncoder(os.Stdout).Encode(results)
}
"""

_ARGV_PIECES = [
    "pods",
    "svc",
    "",
    "-",
    "--",
    "5",
    "1m",
    "-1",
    "true",
    "false",
    "0x10",
    "1_0",
    "_1",
    "99999999999999999999",
    "--once",
    "--once=false",
    "--once=maybe",
    "-q",
    "-Aq",
    "-qA",
    "-q=false",
    "-q=",
    "-qn",
    "-nfoo",
    "-n",
    "-n=x",
    "--namespace",
    "--namespace=",
    "--name_space",
    "--exit_after",
    "--exit-after",
    "--exit-after=5",
    "--exit-after=1m30s",
    "--resync-period=-2m",
    "-d",
    "--delete",
    "--names",
    "-a",
    "--argument",
    "-a{.x}",
    "--strict-templates",
    "--no-headers",
    "--no-headers=false",
    "--quiet",
    "--maximum-errors",
    "--maximum-errors=0x1F",
    "--maximum-errors=0o17",
    "--maximum-errors=1_000",
    "--maximum-errors=1__0",
    "-v",
    "-v=3",
    "-v3",
    "--v",
    "--loglevel",
    "--loglevel=0x3",
    "--object-channel",
    "--object-channel=file",
    "--object-channel=pipe",
    "--bogus",
    "--bogus=1",
    "-x",
    "-Ax",
    "---x",
    "--=x",
    "--help=false",
    "-s",
    "--timeout=1.5h",
    "--backoff-cap",
    "-o",
    "--output=gotemplate",
    "--template",
    "--listen-addr=",
    "--allow-missing-template-keys=F",
    "--workers",
    "--concurrency=0b101",
    "-lapp=web",
    "--kill_grace=3s",
    "--output-limit=4Mi",
    "--output-limit",
    "--output-limit=12",
    "--output-limit=-1k",
]


def _pflag_cases() -> list[list[str]]:
    rng = random.Random(11251)
    fixed = [["pods"], ["pods", "--", "--once", "--"], ["-Aq", "pods", "-n", "--"], ["--exit_after=2s", "x"]]
    return fixed + [[rng.choice(_ARGV_PIECES) for _ in range(rng.randrange(1, 7))] for _ in range(4000)]


def _ours(argv: list[str]) -> dict[str, Any]:
    scan = _Scan(argv)
    try:
        scan.run()
    except ParseError as error:
        return {"notices": error.notices, "error": error.message}
    values: dict[str, Any] = {}
    for flag in FLAGS:
        value = scan.values[flag.dest]
        if flag.kind == "duration":
            value = round(value * 1e9)
        elif flag.kind == "words":
            value = list(value)
        values[flag.dest] = value
    command = scan.command
    return {
        "notices": scan.notices,
        "values": values,
        "args": scan.positionals + (command or []),
        "dash": len(scan.positionals) if command is not None else -1,
    }


@pytest.fixture(scope="module")
def pflag_answers(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What github.com/spf13/pflag makes of every case, with the same flag table."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.skip("the Go toolchain is not installed")
    workdir = tmp_path_factory.mktemp("gopflag")
    (workdir / "go.mod").write_text("module gopflag\n\ngo 1.21\n\nrequire github.com/spf13/pflag v1.0.9\n")
    (workdir / "main.go").write_text(_PFLAG_PROGRAM)
    flags = [
        {
            "Name": f.name,
            "Short": f.short,
            "Kind": f.kind,
            "Dest": f.dest,
            "Default": list(f.default) if f.kind == "words" else f.default,
            "Choices": list(f.choices),
            "IntBase": f.int_base,
            "Deprecated": f.deprecated,
        }
        for f in FLAGS
    ]
    request = json.dumps({"Flags": flags, "Cases": _pflag_cases()})
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOSUMDB="off", GOTOOLCHAIN="local")
    done = subprocess.run(
        [go, "run", "."],
        cwd=workdir,
        input=request.encode(),
        capture_output=True,
        env=env,
        timeout=280,
        check=False,
    )
    if done.returncode != 0 and b"GOPROXY=off" in done.stderr:
        pytest.skip("github.com/spf13/pflag is not in the Go module cache")
    assert done.returncode == 0, done.stderr.decode()
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers


def test_argv_parsing_matches_pflag(pflag_answers: list[dict[str, Any]]) -> None:
    """On thousands of argv mixes, values, arguments, `--` position, notices and errors match pflag."""
    mismatches = []
    for argv, answer in zip(_pflag_cases(), pflag_answers, strict=True):
        ours = _ours(argv)
        if ours != answer:
            mismatches.append((argv, ours, answer))
    assert len(pflag_answers) > 4000
    assert mismatches[:3] == []


def test_template_is_checked_before_names_and_selector() -> None:
    """As in oc, a template that does not parse is reported before --names and selector errors."""
    settings = parse("--template", "{.metadata.name", "--names", "x", "-l", "a b")
    with pytest.raises(TemplateError, match=r"^error parsing jsonpath \{\.metadata\.name, unclosed action$"):
        check_after_discovery(settings)
    check_after_discovery(parse("--template", "{.metadata.name}"))


# --- the real entry point against the real apiserver --------------------------------------


def run_on_cluster(env: dict[str, str], *argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastobs", "--listen-addr=", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.cluster
def test_cluster_oc_style_command_line(k8s: Any, ns: str) -> None:
    """An oc-style command line (deprecated -a, -q, --once) runs against the server and exits 0."""
    k8s.kubectl("-n", ns, "create", "configmap", "cm1", "--from-literal=k=v1")
    done = run_on_cluster(
        k8s.env,
        "configmaps",
        "-n",
        ns,
        "--once",
        "-q",
        "-a",
        "{.metadata.name}",
        "-a",
        "{.data.k}",
        "--",
        "echo",
        "seen",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines().count(ARGUMENT_NOTICE) == 2
    assert f"seen {ns} cm1 cm1 v1" in done.stdout.splitlines()
    assert not [line for line in done.stdout.splitlines() if line.startswith("# ")]


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("argv", "last_line"),
    [
        pytest.param(
            ["configmaps", "--names", "./known.sh"],
            "error: --delete and --names must both be specified",
            id="names-without-delete",
        ),
        pytest.param(
            ["configmaps", "-l", "a b"],
            "error: unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
            id="bad-selector",
        ),
        pytest.param(
            ["nosuchthings", "--names", "x", "-l", "a b"],
            'the server doesn\'t have a resource type "nosuchthings"',  # no "error: ", as oc
            id="discovery-first",
        ),
    ],
)
def test_cluster_checks_after_discovery(k8s: Any, ns: str, argv: list[str], last_line: str) -> None:
    """Errors oc reports after discovery come out of the real run in oc's order, exit 1."""
    done = run_on_cluster(k8s.env, "-n", ns, *argv)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == last_line
    assert "Traceback" not in done.stderr


@pytest.mark.cluster
def test_cluster_exit_after_prints_go_duration(k8s: Any, ns: str) -> None:
    """--exit-after exits 0 with oc's line, the duration printed the Go way."""
    done = run_on_cluster(k8s.env, "configmaps", "-n", ns, "--exit_after=1500ms", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "Shutting down after 1.5s ..."


def test_every_output_format_the_help_names_works(tmp_path: Path) -> None:
    """-o's help names every template format oc accepts, and each of them renders."""
    from fastobs.templates import FORMATS, compile_template

    text = BY_NAME["output"].help
    assert [f for f in FORMATS if f"`{f}`" not in text] == []
    obj = {"metadata": {"name": "x"}}
    for fmt in FORMATS:
        template = "{{.metadata.name}}" if "template" in fmt else "{.metadata.name}"
        if fmt.endswith("file"):
            path = tmp_path / fmt
            path.write_text(template)
            template = str(path)
        rendered = compile_template(template, fmt).render(obj)
        print(f"-o {fmt}: {rendered!r}")
        assert rendered == ('[\n    "x"\n]\n' if fmt == "jsonpath-as-json" else "x")
