"""The --lease-name flags: client-go's defaults and timing rules, plus the fencing margin."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastobs.cli import ParseError, parse_args


def test_defaults_are_client_gos() -> None:
    settings, _ = parse_args(["pods", "--lease-name", "obs"])
    assert (settings.lease_duration, settings.renew_deadline, settings.retry_period) == (15.0, 10.0, 2.0)
    assert (settings.buckets, settings.shard_key, settings.shard_filter) == (1, "name", "auto")
    assert settings.lease_kill_grace == 2.0 and not settings.resync_on_start


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--buckets", "4"], "--buckets needs --lease-name", id="buckets-alone"),
        pytest.param(["--retry-period", "1s"], "--retry-period needs --lease-name", id="timing-alone"),
        pytest.param(["--lease-name", "Obs_1"], "--lease-name must be at most 40 lower-case letters, "
                     "digits or '-', starting and ending with a letter or digit, got \"Obs_1\"",
                     id="bad-name"),
        pytest.param(["--lease-name", "g", "--lease-duration", "10s"],
                     "--lease-duration must be greater than --renew-deadline", id="ld-le-rd"),
        pytest.param(["--lease-name", "g", "--retry-period", "9s"],
                     "--renew-deadline must be greater than 1.2 x --retry-period", id="rd-le-rp"),
        pytest.param(["--lease-name", "g", "--lease-kill-grace", "4s"],
                     "--renew-deadline + --lease-kill-grace + --retry-period (16s) must not exceed "
                     "--lease-duration (15s): commands must be stopped before another replica may take "
                     "their objects over", id="no-fencing-margin"),
        pytest.param(["--lease-name", "g", "--buckets", "0"], "--buckets must be 1..256, got 0",
                     id="buckets-0"),
        pytest.param(["--lease-name", "g", "--buckets", "257"], "--buckets must be 1..256, got 257",
                     id="buckets-257"),
        pytest.param(["--lease-name", "g", "--once"],
                     "--once cannot be used with --lease-name: run one fastobs alone for --once", id="once"),
        pytest.param(["--lease-name", "g", "--shard-key", "uid", "--names", "ls", "-d", "rm"],
                     "--names cannot be used with --shard-key uid: a name that no longer exists has no uid "
                     "to find its bucket", id="names-uid"),
        pytest.param(["--lease-name", "g", "--shard-filter", "server"],
                     "--shard-filter server needs --shard-key uid or namespace: the API server cannot filter "
                     "on names", id="server-filter-name"),
        pytest.param(["--lease-name", "g", "--retry-period", "0"],
                     "--retry-period must be more than 0, got 0s", id="retry-0"),
    ],
)
def test_group_flag_errors_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_args(["pods", *argv])
    assert caught.value.message == message
    assert not caught.value.show_usage


def test_the_design_studys_test_timing_is_valid() -> None:
    """4 s / 3 s / 0.5 s with a 0.5 s kill grace: 3 + 0.5 + 0.5 = 4, exactly the lease."""
    settings, _ = parse_args(["pods", "--lease-name", "g", "--lease-duration", "4s", "--renew-deadline", "3s",
                              "--retry-period", "500ms", "--lease-kill-grace", "500ms"])
    assert settings.lease_duration == 4.0


def test_a_bad_group_flag_exits_1_with_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "fastobs", "pods", "--lease-name", "g", "--buckets", "300"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr == "error: --buckets must be 1..256, got 300\n"
