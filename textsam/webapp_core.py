"""The web app's logic, without Gradio: shared models, an embedding LRU, per-session prompt state.

:mod:`textsam.webapp` wires these functions to Gradio components; tests and benchmarks call them
directly. Nothing here holds global state: a :class:`ModelHub` (models + embedding cache) is made
per app by ``build_demo`` and shared by its sessions; a :class:`Session` lives in each browser
session's ``gr.State``.

Frames: clicks are ``(x, y)`` pixels of the original image, boxes ``x0, y0, x1, y1`` pixels.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import uuid
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, TextSamError, WeightsError

logger = logging.getLogger(__name__)

DEMO_MODEL = "shapes_tiny"
DEFAULT_MAX_PIXELS = 20_000_000  # uploads above this are refused with a message (phones: 12-48 MP)
DISPLAY_LONG_SIDE = 960  # the click canvas is drawn at most this large
MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX = "Positive click", "Negative click", "Box (2 clicks)"
MODES = [MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX]
_BOX_COLOUR, _CORNER_COLOUR = (255, 215, 0), (255, 215, 0)


def short_message(err: BaseException, limit: int = 400) -> str:
    """An error's message, cut to ``limit`` characters (CLIP errors list every model name)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_model_factory(name: str) -> Any:
    """``create_model(name)``; the demo model falls back to random weights when its file is missing."""
    import textsam

    try:
        return textsam.create_model(name)
    except WeightsError as err:
        if name != DEMO_MODEL:
            raise
        logger.warning("%s weights unavailable (%s); using random weights", name, err)
        return textsam.create_model(name, pretrained=False)


