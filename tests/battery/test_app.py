"""Reliability battery: the web app. Every case states its input and the outcome it expects.

Handler cases call :class:`textsam.app.handlers.WebApp` directly (the page's handlers and the ``segment``
API), with tiny random models (tests/tiny.py): the plumbing, not the masks, is under test. A few cases go
through a running server with gradio_client. A message shown in the page counts as the case's error
(:class:`PageMessage`), so the harness checks it like an exception's: no traceback, no "unexpected",
the words that say what to do.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import pytest

from tests.battery import files
from tests.battery.harness import check_call, snapshot
from tests.tiny import tiny_sam

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
ui = pytest.importorskip("textsam.app.ui")
from textsam.app.handlers import MODE_BOX, WebApp  # noqa: E402
from textsam.app.serving import default_model_factory  # noqa: E402
from textsam.errors import InputError, WeightsError  # noqa: E402

W, H = 96, 72  # files.scene()


class PageMessage(Exception):
    """A handler answered with a warning in the page instead of a result."""


def model_factory(name: str):
    """Tiny random models for the names the app lists; any other name fails as ``create_model`` does."""
    if name == "sam_vit_b":
        raise WeightsError("Downloading 'sam_vit_b' failed: no network. Or place the file in the cache.")
    if name in ("shapes_tiny", "mobile_sam"):
        return tiny_sam(with_text=True)
    return default_model_factory(name)


@pytest.fixture(scope="module")
def app():
    a = WebApp(model_factory, default_model="shapes_tiny")
    yield a
    a.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app_battery")


@pytest.fixture(scope="module")
def good(folder) -> Path:
    return files.good_png(folder / "scene.png")


def page(view) -> object:
    """A handler's view, or PageMessage when its status line is a warning."""
    status = view[0].status if isinstance(view, tuple) else view.status
    if "⚠️" in status or status.startswith("**Could not") or "Unexpected" in status:
        raise PageMessage(status)
    return view


