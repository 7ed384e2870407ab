"""The exported browser page (``textsam export --web``) in a real headless Chromium, against the Python predictor.

The page is exported once for the bundled shapes_tiny and served by ``textsam app --static``'s server on
127.0.0.1:<free port>. For every scene and prompt (text alone, click alone, text + click, a box) the page's
mask must match ``TextSamPredictor.predict(..., multimask_output=True)``'s best-scored mask (IoU >= 0.98) and
its presence the Python presence. The page's own ports of Python code (CLIP's tokenizer, the spatial-word
parser, PIL's resampling, COCO RLE) are checked against the originals, bad input must show a message, and no
request may leave the page's folder. Timings and the folder's size are printed (``-s``) and written to
``artifacts/web/measurements.json``; the speed targets are checked by ``benchmarks/bench_web.py``.

Skips when Chromium, Playwright or the onnxruntime-web tarball (fetched once by ``textsam export --web``,
see the README's set-up) is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textsam.export.web_runtime import runtime_cache_path

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "web"
RUNTIME = runtime_cache_path()  # read at import: the tests' own TEXTSAM_HOME is an empty folder
EXAMPLE = Path(__file__).resolve().parents[1] / "textsam" / "examples" / "shapes.png"
TIMEOUT = 120_000


def _scenes() -> list[tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]]:
    """(file name, image, [(phrase, visible mask), ...]) for a few synthetic scenes of the training world, some
    drawn larger or non-square than the model's 128-pixel input (the page resamples as PIL does)."""
    from textsam.data.shapes_render import COLOURS, SHAPES, background, paint, render_shape, sample_scene

    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    out = []
    for seed, size in [(1, (128, 128)), (2, (150, 200)), (3, (240, 180)), (4, (128, 128))]:
        rng = np.random.default_rng(seed)
        objects, masks = sample_scene(rng, pairs, 128, min_objects=3, max_objects=4)
        canvas, _ = background(rng, 128, 128)
        image, visible = paint(canvas, objects, [render_shape(o, 128, 128) for o in objects])
        h, w = size
        if (h, w) != (128, 128):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.NEAREST))
            visible = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((w, h), Image.NEAREST)) > 0 for m in visible]
        named = [(f"{o.colour} {o.shape}", m) for o, m in zip(objects, visible) if m.sum() > 30]
        out.append((f"scene{seed}.png", image, named))
    return out


def _deepest(mask: np.ndarray) -> tuple[float, float]:
    from scipy import ndimage

    depth = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(x), float(y)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def predictor():
    from textsam import TextSamPredictor, create_model
    from textsam.export.web import page_options
    from textsam.text.prompter import default_options

    model = create_model("shapes_tiny")
    return TextSamPredictor(model, text_options=page_options(default_options(model)))


def _export(model, folder: Path, **kwargs) -> Path:  # noqa: ANN001
    if not RUNTIME.is_file():
        pytest.skip(f"onnxruntime-web is not cached at {RUNTIME}: run `textsam export --web DIR` once with network "
                    "(the README's set-up does)")
    from textsam.export.web import export_web

    out = export_web(model, folder, runtime=RUNTIME, **kwargs)
    for name, image, _ in _scenes():
        Image.fromarray(image).save(out / name)
    shutil.copyfile(EXAMPLE, out / "shapes.png")
    (out / "not_an_image.png").write_bytes(b"this is text, not a PNG\n" * 10)
    Image.new("RGB", (8000, 6000)).save(out / "huge.png")  # 48 megapixels, a small file
    return out


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory: pytest.TempPathFactory, predictor) -> Path:  # noqa: ANN001
    return _export(predictor.model, tmp_path_factory.mktemp("web") / "page")


@contextlib.contextmanager
def _open_page(browser, folder: Path):  # noqa: ANN001
    """The exported page served by ``textsam app --static``'s server, open in its own browser context; checks at
    the end that no request left the folder."""
    from textsam.app.static import static_server

    srv = static_server(folder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    server = f"http://127.0.0.1:{srv.server_port}"
    requests: list[str] = []
    context = browser.new_context(accept_downloads=True)
    try:
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT)
        pg.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(f"{server}/index.html")
        pg.wait_for_function("window.textsam && window.textsam.ready")
        pg.evaluate("textsam.ready")
        pg.errors = errors  # type: ignore[attr-defined]
        yield pg
    finally:
        context.close()
        srv.shutdown()
        srv.server_close()
    outside = [u for u in requests if not (u.startswith(server + "/") or u.startswith(("data:", "blob:")))]
    assert not outside, f"the page reached outside its folder: {outside[:5]}"