def image_key(image: np.ndarray) -> str:
    """A content hash of an ``(H, W, 3)`` uint8 image (shape included)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def serving_plan(cpus: int | None = None) -> tuple[int, int, int]:
    """``(workers, heavy_slots, torch_threads)`` for a machine with ``cpus`` CPUs: up to 4 expensive jobs
    at a time sharing the CPUs (``torch_threads`` each), plus one worker kept for cheap requests."""
    cpus = cpus or usable_cpus()
    heavy = min(cpus, 4)
    return heavy + 1, heavy, max(1, cpus // heavy)


def default_cache_bytes() -> int:
    """The embedding cache's default budget: 1/16 of the machine's memory, between 256 MB and 2 GB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = 8 << 30
    return int(min(2 << 30, max(256 << 20, total // 16)))


def footprint(obj: Any, depth: int = 2) -> int:
    """Bytes held by the tensors and arrays of ``obj``'s attributes (and theirs, ``depth`` levels down;
    lists/tuples included; modules, whose weights are shared, are skipped): a cached predictor's size."""
    import torch

    total = 0
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    while values:
        v = values.pop()
        if isinstance(v, torch.nn.Module) or isinstance(v, type):
            continue
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, np.ndarray):
            total += v.nbytes
        elif isinstance(v, (list, tuple)):
            values.extend(v)
        elif depth > 0 and hasattr(v, "__dict__"):
            total += footprint(v, depth - 1)
    return total


class ComputePool:
    """Model work on a few threads sized to the machine, cheap jobs first.

    ``workers`` threads take jobs; an *expensive* job (a new image's embedding, its first text request)
    may hold at most ``heavy_slots`` of them, so the others stay free for cheap jobs (a click or a phrase
    on an image already embedded) and those never wait behind another image's first pass. Callers block
    in :meth:`run` until their job is done. Threads start on first use and are daemons.
    """

    def __init__(self, workers: int, heavy_slots: int | None = None) -> None:
        if workers < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.heavy_slots = max(1, min(workers - 1 if workers > 1 else 1, heavy_slots or workers))
        self._cv = threading.Condition()
        self._jobs: tuple[deque, deque] = (deque(), deque())  # cheap, expensive
        self._heavy_running = 0
        self._threads: list[threading.Thread] = []

    def run(self, fn: Callable[[], Any], heavy: bool = False) -> Any:
        """``fn()`` on a worker thread; returns its result or raises its exception."""
        future: Future = Future()
        with self._cv:
            while len(self._threads) < self.workers:
                t = threading.Thread(target=self._loop, name=f"textsam-compute-{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)
            self._jobs[bool(heavy)].append((fn, future))
            self._cv.notify()
        return future.result()

    def _next(self) -> tuple[Callable[[], Any], Future, bool]:
        with self._cv:
            while True:
                if self._jobs[0]:
                    return (*self._jobs[0].popleft(), False)
                if self._jobs[1] and self._heavy_running < self.heavy_slots:
                    self._heavy_running += 1
                    return (*self._jobs[1].popleft(), True)
                self._cv.wait()

    def _loop(self) -> None:
        while True:
            fn, future, heavy = self._next()
            try:
                if future.set_running_or_notify_cancel():
                    future.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                future.set_exception(err)
            finally:
                if heavy:
                    with self._cv:
                        self._heavy_running -= 1
                        self._cv.notify_all()


@dataclass
class _Entry:
    """One cached image for one model: its predictor (``None`` until embedded) and what it has computed."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    predictor: Any = None
    text_ready: bool = False  # a phrase has been answered: per-image text state is computed
    nbytes: int = 0


class ModelHub:
    """Models loaded once and shared by every session, plus an LRU cache of embedded images.

    ``predictor_factory(model)`` makes a predictor (``set_image``/``predict``); entries are keyed by
    ``(model name, image hash)`` so an image is embedded once, whoever clicks on it. The cache is bounded
    by memory (``cache_bytes``: what the cached predictors hold; default :func:`default_cache_bytes`) and,
    optionally, by a count (``cache_size``). Requests on the same image take turns (its predictor keeps
    per-image state); requests on different images run in parallel on a :class:`ComputePool` of
    ``workers`` threads (default: :func:`serving_plan`).
    """

    def __init__(
        self, model_factory: Callable[[str], Any], predictor_factory: Callable[[Any], Any],
        cache_size: int | None = None, *, cache_bytes: int | None = None, workers: int | None = None,
    ) -> None:
        if cache_size is not None and cache_size < 1:
            raise InputError(f"cache_size must be >= 1, got {cache_size}")
        self._factory, self._predictor_factory, self.cache_size = model_factory, predictor_factory, cache_size
        self.cache_bytes = cache_bytes if cache_bytes is not None else default_cache_bytes()
        default_workers, heavy, _ = serving_plan()
        self.pool = ComputePool(workers or default_workers, heavy_slots=heavy)
        self._models: dict[str, Any] = {}
        self._load_lock, self._cache_lock = threading.Lock(), threading.Lock()
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def model(self, name: str) -> Any:
        """The loaded model ``name`` (loaded on first use); raises TextSamError when it cannot load."""
        with self._load_lock:
            if name not in self._models:
                self._models[name] = self._factory(name)
            return self._models[name]

    def notice(self, name: str) -> str:
        """A warning for the page when ``name`` runs on random weights, else ``""``."""
        if getattr(self.model(name), "pretrained", True) is False:
            return (f"**Note:** the weights of `{name}` are not available here, so it runs with *random "
                    "weights*: masks are not meaningful (and text prompts may be unavailable).")
        return ""

    def _entry(self, name: str, key: str) -> _Entry:
        with self._cache_lock:
            entry = self._cache.get((name, key))
            if entry is None:
                entry = self._cache[(name, key)] = _Entry()
            else:
                self._cache.move_to_end((name, key))
            return entry

    def _run(self, name: str, image: np.ndarray, key: str, kwargs: dict | None) -> Any:
        """Embed ``image`` when new, then ``predict(**kwargs)`` (nothing more when ``kwargs`` is None)."""
        model = self.model(name)
        entry = self._entry(name, key)
        text = None if kwargs is None else kwargs.get("text")
        first_text = text is not None and kwargs.get("instances", "one") == "one"

        def work() -> Any:
            if entry.predictor is None:
                pred = self._predictor_factory(model)
                pred.set_image(image)
                entry.predictor = pred
            if kwargs is None:
                return None
            out = entry.predictor.predict(**kwargs)
            entry.text_ready |= first_text
            return out

        with entry.lock:
            heavy = entry.predictor is None or (first_text and not entry.text_ready)
            try:
                return self.pool.run(work, heavy)
            finally:
                self._account(name, key, entry)

    def _account(self, name: str, key: str, entry: _Entry) -> None:
        """Update the entry's size and evict the least recently used images over the budget."""
        size = footprint(entry.predictor) if entry.predictor is not None else 0
        with self._cache_lock:
            entry.nbytes = size
            if entry.predictor is None and self._cache.get((name, key)) is entry:
                del self._cache[(name, key)]
            total = sum(e.nbytes for e in self._cache.values())
            while len(self._cache) > 1 and (total > self.cache_bytes or (
                    self.cache_size is not None and len(self._cache) > self.cache_size)):
                _, old = self._cache.popitem(last=False)
                total -= old.nbytes

    def embed(self, name: str, image: np.ndarray, key: str) -> None:
        """Make sure ``image`` is embedded for ``name`` (so later clicks only run the decoder)."""
        self._run(name, image, key, None)

    def predict(self, name: str, image: np.ndarray, key: str, **kwargs: Any) -> Any:
        """``predictor.predict(**kwargs)`` on ``image``, embedding it only when not cached."""
        return self._run(name, image, key, kwargs)

    def cached(self, name: str, key: str) -> bool:
        entry = self._cache.get((name, key))
        return entry is not None and entry.predictor is not None


# ------------------------------------------------------------------------------------------ uploads
def _payload_path(payload: Any) -> tuple[Path | None, str]:
    """(path, display name) of an upload: a Gradio FileData dict/object, a path, or neither."""
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    name = payload.get("orig_name") if isinstance(payload, dict) else getattr(payload, "orig_name", None)
    if isinstance(payload, (str, Path)):
        path = payload
    if path is None:
        return None, "image"
    return Path(path), str(name or Path(path).name)


def read_upload(payload: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """An upload as ``(H, W, 3)`` uint8 RGB plus its file name; InputError with a clear message otherwise.

    The pixel count is checked from the header, before decoding, so a huge image costs nothing.
    """
    from PIL import Image, UnidentifiedImageError

    from . import transforms

    if payload is None:
        raise InputError("No image: upload one (PNG, JPEG, WebP, BMP or TIFF) or pick an example.")
    if isinstance(payload, (np.ndarray, Image.Image)):
        return transforms.load_image(payload, max_pixels=max_pixels), "image"
    path, name = _payload_path(payload)
    if path is None or not path.exists():
        raise InputError("The upload did not arrive; please upload the image again.")
    if not path.is_file():  # reading a FIFO or a device would block
        raise InputError(f"{name} is not a regular file (a pipe or a device?): upload an image file.")
    if path.stat().st_size == 0:
        raise InputError(f"{name} is empty (0 bytes): the upload did not complete. Upload the image again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
    except Image.DecompressionBombError:
        raise InputError(f"{name} is far too large to open safely. Downscale it and upload it again.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(f"{name} is not an image this app can read. Upload a PNG, JPEG, WebP, BMP or "
                         "TIFF file.") from None
    if width * height > max_pixels:
        raise InputError(f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels; this app "
                         f"accepts at most {max_pixels / 1e6:.0f} MP. Downscale it (SAM works at 1024 px "
                         "on the long side anyway) and upload it again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return transforms.load_image(path, max_pixels=max_pixels), name
    except InputError as err:
        raise InputError(f"{name} could not be decoded (is the file complete?): "
                         f"{short_message(err).replace(str(path), name)}") from None


# ------------------------------------------------------------------------------------------ session
@dataclass
class Session:
    """One browser session's state (kept in ``gr.State``): its image, prompts and last result."""

    model: str
    image: np.ndarray | None = None
    key: str | None = None
    name: str = "image"
    points: list[tuple[float, float, int]] = field(default_factory=list)
    box: list[float] | None = None
    corner: tuple[float, float] | None = None  # first box corner, waiting for the second click
    history: list[tuple] = field(default_factory=list)
    out_dir: str | None = None
    runs: int = 0  # results shown so far (numbered in the status line)
    last: Outcome | None = None  # the latest result, until export() writes its downloads
    exported: int = 0  # the run whose downloads are on the page

    def snapshot(self) -> tuple:
        return (list(self.points), None if self.box is None else list(self.box), self.corner)

    def clear_prompts(self) -> None:
        self.points, self.box, self.corner, self.history, self.last = [], None, None, [], None


@dataclass
class Outcome:
    """The masks of one segmentation and the prompt that made them (not yet written to disk)."""

    results: list  # list[MaskResult], best first
    prompt: dict
    status: str = ""  # the status line that announced it


@dataclass
class View:
    """What a request changes at once: the click canvas and the status line (the masks, downloads and
    JSON follow ``Session.last`` in a second step, :func:`export`)."""

    canvas: np.ndarray | None = None
    status: str = ""
    timing_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Export:
    """The downloads of a result: ``(mask, "i: label score")`` pairs, file paths and the JSON doc."""

    masks: list[tuple[np.ndarray, str]]
    files: list[str]
    doc: dict


def display_factor(shape: tuple[int, ...], long_side: int = DISPLAY_LONG_SIDE) -> float:
    """Scale of the click canvas: large images shrink to ``long_side``; small ones grow 1-4x (the
    browser never upscales an image, and a 12 MP canvas would be slow to encode on every click)."""
    m = max(1, max(shape[:2]))
    return long_side / m if m > long_side else float(max(1, min(4, 480 // m)))


def to_image_xy(x: float, y: float, shape: tuple[int, ...]) -> tuple[float, float]:
    """A click on the canvas (display pixels) -> the pixel ``(x, y)`` of the original image."""
    f, (h, w) = display_factor(shape), shape[:2]
    if f >= 1:
        return float(min(w - 1, x // f)), float(min(h - 1, y // f))
    return (float(min(w - 1, max(0, round((x + 0.5) / f - 0.5)))),
            float(min(h - 1, max(0, round((y + 0.5) / f - 0.5)))))


def draw_canvas(
    image: np.ndarray, masks: np.ndarray | None = None, labels: list[str] | None = None,
    scores: list[float] | None = None, points: list | None = None, box: list[float] | None = None,
    corner: tuple[float, float] | None = None, factor: float = 1.0,
) -> np.ndarray:
    """The image with masks (tinted, "label score" tags), clicks, the prompt box and a pending corner,
    drawn at ``factor`` times the image size (coordinates are original pixels)."""
    from PIL import Image, ImageDraw

    from . import viz

    h, w = image.shape[:2]
    m = masks if masks is not None and len(masks) else np.zeros((0, h, w), dtype=bool)
    if factor != 1.0:
        dw, dh = max(1, round(w * factor)), max(1, round(h * factor))
        cols = np.minimum(((np.arange(dw) + 0.5) / factor).astype(int), w - 1)
        rows = np.minimum(((np.arange(dh) + 0.5) / factor).astype(int), h - 1)
        image = (image[rows][:, cols] if factor > 1 else
                 np.asarray(Image.fromarray(image).resize((dw, dh), Image.BILINEAR)))
        m = m[:, rows][:, :, cols]
        h, w = dh, dw
    pts = np.asarray([[(p[0] + 0.5) * factor - 0.5, (p[1] + 0.5) * factor - 0.5] for p in points]) if points else None
    pl = np.asarray([p[2] for p in points], int) if points else None
    out = viz.overlay(image, m, labels=labels if len(m) else None, scores=scores if len(m) else None,
                      points=pts, point_labels=pl)
    if box is None and corner is None:
        return out
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    line = max(1, round(max(h, w) / 300))
    if box is not None:
        b = [v * factor for v in box]
        draw.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], outline=_BOX_COLOUR, width=line)
    if corner is not None:
        r = max(3, round(max(h, w) / 120))
        x, y = ((v + 0.5) * factor - 0.5 for v in corner)
        draw.line([x - r, y, x + r, y], fill=_CORNER_COLOUR, width=line)
        draw.line([x, y - r, x, y + r], fill=_CORNER_COLOUR, width=line)
    return np.asarray(pil)


def _from_json(value: Any, what: str, form: str) -> Any:
    """``value``, or the JSON it holds when it is a string ("" = nothing)."""
    import json

    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.strip() else None
    except ValueError:
        raise InputError(f"{what} must be JSON like {form}; got {value[:80]!r}") from None


def _numbers(vals: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals)


def parse_points(points: Any) -> list[tuple[float, float, int]]:
    """``[[x, y], [x, y, label], ...]`` (label 1 = foreground, default; 0 = background)."""
    points = _from_json(points, "points", "[[x, y, label], ...]")
    if points is not None and not isinstance(points, (list, tuple)):
        raise InputError(f"points must be a list [[x, y, label], ...] in pixels; got {points!r}")
    out = []
    for p in points or []:
        vals = list(p) if isinstance(p, (list, tuple)) else []
        if len(vals) not in (2, 3) or not _numbers(vals) or (len(vals) == 3 and vals[2] not in (0, 1)):
            raise InputError(f"each point must be [x, y] or [x, y, label] with finite pixel numbers and label 0 "
                             f"or 1; got {p!r}")
        out.append((float(vals[0]), float(vals[1]), int(vals[2]) if len(vals) == 3 else 1))
    return out


def parse_box(box: Any) -> list[float] | None:
    """``[x0, y0, x1, y1]`` pixels (top-left, bottom-right); ``None`` / ``[]`` for no box.

    A box given as numbers must have x0 <= x1 and y0 <= y1, as everywhere in textsam (a box drawn by two
    clicks on the page is sorted by :func:`box_from_corners` instead).
    """
    box = _from_json(box, "box", "[x0, y0, x1, y1]")
    if box is None or (isinstance(box, (list, tuple)) and len(box) == 0):
        return None
    vals = list(box) if isinstance(box, (list, tuple)) else []
    if len(vals) != 4 or not _numbers(vals):
        raise InputError(f"box must be [x0, y0, x1, y1]: four finite numbers in pixels; got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in vals)
    if x0 > x1 or y0 > y1:
        raise InputError(f"box {[x0, y0, x1, y1]} has x0 > x1 or y0 > y1: give it as x0, y0, x1, y1 "
                         "(top-left, bottom-right)")
    return [x0, y0, x1, y1]


def box_from_corners(a: tuple[float, float], b: tuple[float, float]) -> list[float]:
    """The box spanned by two opposite corners clicked in any order."""
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])]


def _safe_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).stem)[:60]
    return stem or "image"


def segment(
    hub: ModelHub, session: Session, text: str | None, *, all_instances: bool = False, multimask: bool = False,
    display: bool = True,
) -> View:
    """Run the session's prompts (text, clicks, box) in one predict call and draw the canvas
    (at :func:`display_factor` scale when ``display``, else at the image's size).

    Returns the canvas at once; the result waits in ``session.last`` for :func:`export`.
    Raises InputError when there is nothing to segment (the caller shows it in the page).
    """
    from .prompts import check_points_and_box
    from .results import MaskResult

    t0 = time.perf_counter()
    if session.image is None or session.key is None:
        raise InputError("Upload an image (or pick an example) first.")
    phrase = (text or "").strip() or None
    if phrase is None and not session.points and session.box is None:
        raise InputError("Add a click, draw a box or type a text prompt, then press Segment.")
    coords = np.asarray([p[:2] for p in session.points], float) if session.points else None
    labels = np.asarray([p[2] for p in session.points], int) if session.points else None
    box = np.asarray(session.box, float) if session.box is not None else None
    notes = []
    if all_instances and phrase is None:
        notes.append("*All instances* needs a text prompt: segmented one object.")
    instances = "all" if all_instances and phrase else "one"
    if instances == "all" and (coords is not None or box is not None):
        notes.append("clicks and the box are not used in *all instances* mode.")
    one_click = coords is not None and len(coords) == 1 and box is None
    kwargs: dict[str, Any] = dict(point_coords=coords, point_labels=labels, box=box, instances=instances,
                                  multimask_output=multimask or (one_click and phrase is None))
    if instances == "all":
        kwargs.update(point_coords=None, point_labels=None, box=None, multimask_output=True)
    check_points_and_box(coords, labels, box, session.image.shape[:2])  # e.g. a point outside the image
    try:
        pred = hub.predict(session.model, session.image, session.key, text=phrase, **kwargs)
    except TextSamError as err:
        if phrase is None:
            raise
        if instances == "all" or (coords is None and box is None):
            raise InputError(f"Could not segment with the text prompt: {short_message(err)}") from None
        notes.append(f"the text prompt was ignored ({short_message(err, 200)})")
        phrase = None
        pred = hub.predict(session.model, session.image, session.key, text=None, **kwargs)
    t_pred = time.perf_counter()
    masks, scores = np.asarray(pred.masks), np.asarray(pred.scores, float)
    order = list(range(len(scores)))
    if phrase is None:
        order = sorted(order, key=lambda i: -scores[i])
    if not multimask and instances == "one":
        order = order[:1]
    label = phrase or "mask"
    results = [MaskResult(masks[i], float(scores[i]), label) for i in order]
    prompt = {"model": session.model, "text": phrase, "point_coords": [p[:2] for p in session.points],
              "point_labels": [p[2] for p in session.points], "box": session.box, "instances": instances,
              "multimask": bool(multimask)}
    canvas = draw_canvas(session.image, np.stack([r.mask for r in results]) if results else None,
                         [r.label for r in results], [r.score for r in results], session.points,
                         session.box, session.corner, display_factor(session.image.shape) if display else 1.0)
    t1 = time.perf_counter()
    session.runs += 1
    best = max((r.score for r in results), default=0.0)
    status = f"Result #{session.runs}: {len(results)} mask(s), best score {best:.2f} ({(t1 - t0) * 1e3:.0f} ms)."
    if notes:
        status += " Note: " + " ".join(notes)
    session.last = Outcome(results, prompt, status)
    return View(canvas, status, {"predict": (t_pred - t0) * 1e3, "total": (t1 - t0) * 1e3})


def result_doc(session: Session) -> dict | None:
    """The JSON of the latest result, built in memory (the ``segment`` API writes no files): the document
    :func:`export` writes, less the file names."""
    from . import __version__, rle

    if session.last is None or session.image is None:
        return None
    h, w = session.image.shape[:2]
    results = []
    for r in session.last.results:
        seg = rle.encode(r.mask)
        results.append({"label": r.label, "score": r.score, "box_xyxy": list(r.box or [0.0] * 4),
                         "bbox_xywh": rle.to_bbox(seg), "area": rle.area(seg), "segmentation": seg})
    return {"textsam": {"version": __version__}, "image": {"file": None, "height": h, "width": w},
            "prompt": session.last.prompt, "results": results}


def export(session: Session, workdir: str | Path) -> Export | None:
    """Write the latest result's mask PNGs, overlay and JSON (COCO RLE) into the session's folder.

    ``None`` when there is no result. Files are overwritten by the next result of the session.
    """
    from .results import write_results

    if session.last is None or session.image is None:
        return None
    if session.out_dir is None:
        session.out_dir = str(Path(workdir) / uuid.uuid4().hex)
    stem = _safe_stem(session.name)
    results = session.last.results
    doc = write_results(Path(session.out_dir), stem, session.image, results, prompt=session.last.prompt)
    session.exported = session.runs
    files = [str(Path(session.out_dir) / r["mask_file"]) for r in doc["results"]]
    files.append(str(Path(session.out_dir) / f"{stem}.json"))
    labels = [f"{i + 1}: {r.label} {r.score:.2f}" for i, r in enumerate(results)]
    return Export([(r.mask, lab) for r, lab in zip(results, labels)], files, doc)
