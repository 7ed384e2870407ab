"""The web app: handlers called directly, and the running server through gradio_client.

Models are tiny and random (tests/tiny.py); ``PerfectPredictor`` wraps the real predictor and
returns the known object's mask for prompts on it, so prompt plumbing is checked for real.
The helpers here are shared with test_app_browser.py.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tiny import tiny_sam
from textsam import TextSamPredictor, rle
from textsam.errors import InputError, WeightsError
from textsam.predictor import Prediction

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
ui = pytest.importorskip("textsam.app.ui")
from textsam.app.handlers import MODE_BOX, MODE_NEGATIVE, MODE_POSITIVE, WebApp  # noqa: E402
from textsam.app.serving import check_address  # noqa: E402

H, W = 150, 200
SQUARE = (60, 40, 120, 100)  # x0, y0, x1, y1 of the red square (pixel edges)


def make_image() -> np.ndarray:
    """A grey 200x150 image with a red square (the known object) and a blue disc."""
    img = np.full((H, W, 3), 190, np.uint8)
    x0, y0, x1, y1 = SQUARE
    img[y0:y1, x0:x1] = (220, 30, 30)
    yy, xx = np.mgrid[:H, :W]
    img[(xx - 165) ** 2 + (yy - 110) ** 2 < 18**2] = (30, 60, 220)
    return img


def known_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    x0, y0, x1, y1 = SQUARE
    m[y0:y1, x0:x1] = True
    return m


def save_image(folder: Path, name: str = "scene.png") -> Path:
    path = Path(folder) / name
    Image.fromarray(make_image()).save(path)
    return path


def model_factory(name: str):
    """Tiny random models; 'sam_vit_b' fails like a missing checkpoint does offline."""
    if name == "sam_vit_b":
        raise WeightsError("Downloading 'sam_vit_b' failed: no network. Or place the file in the cache.")
    return tiny_sam(with_text=True)


class PerfectPredictor:
    """Wraps a real predictor; returns the red object's mask for a positive click on it or a box around it."""

    set_image_calls = 0

    def __init__(self, model) -> None:
        self.inner = TextSamPredictor(model)

    def set_image(self, image) -> None:
        PerfectPredictor.set_image_calls += 1
        self.inner.set_image(image)
        img = self.inner.image.astype(int)
        self.object = (img[..., 0] > 150) & (img[..., 1] < 100) & (img[..., 2] < 100)

    def predict(self, text=None, point_coords=None, point_labels=None, box=None, **kwargs) -> Prediction:
        hit = False
        if point_coords is not None:
            for (x, y), lab in zip(np.asarray(point_coords), np.asarray(point_labels)):
                inside = 0 <= int(y) < self.object.shape[0] and 0 <= int(x) < self.object.shape[1]
                hit |= bool(lab == 1 and inside and self.object[int(y), int(x)])
        if box is not None:
            ys, xs = np.nonzero(self.object)
            cx, cy = xs.mean(), ys.mean()
            hit |= bool(box[0] <= cx <= box[2] and box[1] <= cy <= box[3])
        if not hit:
            return self.inner.predict(text=text, point_coords=point_coords, point_labels=point_labels, box=box,
                                      **kwargs)
        n = 3 if kwargs.get("multimask_output", True) else 1
        masks = np.repeat(self.object[None], n, axis=0)
        return Prediction(masks, np.full(n, 0.99, np.float32), np.zeros((n, 64, 64), np.float32), {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(predictor_factory=None):
    """Build the demo with tiny models and launch it on 127.0.0.1:<free port>; returns (demo, url)."""
    demo = ui.build_demo(model_factory, predictor_factory=predictor_factory, default_model="shapes_tiny")
    ui.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    return demo, demo.local_url


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ------------------------------------------------------------------------------------------ handlers
@pytest.fixture(scope="module")
def app():
    return WebApp(model_factory, PerfectPredictor, default_model="shapes_tiny")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return save_image(tmp_path_factory.mktemp("scene"))


def test_click_segments_the_object_and_writes_downloads(app, scene):
    s = app.new_session()
    assert "Loaded scene.png (200x150)" in app.upload(s, {"path": str(scene), "orig_name": "scene.png"}).status
    v = app.click(s, 90, 70, MODE_POSITIVE, "red square")
    assert v.status.startswith("Result #1: 1 mask(s)"), v.status
    assert v.canvas.shape == (2 * H, 2 * W, 3)  # small images are shown magnified
    assert not np.array_equal(v.canvas[::2, ::2], make_image())
    e = app.export(s)
    assert [Path(f).name for f in e.files] == ["scene_mask0.png", "scene.json"] and s.exported == s.runs == 1
    seg = e.doc["results"][0]["segmentation"]
    assert seg["size"] == [H, W] and np.array_equal(rle.decode(seg), known_mask())
    assert e.doc["results"][0]["box_xyxy"] == [60.0, 40.0, 120.0, 100.0] and e.masks[0][1] == "1: red square 0.99"
    assert np.array_equal(np.asarray(Image.open(e.files[0])) > 0, known_mask())
    assert e.doc["prompt"]["point_coords"] == [[90.0, 70.0]] and e.doc["prompt"]["text"] == "red square"
    # the embedding is reused: more clicks on the same image never call set_image again
    calls = PerfectPredictor.set_image_calls
    app.click(s, 10, 10, MODE_NEGATIVE)
    assert PerfectPredictor.set_image_calls == calls and s.points[-1] == (10.0, 10.0, 0)
    app.undo(s)
    assert s.points == [(90.0, 70.0, 1)]
    v = app.clear(s)
    assert s.points == [] and s.last is None and app.export(s) is None and v.status.startswith("Cleared")


def test_the_page_says_how_the_engine_read_the_phrase(scene):
    """When the training-free engine chose the object, the status line says how it read the phrase and the JSON
    carries ``prompt.query``, as the CLI's does; a plain click says nothing of it."""
    import textsam

    app = WebApp(lambda name: textsam.create_model("shapes_tiny", text_head=False), default_model="shapes_tiny")
    s = app.new_session()
    app.upload(s, {"path": str(scene), "orig_name": "scene.png"})
    v = app.run(s, "the red square left of the blue circle and not next to the green star")
    assert "Read as: 'red square', left of 'blue circle', not near 'green star'." in v.status, v.status
    assert app.export(s).doc["prompt"]["query"]["more_relations"] == [["near", "green star", True]]
    v = app.click(s, 90, 70, MODE_POSITIVE)
    assert "Read as" not in v.status and "query" not in app.export(s).doc["prompt"]
    app.close()


def test_not_this_phrase_steers_the_text_prompt(scene):
    """The *Not this* box is the predictor's ``negative_text``: with the training-free engine, "square" picks the
    red square, and "square" but not "red square" the other object; the JSON keeps it; without a text prompt it
    is not passed on and the status says so; the API takes it too."""
    import textsam

    app = WebApp(lambda name: textsam.create_model("shapes_tiny", text_head=False), default_model="shapes_tiny")
    s = app.new_session()
    app.upload(s, {"path": str(scene), "orig_name": "scene.png"})
    app.run(s, "square")
    assert iou(s.last.results[0].mask, known_mask()) > 0.9
    v = app.run(s, "square", False, False, "red square")
    assert iou(s.last.results[0].mask, known_mask()) < 0.1, v.status
    assert app.export(s).doc["prompt"]["negative_text"] == "red square"
    v = app.click(s, 90, 70, MODE_POSITIVE, "", False, False, "red square")
    assert "ignored without one" in v.status and "negative_text" not in app.export(s).doc["prompt"]
    _, doc = app.api_segment(str(scene), "square", negative="red square")
    assert doc["prompt"]["negative_text"] == "red square"
    assert iou(rle.decode(doc["results"][0]["segmentation"]), known_mask()) < 0.1
    app.close()


@pytest.mark.parametrize("shape, factor", [((150, 200), 2.0), ((90, 60), 4.0), ((700, 900), 1.0),
                                           ((3000, 4000), 0.24)])
def test_canvas_scale_and_click_mapping(shape, factor):
    from textsam.app.canvas import display_factor, draw_canvas, to_image_xy

    assert display_factor(shape) == pytest.approx(factor)
    h, w = shape
    for x, y in [(0, 0), (w - 1, h - 1), (w // 3, h // 2)]:
        dx, dy = (x + 0.5) * factor - 0.5, (y + 0.5) * factor - 0.5  # where the pixel is drawn
        assert to_image_xy(round(dx), round(dy), shape) == pytest.approx((x, y), abs=max(1.0, 0.5 / factor))
    if h * w < 1e6:
        img = np.zeros((h, w, 3), np.uint8)
        out = draw_canvas(img, np.ones((1, h, w), bool), ["x"], [0.5], [(1, 1, 1)], [0, 0, 5, 5], (2, 2), factor)
        assert out.shape == (round(h * factor), round(w * factor), 3)


def test_box_needs_two_clicks(app, scene):
    s = app.new_session()
    app.upload(s, str(scene))
    v = app.click(s, 50, 30, MODE_BOX)
    assert "opposite corner" in v.status and s.box is None and s.last is None
    app.click(s, 130, 110, MODE_BOX)
    doc = app.export(s).doc
    assert s.box == [50.0, 30.0, 130.0, 110.0] and doc["prompt"]["box"] == s.box
    assert np.array_equal(rle.decode(doc["results"][0]["segmentation"]), known_mask())
    app.click(s, 10, 10, MODE_BOX)
    assert "too small" in app.click(s, 10, 11, MODE_BOX).status


def test_multimask_and_all_instances(app, scene):
    s = app.new_session()
    app.upload(s, str(scene))
    app.click(s, 5, 5, MODE_POSITIVE, None, False, True)  # off the object: the real (random) model
    e = app.export(s)
    assert len(e.doc["results"]) == 3 and len(e.masks) == 3
    v = app.run(s, "", True, False)
    assert "needs a text prompt" in v.status and len(app.export(s).doc["results"]) == 1
    v = app.run(s, "red square", True, False)
    doc = app.export(s).doc
    assert doc["prompt"]["instances"] == "all" and "presence" in doc["prompt"]
    # every instance the engine finds, or none and the page says so (this model has random weights)
    assert doc["results"] or "no 'red square' found" in v.status


def test_sessions_do_not_share_prompts(app, scene):
    a, b = app.new_session(), app.new_session()
    app.upload(a, str(scene))
    app.upload(b, str(scene))
    app.click(a, 90, 70, MODE_POSITIVE)
    app.click(b, 20, 20, MODE_NEGATIVE)
    app.click(a, 100, 80, MODE_POSITIVE)
    doc_a, doc_b = app.export(a).doc, app.export(b).doc
    assert doc_a["prompt"]["point_coords"] == [[90.0, 70.0], [100.0, 80.0]]
    assert doc_b["prompt"]["point_coords"] == [[20.0, 20.0]] and b.points == [(20.0, 20.0, 0)]
    assert a.out_dir != b.out_dir


def test_a_sessions_requests_run_one_at_a_time(scene):
    """Every page handler of a session holds the session's lock (a click's export step and the next click never
    interleave, so their outputs reach the page in order); a session copied for a new browser session has its
    own lock, and gr.State can still read the session's fields."""
    import copy
    import dataclasses

    demo = ui.build_demo(model_factory, predictor_factory=PerfectPredictor, default_model="shapes_tiny")
    app = demo.textsam
    s, other = app.new_session(), app.new_session()
    app.upload(s, str(scene))
    app.click(s, 90, 70, MODE_POSITIVE, "red square")
    assert s.lock() is s.lock() and copy.deepcopy(s).lock() is not s.lock() and dataclasses.asdict(s)
    handlers = [f.fn for f in demo.fns.values() if f.inputs and type(f.inputs[0]).__name__ == "State"]
    names = {h.__name__ for h in handlers}
    assert {"on_export", "handler", "on_model"} <= names, names
    export = next(h for h in handlers if h.__name__ == "on_export")
    finished = []
    with s.lock():  # another request of this session is running
        worker = threading.Thread(target=lambda: finished.append(export(s)))
        worker.start()
        worker.join(0.5)
        assert not finished  # waits for it
        assert export(other)[0] is other  # another session does not wait
    worker.join(10)
    assert finished and finished[0][4].endswith("Downloads ready.")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.png").write_text("this is not an image")
    data = (save_image(d, "full.png")).read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("1", (8000, 6250)).save(d / "huge.png")  # 50 MP, a small file
    return {p.stem: p for p in d.iterdir()}


@pytest.mark.parametrize("name, message", [("notes", "not an image"), ("truncated", "could not be decoded"),
                                           ("huge", "50.0 megapixels")])
def test_bad_uploads_get_a_message(app, scene, bad_files, name, message):
    s = app.new_session()
    v = app.upload(s, {"path": str(bad_files[name]), "orig_name": f"{name}.png"})
    assert message in v.status and f"{name}.png" in v.status and s.image is None and v.canvas is None
    assert "Upload an image" in app.click(s, 5, 5, MODE_POSITIVE).status
    assert app.upload(s, str(scene)).status.startswith("Loaded")  # and the app goes on


def test_missing_checkpoint_is_a_message(app, scene):
    s = app.new_session()
    app.upload(s, str(scene))
    v, shown = app.select_model(s, "sam_vit_b")
    assert shown == "shapes_tiny" and s.model == "shapes_tiny"
    assert "Could not load `sam_vit_b`" in v.status and "no network" in v.status and "Traceback" not in v.status
    v, shown = app.select_model(s, "mobile_sam")
    assert shown == "mobile_sam" and s.model == "mobile_sam" and "Using `mobile_sam`" in v.status


def test_random_weights_fallback_notice(monkeypatch):
    import textsam

    real = textsam.create_model

    def create_model(name, pretrained=True, **kw):
        if pretrained:
            raise WeightsError("the bundled shapes_tiny weights are missing")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(textsam, "create_model", create_model)
    app = WebApp(default_model="shapes_tiny")
    assert "random weights" in app.notice and "shapes_tiny" in app.models


def test_api_segment_validates_input(app, scene):
    overlay, doc = app.api_segment(str(scene), "red square", [[90, 70, 1], [10, 10, 0]], [50, 30, 130, 110])
    assert overlay.shape == (H, W, 3) and doc["prompt"]["point_labels"] == [1, 0] and "timing_ms" in doc
    for points, box in [([[1, 2, 5]], None), ([[1]], None), (None, [1, 2, 3]), (None, [5, 5, 5, 9])]:
        with pytest.raises(InputError):
            app.api_segment(str(scene), None, points, box)


# ------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def server():
    demo, url = start_server(PerfectPredictor)
    yield demo, url
    demo.close()


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False)


def test_server_defaults(server):
    demo, url = server
    assert url.startswith("http://127.0.0.1:") and demo.share is False
    assert demo.max_file_size == 25 * 1024 * 1024
    assert set(_client(url).view_api(print_info=False, return_format="dict")["named_endpoints"]) == {"/segment"}


def test_cli_app_command(monkeypatch):
    from textsam import cli

    args = cli.build_parser().parse_args(["app"])
    assert (args.model, args.host, args.port, args.share) == ("shapes_tiny", "127.0.0.1", 7860, False)
    seen = {}
    monkeypatch.setattr(ui, "run", lambda a: seen.setdefault("args", a) and 0)
    assert cli.main(["app", "--port", "7999", "--share"]) == 0
    assert seen["args"].port == 7999 and seen["args"].share is True


def test_app_fast_serves_the_fast_engine(monkeypatch):
    """``textsam app --fast``: every model's predictor gets its own text options made fast."""
    import types

    import torch

    import textsam
    from textsam import cli
    from textsam.text.prompter import default_options

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = cli.build_parser().parse_args(["app", "--fast", "--port", str(port)])
    captured = {}
    demo = types.SimpleNamespace(close=lambda: None, textsam=types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(ui, "build_demo", lambda **kw: captured.update(kw) or demo)
    monkeypatch.setattr(ui, "launch", lambda *a, **k: None)
    threads = torch.get_num_threads()
    try:
        assert ui.run(args) == 0
    finally:
        torch.set_num_threads(threads)
    model = textsam.create_model("shapes_tiny")
    predictor = captured["predictor_factory"](model)
    assert predictor.text.options == default_options(model).fast()
    assert cli.build_parser().parse_args(["app"]).fast is False
    # ... and a published SAM is built with the fast path's CLIP (ViT-B/32), a bundled model with its own
    from textsam.app.serving import fast_model_factory

    assert captured["model_factory"] is fast_model_factory
    built = {}
    monkeypatch.setattr(textsam, "create_model", lambda name, **kw: built.setdefault(name, kw))
    fast_model_factory("mobile_sam")
    fast_model_factory("shapes_tiny")
    assert built["mobile_sam"]["clip"] == "ViT-B-32-quickgelu/openai" and built["shapes_tiny"]["clip"] is None


def test_app_serves_the_weights_it_is_given(monkeypatch, tmp_path):
    """``textsam app --model NAME --checkpoint / --clip / --text-head / --no-text-head``: that model is built with
    those weights (a text head you trained, files on a machine without network), the page's other models as
    published; a file that is not there stops the command before the server starts (exit 2)."""
    import types

    import torch

    import textsam
    from textsam import cli

    head = tmp_path / "head.safetensors"
    head.write_bytes(b"x")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    captured = {}
    demo = types.SimpleNamespace(close=lambda: None, textsam=types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(ui, "build_demo", lambda **kw: captured.update(kw) or demo)
    monkeypatch.setattr(ui, "launch", lambda *a, **k: None)
    built = {}
    monkeypatch.setattr(textsam, "create_model", lambda name, **kw: built.setdefault(name, kw))
    threads = torch.get_num_threads()
    try:
        for argv in ([], ["--fast"]):
            built.clear()
            args = cli.build_parser().parse_args(["app", "--model", "sam_vit_b", "--text-head", str(head),
                                                  "--clip", "ViT-B-16/@/" + str(head), "--port", str(port), *argv])
            assert ui.run(args) == 0
            captured["model_factory"]("sam_vit_b")
            captured["model_factory"]("mobile_sam")
            assert built["sam_vit_b"] == {"checkpoint": None, "clip": f"ViT-B-16/@/{head}", "text_head": head}
            assert built["mobile_sam"]["clip"] == ("ViT-B-32-quickgelu/openai" if argv else None)
            assert built["mobile_sam"].get("text_head") is None and built["mobile_sam"].get("checkpoint") is None
        args = cli.build_parser().parse_args(["app", "--no-text-head", "--port", str(port)])
        assert ui.run(args) == 0
        captured["model_factory"]("shapes_tiny")
        assert built["shapes_tiny"]["text_head"] is False
    finally:
        torch.set_num_threads(threads)
    captured.clear()
    assert cli.main(["app", "--checkpoint", str(tmp_path / "none.pth"), "--port", str(port)]) == 2
    assert cli.main(["app", "--text-head", str(head), "--no-text-head", "--port", str(port)]) == 2
    assert not captured  # refused before the page was built


def test_app_wrapper_uses_bundled_examples(monkeypatch):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "app" / "app.py"
    spec = importlib.util.spec_from_file_location("textsam_app_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(p.name for p in module.EXAMPLES.glob("*.png")) == ["cells.png", "shapes.png", "triangle.png"]
    assert all(p.stat().st_size < 4096 for p in module.EXAMPLES.glob("*.png"))
    seen = {}
    monkeypatch.setattr(module, "_build_demo", lambda *a, **k: seen.update(k))
    module.build_demo(model_factory)
    assert seen["examples_dir"] == module.EXAMPLES


def test_client_segment_endpoint(server, scene):
    from gradio_client import handle_file

    client = _client(server[1])
    overlay, doc = client.predict(handle_file(str(scene)), "red square", [[90, 70, 1], [10, 10, 0]],
                                  [50, 30, 130, 110], False, api_name="/segment")
    assert np.asarray(Image.open(overlay)).shape == (H, W, 3)
    assert doc["prompt"]["text"] == "red square" and doc["prompt"]["box"] == [50.0, 30.0, 130.0, 110.0]
    assert np.array_equal(rle.decode(doc["results"][0]["segmentation"]), known_mask())


def test_client_bad_upload_and_concurrent_clients(server, scene, bad_files):
    from gradio_client import handle_file

    with pytest.raises(Exception, match="not an image"):
        _client(server[1]).predict(handle_file(str(bad_files["notes"])), "", [], None, False, api_name="/segment")
    errors, seen = [], {}

    def worker(k: int) -> None:
        try:
            client = _client(server[1])
            for i in range(2):
                pt = [10 + 40 * k + i, 12 + i, k % 2]
                _, doc = client.predict(handle_file(str(scene)), "", [pt], None, False, api_name="/segment")
                seen.setdefault(k, []).append((doc["prompt"]["point_coords"], doc["prompt"]["point_labels"], pt))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for runs in seen.values():
        assert len(runs) == 2
        for coords, labels, pt in runs:
            assert coords == [[float(pt[0]), float(pt[1])]] and labels == [pt[2]]


# ------------------------------------------------------------------------------------------ defects
def _textsam(*args: str, timeout: float = 120, env: dict | None = None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "textsam", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", **(env or {})))


def test_port_in_use_says_pass_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _textsam("app", "--port", str(port))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("textsam: error: "), r.stderr
    assert f"port {port}" in lines[0] and "--port" in lines[0] and "launch()" not in lines[0], lines[0]
    with pytest.raises(InputError, match="--port with a number from 1 to 65535"):
        check_address("127.0.0.1", 70000)


def test_port_taken_while_starting_says_pass_port():
    class Demo:  # Gradio's own error when the port is taken between our check and its bind
        def launch(self, **kwargs):
            raise OSError("Cannot find empty port in range: 7860-7860. You can specify a different port by "
                          "setting the GRADIO_SERVER_PORT environment variable or passing the `server_port` "
                          "parameter to `launch()`.")

    with pytest.raises(InputError) as err:
        ui.launch(Demo(), port=free_port())
    assert "already in use" in str(err.value) and "--port" in str(err.value) and "launch()" not in str(err.value)


def test_inverted_box_rejected_in_api_but_any_corners_on_the_page(app, scene):
    with pytest.raises(InputError, match=r"x0 > x1 or y0 > y1.*top-left, bottom-right"):
        app.api_segment(str(scene), None, None, [130, 110, 50, 30])
    with pytest.raises(InputError, match="x0 > x1 or y0 > y1"):
        app.api_segment(str(scene), None, None, [50, 110, 130, 30])
    s = app.new_session()
    app.upload(s, str(scene))
    app.click(s, 130, 30, MODE_BOX)  # top-right, then bottom-left
    v = app.click(s, 50, 110, MODE_BOX)
    assert s.box == [50.0, 30.0, 130.0, 110.0] and v.status.startswith("Result #1"), v.status


@pytest.mark.parametrize("text", ["", "red square"])
def test_point_outside_the_image_says_so(app, scene, text):
    with pytest.raises(InputError) as err:
        app.api_segment(str(scene), text, [[500, 10, 1]])
    msg = str(err.value)
    assert "outside the 200x150 image" in msg and "(500, 10)" in msg and "Could not segment" not in msg, msg
    s = app.new_session()
    app.upload(s, str(scene))
    s.points = [(90.0, 70.0, 1), (-3.0, 10.0, 1)]
    status = app.run(s, text).status
    assert "outside the 200x150 image" in status and "Could not segment" not in status, status


def test_sigterm_removes_the_temporary_folder(tmp_path):
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "textsam", "app", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
                break
            except OSError:
                time.sleep(0.5)
        workdirs = list(tmp_path.glob("textsam_app_*"))
        assert proc.poll() is None and len(workdirs) == 1, proc.stderr.read() if proc.poll() is not None else workdirs
        proc.terminate()  # SIGTERM
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert not workdirs[0].exists(), sorted(p.name for p in workdirs[0].rglob("*"))


# ------------------------------------------------------------------------------------------ serving
class SlowPredictor:
    """A fake predictor: set_image and the first phrase wait for ``gate`` when the image is dark (the
    expensive first pass); everything else answers at once. Holds 1 MB per image."""

    gate = threading.Event()
    set_image_calls = 0

    def __init__(self, model) -> None:
        self.cache = np.zeros(1 << 20, np.uint8)

    def set_image(self, image) -> None:
        SlowPredictor.set_image_calls += 1
        self.dark = int(np.asarray(image).mean()) < 10

    def predict(self, text=None, **kwargs):
        if self.dark and text is not None:
            assert SlowPredictor.gate.wait(30), "the expensive first pass was never released"
        return "done"


def _image(value: int) -> tuple[np.ndarray, str]:
    from textsam.app.serving import image_key

    a = np.full((8, 8, 3), value, np.uint8)
    return a, image_key(a)


def test_cheap_request_does_not_wait_behind_a_first_pass():
    from textsam.app.serving import ModelHub

    hub = ModelHub(lambda name: object(), SlowPredictor, workers=2)  # 1 slot for new images + 1 kept free
    bright, bright_key = _image(200)
    hub.predict("m", bright, bright_key, text="red circle")  # embedded, its text state computed
    SlowPredictor.gate.clear()
    dark, dark_key = _image(0)
    slow = threading.Thread(target=hub.predict, args=("m", dark, dark_key), kwargs={"text": "red circle"})
    slow.start()
    try:
        t = threading.Thread(target=lambda: hub.predict("m", bright, bright_key, text="blue square"))
        t.start()
        t.join(10)
        assert not t.is_alive() and slow.is_alive()  # answered while the first pass is still running
    finally:
        SlowPredictor.gate.set()
        slow.join(30)


def test_pool_runs_jobs_in_arrival_order_and_never_starves_expensive_ones():
    """Cheap jobs pass an expensive one only while the expensive slots are full; once a slot is free, the
    expensive job that came first runs before cheap jobs that came after it."""
    from textsam.app.serving import ComputePool

    pool = ComputePool(2, heavy_slots=1)
    order: list[str] = []
    gates = {name: (threading.Event(), threading.Event()) for name in ("slow heavy", "slow cheap")}

    def blocker(name: str):  # noqa: ANN202
        def run() -> None:
            started, release = gates[name]
            started.set()
            assert release.wait(30)
            order.append(name)
        return run

    def job(name: str):  # noqa: ANN202
        return lambda: order.append(name)

    def submit(fn, heavy: bool = False) -> threading.Thread:  # noqa: ANN001
        t = threading.Thread(target=pool.run, args=(fn, heavy))
        t.start()
        return t

    threads = [submit(blocker("slow heavy"), True)]
    assert gates["slow heavy"][0].wait(10)
    threads.append(submit(job("heavy"), True))  # waits: the one expensive slot is taken
    pool.run(job("cheap"))  # passes it on the free worker
    assert order == ["cheap"]
    threads.append(submit(blocker("slow cheap")))  # now both workers are busy
    assert gates["slow cheap"][0].wait(10)
    for i in range(3):  # cheap jobs arriving after the waiting expensive one
        threads.append(submit(job(f"late{i}")))
    deadline = time.monotonic() + 10
    while len(pool._jobs[0]) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    gates["slow heavy"][1].set()  # a worker and the expensive slot free up
    deadline = time.monotonic() + 10
    while "heavy" not in order and time.monotonic() < deadline:
        time.sleep(0.01)
    gates["slow cheap"][1].set()
    for t in threads:
        t.join(10)
    assert order[:3] == ["cheap", "slow heavy", "heavy"], order
    assert sorted(order[3:]) == ["late0", "late1", "late2", "slow cheap"], order


def test_cache_is_bounded_by_memory_and_embeds_once():
    from textsam.app.serving import ModelHub, footprint

    hub = ModelHub(lambda name: object(), SlowPredictor, cache_bytes=int(2.5 * (1 << 20)), workers=3)
    assert footprint(SlowPredictor(None)) == 1 << 20
    images = [_image(v) for v in (50, 60, 70)]
    calls = SlowPredictor.set_image_calls
    threads = [threading.Thread(target=hub.embed, args=("m", *images[0])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert SlowPredictor.set_image_calls == calls + 1  # four requests at once, one embedding
    for a, k in images[1:]:
        hub.predict("m", a, k)
    assert [hub.cached("m", k) for _, k in images] == [False, True, True]  # 2 MB kept of the 2.5 MB budget
