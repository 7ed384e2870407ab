"""Shared fixtures: paths to ../shared/data and small random models."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TEXTSAM_SHARED_DATA", REPO.parent / "shared" / "data"))

# one thread per pytest-xdist worker (the workers share the machine's cores), else up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever writes to (or reads weights from) the user's real cache, or touches the network."""
    monkeypatch.setenv("TEXTSAM_HOME", str(tmp_path_factory.getbasetemp() / "textsam_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``local-dir:`` spec of a tiny random CLIP (tests.tiny.TINY_CLIP_CFG) written once per session."""
    from textsam.train.clip_pretrain import build_clip, save_local_dir

    from .tiny import TINY_CLIP_CFG

    torch.manual_seed(0)
    path = save_local_dir(build_clip(TINY_CLIP_CFG), TINY_CLIP_CFG, tmp_path_factory.mktemp("clip") / "tiny_clip")
    return f"local-dir:{path}"


# ------------------------------------------------------------------ running in parallel (pytest-xdist)
# The test command runs the files on `-n auto` workers (pyproject.toml), one file per worker at a time
# (`--dist loadfile`: module fixtures such as the vit_b models are built once), in collection order
# (`--no-loadscope-reorder`). The longest files go first
# so that no worker is left with a long file at the end.
HEAVY_FIRST = ("test_recipes.py", "test_app_load.py", "test_label_ray.py", "test_parity_vit_b.py", "test_faults_segment.py", "test_train.py",
               "test_faults_train.py", "test_eval_runs.py", "test_faults_eval.py", "test_text_locator.py")


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background of a non-interactive shell (``nohup pytest &``) inherits SIGINT as
    ignored, and so would every command a test starts: give it back its default meaning (KeyboardInterrupt here;
    a Python handler becomes the default action in a child at exec), so the SIGINT tests test the real thing."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per CPU, at most 4 (each holds its own models in memory)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


# ------------------------------------------------------------------ the reliability battery's totals
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Gather the battery cases each report carries (see tests/battery/conftest.py)."""
    from .battery.harness import TALLY

    for name, value in report.user_properties:
        if name == "battery_case":
            case, row = value
            TALLY.cases[case] = dict(row)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from .battery.harness import TALLY

    if TALLY.cases:
        terminalreporter.write_sep("-", "reliability battery")
        terminalreporter.write_line(TALLY.summary())
        bad = sorted(k for k, v in TALLY.cases.items() if not v["clean"])
        if bad:
            terminalreporter.write_line("not clean: " + ", ".join(bad))



CHROMIUM = Path("/usr/bin/chromium")  # Debian's Chromium, driven through Playwright (its own download is not used)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the browser tests (one per test module); skips when Chromium or Playwright is missing."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
