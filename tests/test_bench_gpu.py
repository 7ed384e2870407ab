"""benchmarks/bench_gpu.py, the one-run GPU table of issue #20, run on the CPU in its quick mode: every row is
measured (none failed), a broken row is recorded as failed without losing the others, a spent budget skips rows,
and asking for CUDA where there is none is a usage error. The GPU figures themselves need a GPU machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[4:] if line.startswith("|")]


def test_quick_run_measures_every_row(bench, tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    assert bench.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    table = rows(out.read_text())
    whats = {r[0] for r in table}
    for expected in ("GEMM rate", "shapes_tiny encoder FLOPs", "shapes_tiny set_image", "shapes_tiny predict",
                     "shapes_tiny new image + phrase", "shapes_tiny vocabulary after set_image", "shapes_tiny labeller"):
        assert expected in whats, (expected, whats)
    assert not [r for r in table if r[2] in ("failed", "skipped")], table
    settings = {(r[0], r[1]) for r in table}
    assert ("shapes_tiny predict", "16 boxes, one call, 1 mask each") in settings
    assert any(r[0] == "shapes_tiny labeller" and r[2].endswith("images/s") and float(r[2].split()[0]) > 0
               for r in table)
    assert any(r[0] == "shapes_tiny set_image" and "GEMM floor" in r[3] for r in table)


def test_a_broken_row_is_recorded_and_the_run_goes_on(bench, tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(bench, "encoder_flops", broken)
    out = tmp_path / "gpu.md"
    assert bench.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    table = rows(out.read_text())
    failed = [r for r in table if r[2] == "failed"]
    assert [r[0] for r in failed] == ["shapes_tiny encoder FLOPs"]
    assert "RuntimeError: no kernel image" in failed[0][3]
    # the rows after it were measured, set_image without its floor ratio (no FLOP count)
    assert any(r[0] == "shapes_tiny set_image" and r[2].endswith("ms") and not r[3] for r in table)
    assert any(r[0] == "shapes_tiny labeller" for r in table)


def test_a_spent_budget_skips_the_rows_not_started(bench, tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    assert bench.main(["--device", "cpu", "--quick", "--budget", "0", "--out", str(out)]) == 0
    table = rows(out.read_text())
    assert table and all(r[2] == "skipped" for r in table)


def test_cuda_without_a_gpu_is_a_usage_error(bench, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main(["--device", "cuda"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
