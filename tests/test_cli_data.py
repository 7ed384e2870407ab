"""`textsam data synth` writes the synthetic dataset the readers and the evaluation use."""

from __future__ import annotations

import json

from textsam.cli import main
from textsam.data.refer import ReferDataset


def test_data_synth_writes_readable_splits(tmp_path, capsys) -> None:
    root = tmp_path / "syn"
    code = main(["data", "synth", "--out", str(root), "--train", "3", "--val", "1", "--test", "2", "--size", "96"])
    assert code == 0
    assert "test: 2 images" in capsys.readouterr().out
    meta = json.loads((root / "meta.json").read_text())
    assert meta["image_size"] == 96 and meta["counts"]["train"]["images"] == 3
    refer = ReferDataset(root / "test" / "refs.json", root / "test" / "instances.json", root / "test" / "images")
    ref = refer.refs[0]
    assert refer.target_mask(ref).shape == (96, 96) and refer.target_mask(ref).any()


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("textsam: error:") and "unexpected" not in err, err
    return lines[0]


def test_data_synth_refuses_a_file_or_an_earlier_dataset(tmp_path, capsys) -> None:
    small = ["--train", "1", "--val", "1", "--test", "1", "--size", "64"]
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(tmp_path / "notes.txt"), *small]) == 2
    assert "is a file" in _err_line(capsys)
    assert main(["data", "synth", "--out", str(tmp_path / "notes.txt" / "syn"), *small]) == 2
    assert "cannot write" in _err_line(capsys)
    root = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(root), *small]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert main(["data", "synth", "--out", str(root), "--seed", "1", *small]) == 2
    assert "already holds" in _err_line(capsys)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert main(["data", "synth", "--out", str(tmp_path / "big"), "--size", "100000"]) == 2
    assert "between 32 and 4096" in _err_line(capsys)


def test_interrupted_data_synth_leaves_nothing(tmp_path, monkeypatch, capsys) -> None:
    from textsam.data import synthetic

    real, calls = synthetic._render_one, []

    def render(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(synthetic, "_render_one", render)
    (tmp_path / "keep.txt").write_text("a file of the user's in the output folder")
    argv = ["data", "synth", "--out", str(tmp_path), "--train", "2", "--val", "2", "--test", "2", "--size", "64"]
    assert main(argv) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # no half-written dataset
    monkeypatch.setattr(synthetic, "_render_one", real)
    assert main(argv) == 0 and (tmp_path / "test" / "refs.json").is_file()
    assert (tmp_path / "keep.txt").read_text().startswith("a file")
