"""The fault-injection suite: real fastobs, real kube-apiserver, real processes, real faults.

Where it sits: a directory of scenario modules under ``tests/``, run by ``scripts/test``
with everything else (the session's cluster fixtures come from ``tests/conftest.py``).
Each ``test_faults_<area>.py`` module holds the scenarios of one area (network and API
server, objects, execution...); ``faultlib`` holds what they share. A scenario injects one
fault, checks the promise it threatens and calls ``faultlib.report`` with its figures:
keys checked, final states lost, overlapping runs, recovery seconds, leftovers. This file
prints every figure in one table at the end of the run.

Invariant: each scenario bounds its own time (its timeouts, its ``pytest.mark.timeout``), so
the suite stays within a few minutes on a 2-core machine.
"""

from __future__ import annotations

import pytest
from faultlib import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault suite figures")
    for scenario, figures in FIGURES:
        terminalreporter.write_line(f"{scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
