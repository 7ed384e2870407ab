"""Faults: ``textsam segment`` over a folder is interrupted (SIGINT) or killed (SIGKILL) part-way, then the
same command runs again. The finished images are kept (not redone), nothing half-written is left under a
final name, and the output folder ends byte-equal to an uninterrupted run's."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import files
from .harness import TALLY, has_traceback

N_IMAGES = 6


def _inputs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(N_IMAGES):
        files.good_png(folder / f"scene{i:02d}.png", (96 + 8 * i, 72 + 4 * i))
    return folder


def _argv(inputs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "textsam", "segment", str(inputs), "--text", "red circle", "--model", "shapes_tiny",
            "-o", str(out), "--no-progress"]


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The inputs and an uninterrupted run's output folder."""
    root = tmp_path_factory.mktemp("segment_faults")
    inputs = _inputs(root / "in")
    proc = subprocess.run(_argv(inputs, root / "ref"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return inputs, _digests(root / "ref")


def _start_and_stop(argv: list[str], out: Path, sig: int, after: int) -> subprocess.CompletedProcess:
    """Start the command, wait until ``after`` images are finished, send ``sig``."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(1 for p in out.glob("*.json")) >= after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_stopped_then_rerun_equals_uninterrupted(reference: tuple[Path, dict[str, str]], tmp_path: Path,
                                                 sig: int) -> None:
    inputs, expected = reference
    out = tmp_path / "out"
    argv = _argv(inputs, out)
    clean = False
    first = second = None
    try:
        first = _start_and_stop(argv, out, sig, after=2)
        if sig == signal.SIGINT:
            assert first.returncode == 130, first.stderr
            assert "run the same command again" in first.stderr
        else:
            assert first.returncode == -signal.SIGKILL
        finished = {p.name for p in out.glob("*.json")}
        assert 2 <= len(finished) < N_IMAGES
        kept = {name: os.stat(out / name).st_mtime_ns for name in finished}
        second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert f"{len(finished)} of {N_IMAGES} image(s) already done" in second.stderr
        assert all(os.stat(out / name).st_mtime_ns == t for name, t in kept.items()), "finished images were redone"
        assert _digests(out) == expected  # byte-equal, and no leftover temporary file
    finally:
        text = "".join((r.stdout or "") + (r.stderr or "") for r in (first, second) if r is not None)
        clean = "second" in locals() and second is not None and second.returncode == 0 and _digests(out) == expected
        TALLY.add(f"faults/segment-{signal.Signals(sig).name}", clean=clean, traceback=has_traceback(text),
                  unexpected="unexpected" in text.lower(), lost=0)