def bounded(call, seconds: float = 20):
    """``call()`` in a thread: a case that hangs (a FIFO read) fails instead of blocking the run."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = call()
        except Exception as err:  # noqa: BLE001 - re-raised below
            out["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise TimeoutError(f"the call did not return within {seconds} s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


# ------------------------------------------------------------------------------------------ uploads
BAD_UPLOADS = [  # kind, words of the message
    ("zero_byte", ["empty", "0 bytes", "upload"]),
    ("truncated_png", ["could not be decoded", "complete"]),
    ("truncated_jpeg", ["could not be decoded", "complete"]),
    ("text_as_png", ["not an image", "png"]),
    ("html_as_jpg", ["not an image", "jpeg"]),
    ("bomb_png", ["too large", "downscale"]),
    ("big_150mp_png", ["150.0 megapixels", "at most 20 MP", "downscale"]),
    ("fifo", ["not a regular file", "upload an image file"]),
]
assert {k for k, _ in BAD_UPLOADS} == set(files.BAD_KINDS)


@pytest.mark.parametrize("kind, words", BAD_UPLOADS, ids=[k for k, _ in BAD_UPLOADS])
def test_bad_upload_is_a_message(app, folder, good, kind, words):
    path = files.write(kind, folder / kind)
    s = app.new_session()
    payload = {"path": str(path), "orig_name": path.name}

    def extra(err) -> None:
        assert s.image is None and path.name in str(err)
        assert page(app.upload(s, str(good))).canvas is not None  # and the app goes on

    before = snapshot(folder)
    check_call(f"app/upload/{kind}", lambda: page(bounded(lambda: app.upload(s, payload))), error=PageMessage,
               words=words, before=before, extra=extra)
    check_call(f"app/api-upload/{kind}", lambda: bounded(lambda: app.api_segment(payload, "red disc")),
               error=InputError, words=words)


@pytest.mark.parametrize("kind", files.GOOD_KINDS)
def test_good_upload_segments(app, folder, kind):
    path = files.write(kind, folder / kind)

    def extra(result) -> None:
        overlay, doc = result
        assert overlay.shape[:2] == (doc["image"]["height"], doc["image"]["width"]) and doc["results"]

    check_call(f"app/good-upload/{kind}", lambda: app.api_segment(str(path), "", [[0, 0, 1]]), extra=extra)


# ------------------------------------------------------------------------------------------ prompts
SHELL = "`touch pwned`; $(rm -rf ~) | cat /etc/passwd && echo ' \" > out.png"
PROMPTS = [  # case, text, points, box, expected error (None: a result), words
    ("empty-phrase-no-prompt", "", None, None, InputError, ["add a click", "text prompt"]),
    ("whitespace-phrase", " \t\n ", None, None, InputError, ["add a click", "text prompt"]),
    ("long-phrase-500-words", " ".join(["red"] * 250 + ["disc"] * 250), None, None, None, []),
    ("non-ascii-phrase", "rote Scheibe 圆 🟥 ñ", None, None, None, []),
    ("shell-metacharacters", SHELL, None, None, None, []),
    ("phrase-and-click", "red disc", [[20, 30, 1]], None, None, []),
    ("point-outside", "", [[500, 10, 1]], None, InputError, ["outside the 96x72 image", "(500, 10)"]),
    ("point-negative", "red disc", [[-1, 10, 1]], None, InputError, ["outside the 96x72 image"]),
    ("point-nan", "", [[math.nan, 10, 1]], None, InputError, ["finite", "[x, y, label]"]),
    ("point-inf", "", [[math.inf, 10, 1]], None, InputError, ["finite"]),
    ("point-one-number", "", [[5]], None, InputError, ["[x, y]", "label 0 or 1"]),
    ("point-label-5", "", [[5, 5, 5]], None, InputError, ["label 0 or 1"]),
    ("point-as-text", "", [["x", "y"]], None, InputError, ["[x, y]"]),
    ("points-bad-json", "", "[[1, 2", None, InputError, ["points must be json", "[[x, y, label]"]),
    ("points-not-a-list", "", {"x": 1, "y": 2}, None, InputError, ["points must be a list"]),
    ("box-inverted-x", "", None, [80, 5, 10, 60], InputError, ["x0 > x1 or y0 > y1", "top-left, bottom-right"]),
    ("box-inverted-y", "red disc", None, [10, 60, 80, 5], InputError, ["x0 > x1 or y0 > y1"]),
    ("box-three-numbers", "", None, [1, 2, 3], InputError, ["[x0, y0, x1, y1]", "four"]),
    ("box-nan", "", None, [1, math.nan, 30, 40], InputError, ["finite"]),
    ("box-not-json", "", None, "1,2,3,4", InputError, ["box must be json", "[x0, y0, x1, y1]"]),
    ("box-outside", "", None, [0, 0, 500, 500], InputError, ["outside the 96x72 image"]),
    ("box-empty", "", None, [10, 10, 10, 40], InputError, ["empty", "x1 > x0"]),
    ("box-as-json-text", "", [], "[5, 5, 60, 50]", None, []),
]


@pytest.mark.parametrize("case, text, points, box, error, words", PROMPTS, ids=[c[0] for c in PROMPTS])
def test_api_prompt(app, good, folder, case, text, points, box, error, words):
    before = snapshot(folder)
    cwd = snapshot(Path.cwd() / "pwned", Path.cwd() / "out.png")
    check_call(f"app/api/{case}", lambda: app.api_segment(str(good), text, points, box), error=error,
               words=words, before=before)
    assert snapshot(Path.cwd() / "pwned", Path.cwd() / "out.png") == cwd  # nothing ran in a shell


PAGE = [  # case, the handler call on a session that holds files.scene(), expected error, words
    ("click-unknown-mode", lambda a, s: a.click(s, 5, 5, "Lasso"), PageMessage, ["unknown prompt mode"]),
    ("box-two-clicks-any-corners", lambda a, s: (a.click(s, 80, 5, MODE_BOX), a.click(s, 10, 60, MODE_BOX))[1],
     None, []),
    ("box-too-small", lambda a, s: (a.click(s, 10, 10, MODE_BOX), a.click(s, 11, 10, MODE_BOX))[1],
     PageMessage, ["too small", "two opposite corners"]),
    ("segment-with-nothing", lambda a, s: a.run(s, "  "), PageMessage, ["add a click", "text prompt"]),
    ("unknown-model", lambda a, s: a.select_model(s, "no_such_model"), PageMessage,
     ["could not load", "no_such_model", "known models", "still using `shapes_tiny`"]),
    ("model-without-weights", lambda a, s: a.select_model(s, "sam_vit_b"), PageMessage,
     ["could not load", "no network", "still using"]),
    ("undo-with-nothing", lambda a, s: a.undo(s), None, []),
]


@pytest.mark.parametrize("case, call, error, words", PAGE, ids=[c[0] for c in PAGE])
def test_page_handler(app, good, case, call, error, words):
    s = app.new_session()
    page(app.upload(s, str(good)))
    check_call(f"app/page/{case}", lambda: page(call(app, s)), error=error, words=words)
    assert s.model == "shapes_tiny"


# ------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    from tests.test_app import free_port

    demo = ui.build_demo(model_factory, default_model="shapes_tiny")
    ui.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield Client(demo.local_url, verbose=False, analytics_enabled=False, download_files=False)
    demo.close()
    demo.textsam.close()


SERVER = [  # case, file kind, text, points, box, error words (None: a result)
    ("text-as-png", "text_as_png", "red disc", [], None, ["not an image"]),
    ("bomb-png", "bomb_png", "red disc", [], None, ["too large"]),
    ("truncated-jpeg", "truncated_jpeg", "", [[5, 5, 1]], None, ["could not be decoded"]),
    ("inverted-box", "good_png", "", [], [80, 60, 10, 5], ["x0 > x1 or y0 > y1"]),
    ("point-outside", "good_png", "red disc", [[96.5, 80, 1]], None, ["outside the 96x72 image"]),
    ("good-png", "good_png", "red disc", [[20, 30, 1]], None, None),
]


@pytest.mark.parametrize("case, kind, text, points, box, words", SERVER, ids=[c[0] for c in SERVER])
def test_server_endpoint(client, folder, case, kind, text, points, box, words):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = files.write(kind, folder / f"server_{case}")
    check_call(f"app/server/{case}",
               lambda: client.predict(handle_file(str(path)), text, points, box, False, api_name="/segment"),
               error=AppError if words is not None else None, words=words or [])
