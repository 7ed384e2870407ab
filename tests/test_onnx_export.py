"""ONNX export: onnxruntime on our graph vs segment-anything's own ONNX model and vs our predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import textsam
from textsam.cli import main
from textsam.export.onnx import OnnxPromptDecoder, example_inputs, export_onnx

from .tiny import official_sam

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _run(path: Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(inputs)
    return session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})


@pytest.fixture(scope="module")
def official_and_ours(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("segment_anything")
    sam = official_sam("vit_b")
    ckpt = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), ckpt)
    return sam, textsam.create_model("sam_vit_b", checkpoint=ckpt)


def _sam_inputs(num_points: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0, 1.0][:num_points]])
    return (
        torch.randn(1, 256, 64, 64, generator=g) * 0.5,
        torch.rand(1, num_points, 2, generator=g) * torch.tensor([1024.0, 683.0]),
        labels,
        torch.randn(1, 1, 256, 256, generator=g),
        torch.tensor([float(seed % 2)]),
        torch.tensor([1200.0, 1800.0]),
    )


@pytest.mark.parametrize("single", [False, True])
def test_onnx_matches_official_onnx_model(official_and_ours, tmp_path: Path, single: bool) -> None:
    """Our exported graph in onnxruntime vs segment-anything's SamOnnxModel in PyTorch, same weights."""
    from segment_anything.utils.onnx import SamOnnxModel

    sam, ours = official_and_ours
    path = export_onnx(ours, tmp_path / "sam.onnx", return_single_mask=single)
    reference = SamOnnxModel(sam, return_single_mask=single)
    for num_points, seed in [(2, 0), (3, 1), (6, 2)]:  # the point count is a dynamic axis
        inputs = _sam_inputs(num_points, seed)
        got = _run(path, inputs)
        with torch.no_grad():
            want = [t.numpy() for t in reference(*inputs)]
        assert [g.shape for g in got] == [w.shape for w in want]
        assert np.abs(got[0] - want[0]).max() <= 1e-3  # upscaled logits (values up to ~10)
        assert np.abs(got[1] - want[1]).max() <= 1e-4
        assert np.abs(got[2] - want[2]).max() <= 1e-3


def test_onnx_text_graph_matches_the_predictor(tmp_path: Path) -> None:
    """shapes_tiny with the text input: the graph gives the predictor's logits for text + a click."""
    model = textsam.create_model("shapes_tiny")
    path = export_onnx(model, tmp_path / "tiny.onnx", with_text=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    image[30:60, 40:80] = (220, 30, 30)
    predictor = textsam.TextSamPredictor(model)
    predictor.set_image(image)
    pred = predictor.predict(text="red square", point_coords=np.array([[60.0, 45.0]]), point_labels=np.array([1]),
                             return_logits=True)
    coords = torch.tensor([[[60.0, 45.0], [0.0, 0.0]]]) * (model.img_size / 128)
    with torch.no_grad():
        text = (model.text_encoder.encode(["red square"]).float(),)
    inputs = (predictor.get_image_embedding().float(), coords, torch.tensor([[1.0, -1.0]]),
              torch.zeros(1, 1, *model.prompt_encoder.mask_input_size), torch.tensor([0.0]), torch.tensor([96.0, 128.0]),
              *text)
    masks, scores, _ = _run(path, inputs)
    assert masks.shape == (1, 4, 96, 128)
    order = 1 + np.argsort(-scores[0, 1:], kind="stable")  # the predictor orders its 3 masks by score
    np.testing.assert_allclose(masks[0, order], pred.masks, atol=1e-4)
    np.testing.assert_allclose(scores[0, order], pred.scores, atol=1e-5)
    with torch.no_grad():
        torch_out = OnnxPromptDecoder(model, with_text=True)(*inputs)
    np.testing.assert_allclose(masks, torch_out[0].numpy(), atol=1e-4)


def test_example_inputs_shapes() -> None:
    model = textsam.create_model("shapes_tiny")
    inputs = example_inputs(model, num_points=4, with_text=True)
    grid, dim = model.config.embedding_size, model.config.prompt_encoder.embed_dim
    assert inputs[0].shape == (1, dim, grid, grid) == (1, 128, 32, 32)
    assert inputs[1].shape == (1, 4, 2) and inputs[3].shape == (1, 1, 4 * grid, 4 * grid) and inputs[6].shape[0] == 1


def test_cli_export_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--model", "shapes_tiny", "--text", "--return-single-mask", "-o", str(out)]) == 0
    assert out.is_file() and not list(tmp_path.glob("*.part"))  # the temporary file was renamed
    inputs = example_inputs(textsam.create_model("shapes_tiny"), num_points=2, with_text=True)
    masks, scores, low = _run(out, inputs)
    assert masks.shape[:2] == (1, 1) and scores.shape == (1, 1) and low.shape == (1, 1, 128, 128)
    capsys.readouterr()
    assert main(["export", "--model", "sam_vit_b", "--checkpoint", str(tmp_path / "missing.pth"), "-o", str(out)]) != 0
    assert "missing.pth" in capsys.readouterr().err
    assert main(["export", "--model", "shapes_tiny", "--opset", "9", "-o", str(out)]) != 0
    assert "opset" in capsys.readouterr().err


def test_text_export_needs_a_text_head() -> None:
    from textsam.errors import InputError

    model = textsam.create_model("shapes_tiny")
    model.text_projector = None
    with pytest.raises(InputError, match="no text head"):
        OnnxPromptDecoder(model, with_text=True)


def test_export_says_the_locator_is_not_in_the_graph(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The bundled head has a locator: the export names it as left out, and how to pass its click."""
    model = textsam.create_model("shapes_tiny")
    assert model.text_locator is not None
    export_onnx(model, tmp_path / "tiny.onnx", with_text=True)
    assert "not exported: the text head's locator" in caplog.text and "as a positive point" in caplog.text
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "tiny.onnx"))
    assert [i.name for i in session.get_inputs()][-1] == "text_embedding"


def test_output_path_errors_and_interrupted_exports_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from textsam.errors import InputError

    model = textsam.create_model("shapes_tiny")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        export_onnx(model, tmp_path / "folder.onnx")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt is a file, not a folder"):
        export_onnx(model, tmp_path / "notes.txt" / "decoder.onnx")

    out = tmp_path / "decoder.onnx"
    old = os.umask(0o022)
    try:
        export_onnx(model, out)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
    before = out.read_bytes()

    def stopped(*args: object, **kwargs: object) -> None:
        Path(args[2]).write_bytes(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", stopped)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, out)
    assert out.read_bytes() == before  # the earlier export is intact, no temporary file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "folder.onnx", "notes.txt"]
