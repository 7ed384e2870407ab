"""Faults: ``python -m textsam eval`` stopped by SIGINT or killed by SIGKILL in the middle of a run, then the
same command again.

Data: ``textsam data synth --train 2 --val 2 --test 12 --seed 0``; the command is the points benchmark with
one click and the bundled ``shapes_tiny`` model. The signal is sent once ``results.jsonl`` holds ``K`` lines,
so it lands in the middle of the run whatever the machine's speed. What must hold:

- the stopped run leaves no half-written file under a final name (run.json parses, every complete line of
  results.jsonl parses, no report yet) and SIGINT ends with exit 130 and one line saying how to resume;
- the rerun keeps the finished images (their records, with their original timings, are still there and the
  report counts them as resumed) and predicts only the others;
- a last results line cut by the kill is dropped and its image predicted again;
- the final report equals an uninterrupted run's (everything but the timing section).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textsam.eval.report import TIMING_HEADER, strip_timing

from .harness import TALLY, run_cli

K = 3  # send the signal once this many images are finished
N = 12  # test images
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults_eval") / "syn"
    outcome = run_cli(["data", "synth", "--out", str(root), "--train", "2", "--val", "2", "--test", str(N),
                       "--seed", "0"])
    assert outcome.rc == 0, outcome.text
    return root / "test"


def _argv(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "textsam", "eval", "points", "--data", str(data), "--model", "shapes_tiny",
            "--clicks", "1", "--no-progress", "--out", str(out)]


def _run(data: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(data, out), capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults_eval_full") / "out"
    done = _run(data, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _start_and_stop(data: Path, out: Path, sig: signal.Signals, log: Path) -> tuple[int, str]:
    """Start the run, send ``sig`` once results.jsonl has K lines; return (exit code, stderr)."""
    with open(log, "w") as err:
        proc = subprocess.Popen(_argv(data, out), stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        try:
            deadline = time.monotonic() + 300
            while _complete_lines(out / "results.jsonl") < K:
                assert proc.poll() is None, f"the run ended before it was stopped:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no progress within 300 s"
                time.sleep(0.02)
            proc.send_signal(sig)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, log.read_text()


def _records(out: Path) -> dict[str, dict]:
    """The complete, parseable records of results.jsonl (a final line without its newline is not one)."""
    text = (out / "results.jsonl").read_text()
    lines = text.split("\n")[:-1]  # what follows the last newline is not a complete line
    return {str(r["key"]): r for r in map(json.loads, lines)}


def _nothing_half_written(out: Path) -> None:
    json.loads((out / "run.json").read_text())
    _records(out)  # every complete line parses
    assert not (out / "report.json").exists() and not (out / "report.md").exists()
    leftovers = [p.name for p in out.iterdir() if p.name not in ("run.json", "results.jsonl")]
    assert not leftovers, leftovers


def _same_as_uninterrupted(out: Path, full: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert strip_timing(report) == strip_timing(json.loads((full / "report.json").read_text()))
    md, md_full = ((d / "report.md").read_text().split(TIMING_HEADER)[0] for d in (out, full))
    assert md == md_full
    assert [json.loads(x)["key"] for x in (out / "results.jsonl").read_text().splitlines()] == \
        [json.loads(x)["key"] for x in (full / "results.jsonl").read_text().splitlines()]
    return report


def _record(case: str, ok: bool) -> None:
    TALLY.add(f"faults-eval/{case}", clean=ok, traceback=False, unexpected=False, lost=0)


def test_sigint_mid_run_then_rerun(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok = False
    try:
        rc, err = _start_and_stop(data, out, signal.SIGINT, tmp_path / "stderr.txt")
        assert rc == 130, err[-3000:]
        assert "Traceback" not in err and "unexpected" not in err.lower(), err[-3000:]
        errors = [ln for ln in err.splitlines() if ln.startswith("textsam: error:")]
        assert errors == ["textsam: error: interrupted"], err[-3000:]
        assert "run the same command again to resume" in err
        _nothing_half_written(out)
        kept = _records(out)
        assert K <= len(kept) < N, f"the signal did not land mid-run ({len(kept)} of {N} images done)"

        again = _run(data, out)
        assert again.returncode == 0, again.stderr[-3000:]
        report = _same_as_uninterrupted(out, uninterrupted)
        assert report["timing"]["images_resumed_from_earlier_runs"] == len(kept)
        final = _records(out)
        assert all(final[k] == rec for k, rec in kept.items()), "a finished image was predicted again"
        print(f"\nSIGINT after {len(kept)} of {N} images: rerun resumed {len(kept)}, predicted {N - len(kept)}; "
              "report equals the uninterrupted run's")
        ok = True
    finally:
        _record("sigint-then-rerun", ok)


def test_sigkill_mid_run_with_a_cut_line_then_rerun(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok = False
    try:
        rc, err = _start_and_stop(data, out, signal.SIGKILL, tmp_path / "stderr.txt")
        assert rc == -signal.SIGKILL
        _nothing_half_written(out)
        kept = _records(out)
        assert K <= len(kept) < N, f"the kill did not land mid-run ({len(kept)} of {N} images done)"

        # what a kill in the middle of a write leaves: the last record cut short, without its newline
        results = out / "results.jsonl"
        raw = results.read_bytes()
        last_start = raw[:-1].rfind(b"\n") + 1
        cut_key = json.loads(raw[last_start:])["key"]
        results.write_bytes(raw[: last_start + (len(raw) - last_start) // 2])
        kept.pop(str(cut_key))

        again = _run(data, out)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "dropping its last line" in again.stderr
        report = _same_as_uninterrupted(out, uninterrupted)
        assert report["timing"]["images_resumed_from_earlier_runs"] == len(kept)
        final = _records(out)
        assert all(final[k] == rec for k, rec in kept.items()), "a finished image was predicted again"
        assert str(cut_key) in final and not final[str(cut_key)].get("error")
        print(f"\nSIGKILL after {len(kept) + 1} of {N} images, last line cut: rerun resumed {len(kept)}, redid image "
              f"{cut_key} and {N - len(kept) - 1} more; report equals the uninterrupted run's")
        ok = True
    finally:
        _record("sigkill-cut-line-then-rerun", ok)
