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
