"""Fixtures of the reliability battery (see harness.py) and the totals printed after the run.

Each test report carries the cases its test recorded (``user_properties``), so the totals are complete when
pytest-xdist runs the tests in several worker processes: tests/conftest.py gathers them from the reports
(in the process that prints the summary) and prints them.
"""

from __future__ import annotations

import pytest

from .harness import TALLY

_REPORTED: set[str] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201 - a hook wrapper
    outcome = yield
    report = outcome.get_result()
    for case in sorted(set(TALLY.cases) - _REPORTED):  # the cases recorded since the last report
        _REPORTED.add(case)
        report.user_properties.append(("battery_case", (case, TALLY.cases[case])))