@pytest.fixture(scope="module")
def page(browser, page_dir: Path):  # noqa: ANN001
    with _open_page(browser, page_dir) as pg:
        yield pg


def _segment(page, prompt: dict) -> tuple[np.ndarray, float, float | None]:  # noqa: ANN001
    r = page.evaluate("async (p) => { const r = await textsam.segment(p); return {w: r.width, h: r.height, "
                      "mask: Array.from(r.mask), score: r.score, presence: r.presence}; }", prompt)
    return np.array(r["mask"], dtype=bool).reshape(r["h"], r["w"]), r["score"], r["presence"]


def _python(predictor, prompt: dict) -> tuple[np.ndarray, float, float | None]:  # noqa: ANN001
    points = prompt.get("points")
    out = predictor.predict(
        text=prompt.get("text"),
        point_coords=None if not points else np.array([p[:2] for p in points], float),
        point_labels=None if not points else np.array([p[2] for p in points]),
        box=None if prompt.get("box") is None else np.array(prompt["box"], float),
        multimask_output=True,
    )
    best = int(np.argmax(out.scores))
    return out.masks[best], float(out.scores[best]), out.presence


def test_page_matches_the_python_predictor_for_text_clicks_and_boxes(page, predictor, page_dir: Path) -> None:  # noqa: ANN001
    ious: dict[str, list[float]] = {"text": [], "click": [], "text+click": [], "box": [], "text+box": []}
    presence_gap = []
    timings = []
    # the relation phrases: the head's candidates chosen by the engine (TextPrompter.engine_resolves), in both
    scenes = [("shapes.png", np.array(Image.open(EXAMPLE).convert("RGB")),
               [("red circle", None), ("blue square", None), ("the circle left of the square", None),
                ("the star that is not above the heart", None)])]
    scenes += _scenes()
    for name, image, named in scenes:
        page.evaluate("(url) => textsam.loadImage(url)", name)
        loaded = page.evaluate("textsam.timings")
        predictor.set_image(image)
        for phrase, mask in named:
            if mask is None:
                mask = _python(predictor, {"text": phrase})[0]
            x, y = _deepest(mask)
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
            prompts = {"text": {"text": phrase}, "click": {"points": [[x, y, 1]]},
                       "text+click": {"text": phrase, "points": [[x, y, 1]]}, "box": {"box": box},
                       "text+box": {"text": phrase, "box": box}}
            for kind, prompt in prompts.items():
                ours, score, presence = _segment(page, prompt)
                ref, ref_score, ref_presence = _python(predictor, prompt)
                ious[kind].append(_iou(ours, ref))
                assert ious[kind][-1] >= 0.98, (name, kind, prompt, ious[kind][-1])
                assert abs(score - ref_score) < 1e-3
                if ref_presence is not None:
                    presence_gap.append(abs(presence - ref_presence))
                timings.append({"image": name, "kind": kind, "update_ms": page.evaluate("textsam.timings.update_ms"),
                                "embed_ms": loaded["embed_ms"], "prepare_ms": loaded["prepare_ms"]})
    assert max(presence_gap) < 0.02, max(presence_gap)
    assert not page.errors, page.errors
    size = sum(f.stat().st_size for f in page_dir.iterdir() if f.suffix in {".onnx", ".js", ".mjs", ".wasm", ".gz", ".json", ".html"})
    report = {
        "min_iou": {k: min(v) for k, v in ious.items()},
        "prompts": {k: len(v) for k, v in ious.items()},
        "max_presence_gap": max(presence_gap),
        "embed_ms_median": float(np.median([t["embed_ms"] for t in timings])),
        "prepare_ms_median": float(np.median([t["prepare_ms"] for t in timings])),
        "update_ms_median": float(np.median([t["update_ms"] for t in timings])),
        "update_ms_max": float(np.max([t["update_ms"] for t in timings])),
        "folder_mb": size / 1e6,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "measurements.json").write_text(json.dumps({"summary": report, "calls": timings}, indent=1))
    print("\nweb page:", json.dumps(report))


