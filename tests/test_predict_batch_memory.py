"""predict_batch decodes in bounded chunks: memory does not grow with the prompt count, results are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from textsam import predictor as predictor_module
from textsam.predictor import TextSamPredictor

from .tiny import tiny_sam


@pytest.fixture(scope="module")
def ready() -> TextSamPredictor:
    p = TextSamPredictor(tiny_sam())
    rng = np.random.default_rng(0)
    p.set_image(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    return p


def _boxes(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 40, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(5, 45, (n, 2))], axis=1)


def test_many_boxes_are_decoded_in_bounded_chunks(ready: TextSamPredictor, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    decode = ready.model.decode

    def spy(features, **kwargs):
        low, iou = decode(features, **kwargs)
        sizes.append(low.shape[0])
        return low, iou

    monkeypatch.setattr(ready.model, "decode", spy)
    out = ready.predict_batch(boxes=_boxes(1000), multimask_output=False)
    assert out.masks.shape == (1000, 1, 90, 120) and out.masks.dtype == bool
    assert max(sizes) <= predictor_module.DECODE_CHUNK and sum(sizes) == 1000


@pytest.mark.parametrize("return_logits", [False, True])
def test_chunked_results_equal_one_call(ready: TextSamPredictor, monkeypatch: pytest.MonkeyPatch,
                                        return_logits: bool) -> None:
    boxes = _boxes(70)
    points = np.stack([boxes[:, :2] + 2, boxes[:, 2:] - 2], axis=1)
    labels = np.ones((70, 2))
    chunked = ready.predict_batch(points, labels, boxes, return_logits=return_logits)
    monkeypatch.setattr(predictor_module, "DECODE_CHUNK", 10_000)
    monkeypatch.setattr(predictor_module, "UPSAMPLE_BUDGET", 1 << 40)
    whole = ready.predict_batch(points, labels, boxes, return_logits=return_logits)
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, atol=1e-5)
