"""End to end in a real headless Chromium (Debian's /usr/bin/chromium through Playwright).

The app runs in this process on 127.0.0.1:<free port>. Screenshots go to artifacts/app/ (git-ignored).
Skips when Chromium or Playwright is missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.test_app import SQUARE, H, W, iou, known_mask, save_image, start_server
from textsam import rle

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "app"
TIMEOUT = 120_000  # generous: CI machines are shared and slow

# Where gradio's click handler maps a click (image scaled down, never up, centred): the inverse.
# The app shows small images magnified k times; aim at the middle of pixel (x, y)'s k x k block.
_TO_SCREEN = """([img, x, y, width]) => {
  const r = img.getBoundingClientRect(), k = img.naturalWidth / width;
  const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
  const ox = (r.width - img.naturalWidth * s) / 2, oy = (r.height - img.naturalHeight * s) / 2;
  return [r.left + ox + (x * k + (k - 1) / 2) * s, r.top + oy + (y * k + (k - 1) / 2) * s];
}"""


@pytest.fixture(scope="module")
def random_server():
    demo, url = start_server()
    yield url
    demo.close()


@pytest.fixture(scope="module")
def perfect_server():
    from tests.test_app import PerfectPredictor

    demo, url = start_server(PerfectPredictor)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return save_image(tmp_path_factory.mktemp("browser_scene"))


@pytest.fixture(scope="module")
def truncated(scene, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("browser_bad") / "truncated.png"
    data = scene.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class Page:
    """A browser tab on the app, with the few actions the tests need."""

    def __init__(self, page, url: str) -> None:
        self.page = page
        page.set_default_timeout(TIMEOUT)
        page.goto(url)
        page.wait_for_selector("#canvas")

    def status(self) -> str:
        return self.page.inner_text("#status")

    def wait_status(self, pattern: str) -> str:
        self.page.wait_for_function("p => new RegExp(p).test(document.querySelector('#status').innerText)",
                                    arg=pattern)
        return self.status()

    def upload(self, path: Path, expect: str | None = None) -> None:
        """Upload ``path`` and wait for the status ``expect`` (default: "Loaded <its name>", so that a page that
        already shows another image's "Loaded ..." does not satisfy the wait before this upload is handled)."""
        self.page.locator("#upload input[type=file]").set_input_files(str(path))
        self.wait_status(expect if expect is not None else "Loaded " + re.escape(path.name))

    def canvas_src(self) -> str:
        self.page.wait_for_function("() => { const i = document.querySelector('#canvas img');"
                                    " return i && i.complete && i.naturalWidth > 0; }")
        return self.page.get_attribute("#canvas img", "src")

    def click_image(self, x: float, y: float) -> None:
        img = self.page.locator("#canvas img")
        img.scroll_into_view_if_needed()
        self.canvas_src()
        cx, cy = self.page.evaluate(_TO_SCREEN, [img.element_handle(), x, y, W])
        self.page.mouse.click(cx, cy)

    def set_mode(self, label: str) -> None:
        self.page.locator("#mode label", has_text=label).click()

    def type_text(self, text: str) -> None:
        self.page.locator("#text textarea, #text input").first.fill(text)

    def result_json(self, run: int) -> dict:
        """The JSON download of result #``run``, fetched like a user's click on it would."""
        self.wait_status(rf"Result #{run}: .*Downloads ready")
        link = self.page.locator("#downloads a[download$='.json']").first
        link.wait_for()
        response = self.page.request.get(link.get_attribute("href"))
        assert response.ok
        return json.loads(response.body())

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def _mask(doc: dict, i: int = 0) -> np.ndarray:
    seg = doc["results"][i]["segmentation"]
    assert seg["size"] == [H, W]
    return rle.decode(seg).astype(bool)


def test_click_with_random_model(browser, random_server, scene):
    page = Page(browser.new_page(viewport={"width": 1280, "height": 1100}), random_server)
    page.page.locator("#examples button, .gallery-item, [data-testid='examples'] button").first.click()
    page.wait_status("Loaded shapes.png")  # a bundled example
    page.upload(scene)
    before = page.canvas_src()
    page.type_text("red square")
    page.click_image(90, 70)
    page.wait_status(r"Result #1: 1 mask")
    page.page.locator("#segment").click()
    doc = page.result_json(2)
    assert doc["image"]["height"] == H and doc["image"]["width"] == W and _mask(doc).shape == (H, W)
    assert doc["prompt"]["point_coords"] == [[90.0, 70.0]] and doc["prompt"]["text"] == "red square"
    after = page.canvas_src()
    assert after != before
    assert page.page.request.get(after).body() != page.page.request.get(before).body()
    page.shot("random_click")
    page.page.close()


def test_click_and_box_with_perfect_predictor(browser, perfect_server, scene):
    page = Page(browser.new_page(viewport={"width": 1280, "height": 1100}), perfect_server)
    page.upload(scene)
    page.type_text("red square")
    page.click_image(75, 55)
    page.wait_status(r"Result #1: 1 mask\(s\), best score 0\.99")
    page.page.locator("#segment").click()
    doc = page.result_json(2)
    assert doc["prompt"]["point_coords"] == [[75.0, 55.0]] and doc["prompt"]["point_labels"] == [1]
    assert np.array_equal(_mask(doc), known_mask())
    page.shot("perfect_click")

    page.page.locator("#clear").click()
    page.wait_status("Cleared")
    page.type_text("")
    page.set_mode("Box")
    x0, y0, x1, y1 = SQUARE
    page.click_image(x0 - 8, y0 - 8)
    page.wait_status("opposite corner")
    page.click_image(x1 + 8, y1 + 8)
    page.wait_status(r"Result #3: 1 mask\(s\), best score 0\.99")
    doc = page.result_json(3)
    assert doc["prompt"]["box"] == [x0 - 8.0, y0 - 8.0, x1 + 8.0, y1 + 8.0]
    assert np.array_equal(_mask(doc), known_mask())
    page.shot("perfect_box")
    page.page.close()


def test_two_sessions_keep_their_own_points(browser, perfect_server, scene):
    a = Page(browser.new_context(viewport={"width": 1280, "height": 1100}).new_page(), perfect_server)
    b = Page(browser.new_context(viewport={"width": 1280, "height": 1100}).new_page(), perfect_server)
    a.upload(scene)
    b.upload(scene)
    a.click_image(90, 70)
    b.set_mode("Negative")
    b.click_image(20, 20)
    a.wait_status("Result #1")
    b.wait_status("Result #1")
    a.click_image(100, 80)
    doc_a, doc_b = a.result_json(2), b.result_json(1)
    assert doc_a["prompt"]["point_coords"] == [[90.0, 70.0], [100.0, 80.0]]
    assert doc_b["prompt"]["point_coords"] == [[20.0, 20.0]] and doc_b["prompt"]["point_labels"] == [0]
    assert iou(_mask(doc_a), known_mask()) == 1.0
    a.shot("session_a")
    b.shot("session_b")
    for p in (a, b):
        p.page.context.close()


def test_bad_upload_shows_a_message_and_app_goes_on(browser, random_server, truncated, scene):
    page = Page(browser.new_page(viewport={"width": 1280, "height": 1100}), random_server)
    page.upload(truncated, expect="could not be decoded")
    assert "truncated.png" in page.status()
    page.shot("bad_upload")
    page.upload(scene)  # the same page (and server) goes on working
    page.click_image(90, 70)
    page.wait_status("Result #1")
    page.page.close()