def test_tokenizer_parser_and_resampling_match_python(page, predictor) -> None:  # noqa: ANN001
    from textsam.text.spatial import parse, resolve, support

    tokenizer = predictor.model.text_encoder.tokenizer
    phrases = ["red circle", "a photo of the Blue STAR.", "the second hexagon from the left", "  all   the hearts ",
               "the cross left of the big square", "purple thing in the top right corner", "don't pick the 3rd one!",
               "café crème", "naïve 😀 emoji", "x" * 200, "the smallest object", "the circle next to the triangle",
               "1st star from the right", "the heart on the very left side", "e-mail & co. (test) #42",
               "the grey car on the left hand side of a red car", "the cup that is not next to the plate",
               "the person on the bench, wearing a hat, not holding a glass", "the man farthest from the camera",
               "the second light closest to the camera", "the suitcase with a cat on it", "a white top with stripes",
               "the remote in the right hand of a person", "the giraffe in the middle with its mouth open",
               "the car furthest from the bus", "far right person", "the motorcycle leaned on by the man",
               "the chair close to the fruit and not next to the fridge", "a person under an umbrella but not holding it",
               "a person who is not on the sidewalk and is carrying a bag",
               "the white car next to the red car, in front of the tilted car", "yellow taxi, not on the slope, close to the bus",
               "the man positioned between the guy in a shirt and jeans and the woman", "the person between two trucks",
               "the turned on laptop, not between two monitors", "the person sitting in the middle not wearing a hat",
               "the spoon near a cup that is not empty", "black board that does not have a number on it",
               "the knife that is neither held by anyone nor placed on the marble surface", "the no parking sign",
               "the man who isn't smiling, next to the car without a roof", "the circle that is not red",
               "the smallest bottle without a blue or green cap", "the person on the bench, not holding a glass, wearing a hat",
               "chips that is neither red nor green", "the cup facing right, not the rightmost one"]
    js_tokens = page.evaluate("(ps) => ps.map((p) => textsam._internal.tokenize(p))", phrases)
    assert js_tokens == tokenizer(phrases).tolist()
    js_parse = page.evaluate("(ps) => ps.map((p) => textsam._internal.parse(p))", phrases)
    js_read = page.evaluate("(ps) => ps.map((p) => textsam._internal.describe(textsam._internal.parse(p)))", phrases)
    assert js_read == [parse(p).describe() for p in phrases]
    for phrase, ours in zip(phrases, js_parse):
        q = parse(phrase)
        assert (ours["head"], tuple(ours["directions"]), ours["rank"], ours["relation"], ours["anchor"], ours["group"],
                ours["negated"], tuple(map(tuple, ours["moreRelations"])), tuple(ours["excluded"])) == (
                    q.head, q.directions, q.rank, q.relation, q.anchor, q.group, q.negated, q.more_relations,
                    q.excluded), phrase
    rng = np.random.default_rng(0)
    # the geometry after the parse: relations (negated, far), superlatives, ordinals, and both together
    for phrase in ["the cross left of the dog", "the cup that is not next to the plate", "the car far from the bus",
                   "the second bottle from the right on the counter", "the knife beside the pineapple, third from the left",
                   "bottom right pizza", "the biggest dog", "the last car from the left",
                   "the leftmost chair close to the fruit and not next to the fridge",
                   "the cup between the plate and the bowl", "the cup not between two plates, left of the knife"]:
        n = 7
        head = rng.dirichlet(np.ones(n)).tolist()
        anchor = rng.dirichlet(np.ones(n)).tolist()
        more = rng.dirichlet(np.ones(n), size=len(parse(phrase).more_relations)).tolist()
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2))], 1).round().tolist()
        js = page.evaluate("([p, h, b, s, a, m]) => Array.from(textsam._internal.resolve(textsam._internal.parse(p), h, b, s, a, m))",
                           [phrase, head, boxes, [480, 500], anchor, more])
        q = parse(phrase)
        ref = resolve(q, torch.tensor(head), torch.tensor(boxes), (480, 500), torch.tensor(anchor) if q.anchor else None,
                      [torch.tensor(m) for m in more])
        assert np.allclose(js, ref.numpy(), atol=1e-5), phrase
        group = "all " + phrase.removeprefix("the ")  # a set's members: spatial.support
        js = page.evaluate("([p, b, s, a, m]) => Array.from(textsam._internal.support(textsam._internal.parse(p), b, s, a, m))",
                           [group, boxes, [480, 500], anchor if q.anchor else None, more])
        ref = support(parse(group), torch.tensor(boxes), (480, 500), torch.tensor(anchor) if q.anchor else None,
                      [torch.tensor(m) for m in more])
        assert np.allclose(js, ref.numpy(), atol=1e-5), group
    for (h, w), (oh, ow), kind in [((37, 53), (64, 64), "bicubic"), ((300, 200), (128, 85), "bilinear"),
                                   ((90, 140), (64, 64), "bicubic"), ((128, 96), (128, 96), "bilinear"),
                                   ((20, 31), (128, 77), "bilinear"), ((500, 61), (64, 8), "bicubic")]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = page.evaluate("([d, h, w, oh, ow, k]) => Array.from(textsam._internal.resizePIL(Uint8Array.from(d), h, w, oh, ow, k))",
                             [image.reshape(-1).tolist(), h, w, oh, ow, kind])
        ref = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BICUBIC if kind == "bicubic" else Image.BILINEAR))
        assert np.array_equal(np.array(ours, dtype=np.uint8).reshape(oh, ow, 3), ref), (h, w, oh, ow, kind)


