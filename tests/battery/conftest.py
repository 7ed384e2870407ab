"""Fixtures of the reliability battery (see harness.py) and the totals printed after the run."""

from __future__ import annotations

import pytest

from .harness import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.cases:
        terminalreporter.write_sep("-", "reliability battery")
        terminalreporter.write_line(TALLY.summary())
        bad = sorted(k for k, v in TALLY.cases.items() if not v["clean"])
        if bad:
            terminalreporter.write_line("not clean: " + ", ".join(bad))
