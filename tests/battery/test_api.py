"""Battery: the Python API (create_model, TextSamPredictor) with bad and awkward input.

Each case names a call and the outcome expected: success, or an error class whose message holds given
words. The harness records every case (see harness.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import textsam
from textsam.errors import InputError, WeightsError

from . import files
from .harness import check_call


@pytest.fixture(scope="module")
def model() -> Any:
    return textsam.create_model("shapes_tiny")


@pytest.fixture(scope="module")
def ready(model: Any) -> textsam.TextSamPredictor:
    p = textsam.TextSamPredictor(model)
    p.set_image(files.scene((96, 72)))
    return p


@dataclass(frozen=True)
class Call:
    """``run(predictor, tmp)`` makes the call; ``error`` None means it must succeed."""

    id: str
    run: Callable[[textsam.TextSamPredictor, Path], Any]
    error: type[BaseException] | None = None
    words: tuple[str, ...] = ()


def _set_file(kind: str) -> Callable[[textsam.TextSamPredictor, Path], Any]:
    def run(p: textsam.TextSamPredictor, tmp: Path) -> Any:
        fresh = textsam.TextSamPredictor(p.model)
        fresh.set_image(files.write(kind, tmp))
        return fresh.predict(point_coords=np.array([[0.0, 0.0]]), point_labels=np.array([1]))
    return run


def _predict(**kwargs: Any) -> Callable[[textsam.TextSamPredictor, Path], Any]:
    return lambda p, tmp: p.predict(**kwargs)


def _set_array(array: Any) -> Callable[[textsam.TextSamPredictor, Path], Any]:
    return lambda p, tmp: textsam.TextSamPredictor(p.model).set_image(array)


ONE = {"point_coords": np.array([[20.0, 30.0]]), "point_labels": np.array([1])}
BAD_FILES = {
    "zero_byte": ("empty (0 bytes)",), "truncated_png": ("truncated",), "truncated_jpeg": ("truncated",),
    "text_as_png": ("cannot read",), "html_as_jpg": ("cannot read",), "bomb_png": ("decompression bomb",),
    "big_150mp_png": ("megapixels",), "fifo": ("not a regular file",),
}

CALLS = [
    *[Call(f"set_image-{kind}", _set_file(kind), InputError, words) for kind, words in BAD_FILES.items()],
    *[Call(f"set_image-{kind}", _set_file(kind)) for kind in files.GOOD_KINDS],
    Call("set_image-missing", lambda p, t: textsam.TextSamPredictor(p.model).set_image(str(t / "no.png")),
         InputError, ("not found",)),
    Call("set_image-folder", lambda p, t: textsam.TextSamPredictor(p.model).set_image(t), InputError, ("folder",)),
    Call("set_image-nan-array", _set_array(np.full((8, 8, 3), np.nan)), InputError, ("nan",)),
    Call("set_image-5-channels", _set_array(np.zeros((8, 8, 5), np.uint8)), InputError, ("shape",)),
    Call("set_image-empty-array", _set_array(np.zeros((0, 8, 3), np.uint8)), InputError, ("empty",)),
    Call("set_image-list", _set_array([[1, 2, 3]]), InputError, ("unsupported image type",)),
    Call("set_image-bool-mask", _set_array(np.ones((8, 8), bool))),
    Call("set_image-pil-cmyk", _set_array(files.scene().convert("CMYK"))),
    Call("set_image-bad-format", lambda p, t: textsam.TextSamPredictor(p.model).set_image(files.scene(), "HSV"),
         InputError, ("rgb",)),
    Call("predict-before-set_image", lambda p, t: textsam.TextSamPredictor(p.model).predict(**ONE), InputError,
         ("set_image",)),
    Call("text-empty", _predict(text=""), InputError, ("empty",)),
    Call("text-whitespace", _predict(text=" \n\t "), InputError, ("empty",)),
    Call("text-not-a-string", _predict(text=3), InputError, ("string",)),
    Call("text-over-long", _predict(text="red circle " * 300)),
    Call("text-non-ascii", _predict(text="círculo rojo 🔴")),
    Call("text-shell-metacharacters", _predict(text="$(rm -rf ~); `ls` | > x")),
    Call("negative-text-alone", _predict(negative_text="blue"), InputError, ("needs a text prompt",)),
    Call("instances-unknown", _predict(text="red circle", instances="some"), InputError, ("'one' or 'all'",)),
    Call("all-without-text", _predict(instances="all"), InputError, ("needs a text prompt",)),
    Call("all-instances", _predict(text="red circle", instances="all")),
    Call("point-outside", _predict(point_coords=[[200, 10]], point_labels=[1]), InputError, ("outside", "96x72")),
    Call("point-nan", _predict(point_coords=[[np.nan, 10]], point_labels=[1]), InputError, ("nan",)),
    Call("point-wrong-shape", _predict(point_coords=[1, 2, 3], point_labels=[1]), InputError, ("(n, 2)",)),
    Call("point-labels-missing", _predict(point_coords=[[1, 2]]), InputError, ("go together",)),
    Call("point-label-7", _predict(point_coords=[[1, 2]], point_labels=[7]), InputError, ("1 (foreground)",)),
    Call("point-not-numeric", _predict(point_coords=[["a", "b"]], point_labels=[1]), InputError, ("numeric",)),
    Call("box-inverted", _predict(box=[50, 50, 10, 10]), InputError, ("x0 > x1",)),
    Call("box-outside", _predict(box=[0, 0, 500, 10]), InputError, ("outside",)),
    Call("box-three-numbers", _predict(box=[1, 2, 3]), InputError, ("4 numbers",)),
    Call("box-inf", _predict(box=[0, 0, np.inf, 10]), InputError, ("infinite",)),
    Call("mask-input-wrong-size", _predict(mask_input=np.zeros((1, 64, 64)), **ONE), InputError, ("low-res",)),
    Call("batch-empty", lambda p, t: p.predict_batch(boxes=np.zeros((0, 4))), InputError, ("empty batch",)),
    Call("batch-size-mismatch", lambda p, t: p.predict_batch(np.zeros((2, 1, 2)), np.ones((2, 1)),
                                                          np.array([[0, 0, 5, 5.0]] * 3)), InputError, ("match",)),
    Call("batch-1000-boxes", lambda p, t: p.predict_batch(boxes=np.tile([[5.0, 5, 40, 40]], (1000, 1)),
                                                          multimask_output=False)),
    Call("phrases-empty-list", lambda p, t: p.predict_phrases([]), InputError, ("at least one phrase",)),
    Call("precision-unknown", lambda p, t: textsam.TextSamPredictor(p.model, image_precision="int4"), InputError,
         ("fp32",)),
    Call("model-unknown", lambda p, t: textsam.create_model("sam_vit_q"), InputError, ("unknown model",)),
    Call("model-checkpoint-missing", lambda p, t: textsam.create_model("sam_vit_b", checkpoint=t / "x.pth"),
         WeightsError, ("not found",)),
    Call("model-device-cuda", lambda p, t: textsam.create_model("shapes_tiny", device="cuda"), InputError,
         ("no cuda device",)),
    Call("model-offline-download", lambda p, t: textsam.create_model("mobile_sam"), WeightsError,
         ("offline",)),
]


@pytest.mark.parametrize("call", CALLS, ids=[c.id for c in CALLS])
def test_api(call: Call, ready: textsam.TextSamPredictor, tmp_path: Path) -> None:
    check_call(f"api/{call.id}", lambda: call.run(ready, tmp_path), error=call.error, words=call.words)


def test_exif_rotation_is_applied(model: Any, tmp_path: Path) -> None:
    p = textsam.TextSamPredictor(model)
    p.set_image(files.write("exif_rotated_jpeg", tmp_path))
    assert p.original_size == (96, 72)
    with Image.open(tmp_path / "rotated.jpg") as im:
        assert im.size == (96, 72)  # stored landscape; shown (and segmented) portrait
