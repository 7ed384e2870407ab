"""``textsam export --web``: the graphs against the model (onnxruntime in Python, no browser), the pinned
onnxruntime-web download (mocked), the folder's safety rules, and ``textsam app --static``'s server."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import textsam
from textsam.cli import main
from textsam.download import RemoteFile
from textsam.errors import DownloadError, InputError
from textsam.export import web_runtime
from textsam.export.web import export_web
from textsam.text.engine import EngineOptions
from textsam.text.options import TextOptions

from .fake_http import FakeResponse, no_network
from .tiny import tiny_sam

EXAMPLE = Path(textsam.__file__).parent / "examples" / "shapes.png"


def _fake_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for inner in web_runtime.RUNTIME_FILES:
            data = f"// stand-in for {inner}\n".encode()
            info = tarfile.TarInfo(inner)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def fake_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tarball with the runtime's file names, pinned in place of the real one; the network is off."""
    body = _fake_tarball()
    monkeypatch.setattr(web_runtime, "ORT_WEB", RemoteFile("onnxruntime-web (test)", "https://registry.invalid/ort.tgz",
                                                            len(body), hashlib.sha256(body).hexdigest()))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    path = tmp_path / "ort.tgz"
    path.write_bytes(body)
    return path


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, textsam.TextSam]:
    body = _fake_tarball()
    pinned = RemoteFile("test", "https://registry.invalid/ort.tgz", len(body), hashlib.sha256(body).hexdigest())
    path = tmp_path_factory.mktemp("rt") / "ort.tgz"
    path.write_bytes(body)
    model = textsam.create_model("shapes_tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(web_runtime, "ORT_WEB", pinned)
        out = export_web(model, tmp_path_factory.mktemp("web") / "page", runtime=path)
    return out, model


def _session(folder: Path, name: str):  # noqa: ANN202
    import onnxruntime

    manifest = json.loads((folder / "manifest.json").read_text())
    session = onnxruntime.InferenceSession(str(folder / manifest["graphs"][name]), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run(None, {k: v for k, v in feeds.items() if k in names})


@torch.inference_mode()
def test_graphs_compute_what_the_model_computes(tiny_page) -> None:  # noqa: ANN001
    """Each graph against the torch module it was traced from, on the example image (shapes_tiny: the head)."""
    folder, model = tiny_page
    predictor = textsam.TextSamPredictor(model)
    image = np.array(Image.open(EXAMPLE).convert("RGB"))
    predictor.set_image(image)
    emb = predictor.features
    resized = torch.from_numpy(textsam.transforms.resize_longest_side(image, 128).copy()).permute(2, 0, 1)[None].float()
    (ours,) = _session(folder, "encoder")({"image": model.preprocess(resized).numpy()})
    assert np.abs(ours - emb.numpy()).max() < 1e-4
    engine, enc = model.scoring_encoder, model.text_encoder  # shapes_tiny: the engine's CLIP, the head's own tower
    assert engine is not enc
    phrases = ["red circle", "a photo of the blue star."]
    pooled, words = _session(folder, "clip_text")({"tokens": enc.tokenize(phrases).numpy()})
    assert np.abs(pooled - engine.encode(phrases).numpy()).max() < 1e-5
    engine_words = engine.encode_words(phrases[:1])[1]
    assert np.abs(words[0, : engine_words.shape[1]] - engine_words[0].numpy()).max() < 1e-4
    head_pooled, head_words = _session(folder, "clip_text_head")({"tokens": enc.tokenize(phrases).numpy()})
    assert np.abs(head_pooled - enc.encode(phrases).numpy()).max() < 1e-5
    assert np.abs(head_pooled - pooled).max() > 1e-2  # two towers
    ref_pooled, ref_words, mask = enc.encode_words(phrases[:1])
    assert np.abs(head_words[0, : ref_words.shape[1]] - ref_words[0].numpy()).max() < 1e-4
    # the graph takes any token length (the manifest says so): cut to the longest sentence (what the page runs), the
    # same embeddings and per-token features
    assert json.loads((folder / "manifest.json").read_text())["text"]["any_length"] is True
    longest = int((enc.tokenize(phrases) != 0).sum(1).max())
    short_pooled, short_words = _session(folder, "clip_text")({"tokens": enc.tokenize(phrases).numpy()[:, :longest]})
    assert short_words.shape[1] == longest < words.shape[1]
    assert np.abs(short_pooled - pooled).max() < 1e-5 and np.abs(short_words - words[:, :longest]).max() < 1e-4
    coords, labels = torch.tensor([[[30.0, 40.0]]]), torch.tensor([[1]])
    tokens = model.text_projector(ref_pooled)
    low, iou = model.decode(emb, points=(coords, labels), extra_tokens=tokens)
    feeds = {"image_embeddings": emb.numpy(), "point_coords": np.array([[[30, 40], [0, 0]]], np.float32),
             "point_labels": np.array([[1, -1]], np.float32), "text_embedding": ref_pooled.numpy()}
    ours_low, ours_iou = _session(folder, "decoder_text")(feeds)
    assert np.abs(ours_low[:, 1:] - low.numpy()).max() < 1e-3 and np.abs(ours_iou[:, 1:] - iou.numpy()).max() < 1e-5
    low, iou = model.decode(emb, points=(coords, labels))
    ours_low, ours_iou = _session(folder, "decoder")(feeds)
    assert np.abs(ours_low[:, 1:] - low.numpy()).max() < 1e-3 and np.abs(ours_iou[:, 1:] - iou.numpy()).max() < 1e-5
    (up,) = _session(folder, "upsample")({"low_res_masks": low[:, :1].numpy(), "orig_im_size": np.array([180, 240], np.float32)})
    assert np.abs(up - model.postprocess_masks(low[:, :1], predictor.input_size, (180, 240)).numpy()).max() < 1e-3
    from textsam.text.locator import lowres_rgb, region_colours

    regions = predictor.text.region_candidates(emb, predictor.input_size)
    ref, ref_presence = model.text_locator.scores_and_presence(
        emb, regions[None], None, ref_pooled, ref_words, mask,
        colours=region_colours(lowres_rgb(image, 128, 128), regions)[None])
    rgb = np.zeros((1, 3, 128, 128), np.float32)
    rgb[0, :, :96, :] = resized[0].numpy() / 255
    full_words = np.zeros((1, 32, ref_words.shape[2]), np.float32)
    full_words[0, : ref_words.shape[1]] = ref_words[0].numpy()
    scores, presence = _session(folder, "locator")({
        "image_embeddings": emb.numpy(), "masks": regions[None].float().numpy(), "rgb": rgb,
        "text_embedding": ref_pooled.numpy(), "words": full_words, "word_mask": np.arange(32)[None] < ref_words.shape[1]})
    assert np.abs(scores - ref.numpy()).max() < 1e-2 and scores.argmax() == int(ref.argmax())
    assert np.abs(presence - ref_presence.numpy()).max() < 1e-2  # the shipped locator's presence readout
    from textsam.text.scoring import clip_preprocess

    crop = clip_preprocess(enc.clip)(Image.fromarray(image))[None]
    (emb_crop,) = _session(folder, "clip_image")({"image": crop.numpy()})
    assert np.abs(emb_crop - torch.nn.functional.normalize(enc.clip.encode_image(crop), dim=-1).numpy()).max() < 1e-5


@torch.inference_mode()
def test_a_head_with_its_own_text_tower_gets_its_own_text_graph(tmp_path: Path, fake_runtime: Path) -> None:
    """A text head read through a fine-tuned copy of CLIP's text tower (``model.engine_encoder`` keeps CLIP's
    own): ``clip_text`` and ``clip_image`` are the engine's CLIP, ``clip_text_head`` the head's tower."""
    model = textsam.create_model("shapes_tiny")
    model.engine_encoder, model.text_encoder = model.text_encoder, model.text_encoder.text_copy()
    with torch.no_grad():
        model.text_encoder.clip.text_projection.mul_(-1)
    folder = export_web(model, tmp_path / "page", runtime=fake_runtime)
    assert json.loads((folder / "manifest.json").read_text())["graphs"]["clip_text_head"] == "clip_text_head.onnx"
    phrases = ["red circle", "the leftmost blue star"]
    tokens = model.text_encoder.tokenize(phrases).numpy()
    (engine,) = _session(folder, "clip_text")({"tokens": tokens})[:1]
    (head,) = _session(folder, "clip_text_head")({"tokens": tokens})[:1]
    assert np.abs(engine - model.engine_encoder.encode(phrases).numpy()).max() < 1e-5
    assert np.abs(head - model.text_encoder.encode(phrases).numpy()).max() < 1e-5
    assert np.abs(head + engine).max() < 1e-5  # the head's tower is the negated copy


def test_manifest_and_folder(tiny_page) -> None:  # noqa: ANN001
    folder, model = tiny_page
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["text"]["mode"] == "head" and manifest["text_unavailable"] is None
    assert manifest["img_size"] == 128 and manifest["text"]["context_length"] == 32
    assert set(manifest["graphs"]) == {"encoder", "decoder", "upsample", "decoder_text", "locator", "clip_text", "clip_image",
                                       "clip_text_head"}
    for name in ["index.html", "textsam.js", "ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "VENDOR.json",
                 "bpe_simple_vocab_16e6.txt.gz"]:
        assert (folder / name).is_file(), name
    vendor = json.loads((folder / "VENDOR.json").read_text())
    for name, digest in vendor["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert not list(folder.parent.glob(".*.part"))


def test_a_model_the_page_cannot_answer_text_for_gets_clicks_and_a_box(tmp_path: Path, fake_runtime: Path) -> None:
    """A windowed-attention encoder with a CLIP but the engine switched off: the page takes clicks and a box, and the
    manifest says why not text. The encoder graph still computes the model's embedding."""
    model = tiny_sam(with_text=True)
    out = export_web(model, tmp_path / "page", runtime=fake_runtime, options=TextOptions(engine=EngineOptions(enabled=False)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text"] is None and "engine is off" in manifest["text_unavailable"]
    assert set(manifest["graphs"]) == {"encoder", "decoder", "upsample"}
    x = torch.randn(1, 3, 256, 256)
    (ours,) = _session(out, "encoder")({"image": x.numpy()})
    with torch.inference_mode():
        assert np.abs(ours - model.image_encoder(x).numpy()).max() < 1e-4
    engine = export_web(model, tmp_path / "engine", runtime=fake_runtime)
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["text"]["mode"] == "engine" and manifest["text"]["proposals"]["points_per_side"] == 16
    assert "locator" not in manifest["graphs"] and "clip_image" in manifest["graphs"]


def test_runtime_is_downloaded_once_checked_and_explained_offline(fake_runtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = fake_runtime.read_bytes()
    calls = []

    def urlopen(request, timeout=None):  # noqa: ANN001, ANN202
        calls.append(request.full_url)
        return FakeResponse(body)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the tests' default: downloads off
    first = web_runtime.fetch_runtime(progress=False)
    assert first == web_runtime.runtime_cache_path() and first.read_bytes() == body
    assert web_runtime.fetch_runtime(progress=False) == first and len(calls) == 1  # cached
    first.unlink()
    monkeypatch.setenv("TEXTSAM_OFFLINE", "1")
    with pytest.raises(DownloadError, match="npm pack onnxruntime-web@.*--web-runtime FILE.tgz"):
        web_runtime.fetch_runtime(progress=False)
    monkeypatch.delenv("TEXTSAM_OFFLINE")
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout=None: FakeResponse(b"x" * len(body)))
    with pytest.raises(DownloadError):
        web_runtime.fetch_runtime(progress=False)
    assert not first.exists()  # a damaged download never carries the final name
    wrong = fake_runtime.with_name("other.tgz")
    wrong.write_bytes(b"not it")
    with pytest.raises(InputError, match="is not onnxruntime-web"):
        web_runtime.fetch_runtime(wrong)


def test_cli_export_web_and_its_errors(tmp_path: Path, fake_runtime: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "page"
    assert main(["export", "--web", str(out), "--web-runtime", str(fake_runtime)]) == 0
    assert "textsam app --static" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["model"] == "shapes_tiny"
    assert main(["export", "--web", str(out), "--web-runtime", str(fake_runtime), "--fast"]) == 0  # replaces an export
    assert json.loads((out / "manifest.json").read_text())["text"]["engine"]["enlarge"] == 1.3
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["export", "--web", str(mine), "--web-runtime", str(fake_runtime)]) == 2
    assert "is not an exported page" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"
    assert main(["export", "--web", str(out), "-o", str(tmp_path / "x.onnx")]) == 2
    assert main(["export", "--model", "shapes_tiny"]) == 2
    assert "-o FILE.onnx" in capsys.readouterr().err
    assert main(["export", "--fetch-web-runtime", "--web-runtime", str(fake_runtime)]) == 0


def test_static_server_sends_the_folder_with_isolation_headers(tiny_page) -> None:  # noqa: ANN001
    from textsam.app.static import static_server

    folder, _ = tiny_page
    with pytest.raises(InputError, match="not an exported page"):
        static_server(folder.parent)
    server = static_server(folder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(f"{base}/manifest.json") as response:
            assert json.loads(response.read())["format"] == 1
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with urllib.request.urlopen(f"{base}/ort-wasm-simd-threaded.wasm") as response:
            assert response.headers["Content-Type"] == "application/wasm"
        with urllib.request.urlopen(f"{base}/") as response:  # the folder's address is the page
            assert b"textsam.js" in response.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/missing.onnx")
    finally:
        server.shutdown()
        server.server_close()


def test_cli_app_static_refuses_a_folder_that_is_not_a_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["app", "--static", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not an exported page" in err and f"textsam export --web {tmp_path}" in err