def _download_json(page) -> dict:  # noqa: ANN001
    with page.expect_download() as info:
        page.click("#download-json")
    return json.loads(Path(info.value.path()).read_text())


def _rle_mask(record: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rle = {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _wait_for_update(page, before: str) -> None:  # noqa: ANN001
    page.wait_for_function("(b) => { const m = document.querySelector('#message'); "
                           "return m.textContent !== b && m.textContent.includes('mask score'); }", arg=before)


def test_typing_a_phrase_and_clicking_give_the_python_masks(page, predictor) -> None:  # noqa: ANN001
    """Through the page's own controls: open the example, type a phrase, click on the canvas, clear and click alone;
    each mask read back from the JSON download (COCO RLE) against the Python predictor with the same prompts,
    and the PNG download against the same mask."""
    image = np.array(Image.open(EXAMPLE).convert("RGB"))
    predictor.set_image(image)
    page.click("#clear")
    assert page.is_disabled("#download-png") and page.is_disabled("#download-json")  # nothing to download yet
    page.set_input_files("#file", str(EXAMPLE))
    page.wait_for_function("document.querySelector('#message').textContent.includes('240 x 180')")
    before = page.text_content("#message")
    page.fill("#phrase", "red circle")
    page.press("#phrase", "Enter")
    _wait_for_update(page, before)
    record = _download_json(page)
    assert record["prompt"]["text"] == "red circle" and record["found"] is True
    text_mask = _rle_mask(record)
    assert _iou(text_mask, _python(predictor, {"text": "red circle"})[0]) >= 0.98
    with page.expect_download() as info:
        page.click("#download-png")
    png = np.array(Image.open(io.BytesIO(Path(info.value.path()).read_bytes())).convert("L")) > 127
    assert np.array_equal(png, text_mask)
    box = page.locator("#view").bounding_box()
    for clear in (False, True):  # text + click, then the click alone
        if clear:
            page.click("#clear")
        before = page.text_content("#message")
        page.mouse.click(box["x"] + box["width"] * 0.62, box["y"] + box["height"] * 0.52)  # on the blue square
        _wait_for_update(page, before)
        record = _download_json(page)
        prompt = {"points": record["prompt"]["points"]} | ({} if clear else {"text": "red circle"})
        assert len(prompt["points"]) == 1 and record["prompt"]["text"] == prompt.get("text")
        ref = _python(predictor, prompt)[0]
        assert _iou(_rle_mask(record), ref) >= 0.98, (prompt, _iou(_rle_mask(record), ref))


@pytest.mark.parametrize(("action", "expected"), [
    ("file:not_an_image.png", "is not an image the browser can read"),
    ("file:huge.png", "the image is too large (8000 x 6000 pixels)"),
    ("phrase:   ", "The phrase is empty"),
])
def test_bad_input_shows_a_message(page, page_dir: Path, action: str, expected: str) -> None:  # noqa: ANN001
    kind, value = action.split(":", 1)
    if kind == "file":
        page.set_input_files("#file", str(page_dir / value))
    else:
        page.click("#clear")  # no phrase left from an earlier test: opening the image shows its size
        page.set_input_files("#file", str(EXAMPLE))
        page.wait_for_function("document.querySelector('#message').textContent.includes('240 x 180')")
        page.fill("#phrase", value)
        page.press("#phrase", "Enter")
    page.wait_for_function("(t) => document.querySelector('#message').textContent.includes(t)", arg=expected)
    assert page.eval_on_selector("#message", "e => e.className") == "error"
    # the page still answers afterwards
    page.evaluate("textsam.loadImage('shapes.png')")
    assert _segment(page, {"points": [[60, 70, 1]]})[0].any()


@pytest.mark.parametrize(("prompt", "expected"), [
    ({"text": "   "}, "the text prompt is empty"),
    ({"points": [[500, 10, 1]]}, "is outside the image"),
    ({"box": [50, 50, 10, 10]}, "x0 < x1"),
    ({}, "give a phrase, a click or a box"),
])
def test_api_rejects_bad_prompts_with_a_message(page, prompt: dict, expected: str) -> None:  # noqa: ANN001
    page.evaluate("textsam.loadImage('shapes.png')")
    message = page.evaluate("(p) => textsam.segment(p).then(() => 'no error', (e) => e.message)", prompt)
    assert expected in message


def test_page_without_a_text_head_runs_the_engine_as_python_does(browser, tmp_path: Path) -> None:  # noqa: ANN001
    """shapes_tiny without its head: the page's proposals (one click per region of the image embedding, IoU and
    stability filters, box NMS), CLIP crop ranking, spatial words and group phrases give Python's clicks, masks
    and presence; onnxruntime runs in its proxy worker, as it does for the published models."""
    from textsam import TextSamPredictor, create_model
    from textsam.export.web import page_options
    from textsam.text.prompter import default_options
    from textsam.text.spatial import parse

    model = create_model("shapes_tiny", text_head=False)
    predictor = TextSamPredictor(model, text_options=page_options(default_options(model)))
    folder = _export(predictor.model, tmp_path / "engine", worker=True)  # the published models' set-up
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["text"]["mode"] == "engine" and manifest["worker"] is True
    ious, gaps = [], []
    with _open_page(browser, folder) as page:
        for name, image, named in _scenes()[:3]:
            page.evaluate("(url) => textsam.loadImage(url)", name)
            predictor.set_image(image)
            phrase, mask = named[0]
            x, y = _deepest(mask)
            colour = phrase.split()[0]  # what a phrase excludes: the engine's negative, a background click on it
            for prompt in [{"text": phrase}, {"text": phrase, "points": [[x, y, 1]]}, {"text": "all the shapes"},
                           {"text": "the shape on the left"}, {"text": "the biggest shape"},
                           {"text": f"the shape that is not {colour}"}, {"text": f"all shapes without {colour} colour"}]:
                ours, score, presence = _segment(page, prompt)
                ref, ref_score, ref_presence = _python(predictor, prompt)
                ious.append(_iou(ours, ref))
                gaps.append(abs(presence - ref_presence))
                assert ious[-1] >= 0.98, (name, prompt, ious[-1])
            # the page says how the engine read a phrase, as the app does (Query.describe)
            read = page.evaluate("async (p) => (await textsam.segment({text: p})).read", "the shape on the left")
            assert read == parse("the shape on the left").describe() == "'shape', leftmost"
            engine = predictor.text.engine
            clicks = np.array(page.evaluate("() => textsam._internal.proposalPoints()"), dtype=np.float64)
            assert engine.options.seeds == "embedding" and engine.clicks < 64  # the embedding's regions, not a grid
            np.testing.assert_allclose(clicks, engine.proposals(predictor).points.numpy(), atol=1e-6)
        assert not page.errors, page.errors
    assert max(gaps) < 0.02, max(gaps)
    print(f"\nweb page, engine: {len(ious)} prompts, min IoU {min(ious):.4f}, max presence gap {max(gaps):.2e}")


def test_a_head_with_its_own_text_tower_reads_it_in_the_page(browser, tmp_path: Path) -> None:  # noqa: ANN001
    """A text head read through a fine-tuned copy of CLIP's text tower (here: the copy's output rotated), the
    engine scoring with CLIP's own (``model.engine_encoder``): the page's masks and presence match Python's,
    and the rotation changes some of Python's answers, so a page reading the wrong tower would not match."""
    import torch

    from textsam import TextSamPredictor, create_model
    from textsam.export.web import page_options
    from textsam.text.prompter import default_options

    model = create_model("shapes_tiny")
    model.engine_encoder, model.text_encoder = model.text_encoder, model.text_encoder.text_copy()
    dim = model.text_encoder.embed_dim
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        model.text_encoder.clip.text_projection.copy_(model.text_encoder.clip.text_projection @ rotation)
    options = page_options(default_options(model))
    predictor = TextSamPredictor(model, text_options=options)
    plain = TextSamPredictor(create_model("shapes_tiny"), text_options=options)
    folder = _export(model, tmp_path / "head_tower")
    assert "clip_text_head" in json.loads((folder / "manifest.json").read_text())["graphs"]
    changed = 0
    with _open_page(browser, folder) as page:
        for name, image, named in _scenes()[:2]:
            page.evaluate("(url) => textsam.loadImage(url)", name)
            predictor.set_image(image)
            plain.set_image(image)
            for phrase, _ in named[:3]:
                ours, _, presence = _segment(page, {"text": phrase})
                ref, _, ref_presence = _python(predictor, {"text": phrase})
                assert _iou(ours, ref) >= 0.98, (name, phrase, _iou(ours, ref))
                assert abs(presence - ref_presence) < 0.02
                changed += _iou(ref, _python(plain, {"text": phrase})[0]) < 0.98
        assert not page.errors, page.errors
    assert changed > 0
