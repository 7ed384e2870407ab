"""The app's request handlers, without Gradio: :class:`WebApp` (one method per page action and the
stateless ``segment`` API), each browser session's :class:`Session`, and the segment/export steps.

A :class:`Session` lives in each browser session's ``gr.State``; the models and the cache of embedded images
(:class:`~textsam.app.serving.ModelHub`) are shared by every session. Results are shown in the predictor's
order (for text its ranking, for clicks and boxes SAM's mask order); one mask is the predictor's first.

Frames: clicks are ``(x, y)`` pixels of the original image, boxes ``x0, y0, x1, y1`` pixels.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from textsam.errors import InputError, TextSamError

from . import DEMO_MODEL
from .canvas import display_factor, draw_canvas
from .serving import ModelHub, default_model_factory, image_key, short_message
from .uploads import DEFAULT_MAX_PIXELS, box_from_corners, parse_box, parse_points, read_upload

logger = logging.getLogger(__name__)

MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX = "Positive click", "Negative click", "Box (2 clicks)"
MODES = [MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX]
_NEW_LOCK = threading.Lock()


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

    def lock(self) -> threading.RLock:
        """The session's lock, which the page's handlers hold so that one session's requests run one at a time
        (``build_demo``). Made on first use and not a field: ``gr.State`` deep-copies the initial session for
        every browser session and reads its fields as a dict, and a lock can be neither."""
        with _NEW_LOCK:
            return self.__dict__.setdefault("_lock", threading.RLock())

    def __deepcopy__(self, memo: dict) -> Session:
        """A copy without the lock (the copy makes its own)."""
        return Session(**{f.name: copy.deepcopy(getattr(self, f.name), memo) for f in fields(self)})

    def snapshot(self) -> tuple:
        return (list(self.points), None if self.box is None else list(self.box), self.corner)

    def clear_prompts(self) -> None:
        self.points, self.box, self.corner, self.history, self.last = [], None, None, [], None


@dataclass
class Outcome:
    """The masks of one segmentation and the prompt that made them (not yet written to disk)."""

    results: list  # list[MaskResult], in the predictor's order
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


def _safe_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).stem)[:60]
    return stem or "image"


def segment(
    hub: ModelHub, session: Session, text: str | None, *, all_instances: bool = False, multimask: bool = False,
    negative: str | None = None, display: bool = True,
) -> View:
    """Run the session's prompts (text, clicks, box) in one predict call and draw the canvas
    (at :func:`display_factor` scale when ``display``, else at the image's size). ``negative``: what not to
    segment ("shadow"), the predictor's ``negative_text``; it refines a text prompt and is ignored without one
    (the status says so).

    The masks keep the predictor's order; without ``multimask`` (and outside *all instances*) the
    predictor is asked for one mask and that one is shown.

    Returns the canvas at once; the result waits in ``session.last`` for :func:`export`.
    Raises InputError when there is nothing to segment (the caller shows it in the page).
    """
    from textsam.prompts import check_points_and_box
    from textsam.results import MaskResult

    t0 = time.perf_counter()
    if session.image is None or session.key is None:
        raise InputError("Upload an image (or pick an example) first.")
    phrase = (text or "").strip() or None
    not_this = (negative or "").strip() or None
    if phrase is None and not session.points and session.box is None:
        raise InputError("Add a click, draw a box or type a text prompt, then press Segment.")
    coords = np.asarray([p[:2] for p in session.points], float) if session.points else None
    labels = np.asarray([p[2] for p in session.points], int) if session.points else None
    box = np.asarray(session.box, float) if session.box is not None else None
    notes = []
    if all_instances and phrase is None:
        notes.append("*All instances* needs a text prompt: segmented one object.")
    if not_this is not None and phrase is None:
        notes.append("*Not this* refines a text prompt: ignored without one.")
        not_this = None
    instances = "all" if all_instances and phrase else "one"
    if instances == "all" and (coords is not None or box is not None):
        notes.append("clicks and the box are not used in *all instances* mode.")
    kwargs: dict[str, Any] = dict(point_coords=coords, point_labels=labels, box=box, instances=instances,
                                  multimask_output=multimask)
    if instances == "all":
        kwargs.update(point_coords=None, point_labels=None, box=None, multimask_output=True)
    check_points_and_box(coords, labels, box, session.image.shape[:2])  # e.g. a point outside the image
    if not_this is not None:
        kwargs["negative_text"] = not_this
    try:
        pred = hub.predict(session.model, session.image, session.key, text=phrase, **kwargs)
    except TextSamError as err:
        if phrase is None:
            raise
        if instances == "all" or (coords is None and box is None):
            raise InputError(f"Could not segment with the text prompt: {short_message(err)}") from None
        notes.append(f"the text prompt was ignored ({short_message(err, 200)})")
        phrase = not_this = None
        kwargs.pop("negative_text", None)
        pred = hub.predict(session.model, session.image, session.key, text=None, **kwargs)
    t_pred = time.perf_counter()
    masks, scores = np.asarray(pred.masks), np.asarray(pred.scores, float)
    count = len(scores) if multimask or instances == "all" else min(1, len(scores))  # the predictor's order
    label = phrase or "mask"
    results = [MaskResult(masks[i], float(scores[i]), label) for i in range(count)]
    presence = getattr(pred, "presence", None)
    found = bool((getattr(pred, "info", None) or {}).get("found", True))
    prompt = {"model": session.model, "text": phrase, "point_coords": [p[:2] for p in session.points],
              "point_labels": [p[2] for p in session.points], "box": session.box, "instances": instances,
              "multimask": bool(multimask)}
    if not_this is not None:
        prompt["negative_text"] = not_this
    if phrase is not None and presence is not None:
        prompt.update(presence=round(float(presence), 4), found=found)
    query = (getattr(pred, "info", None) or {}).get("query")
    if phrase is not None and isinstance(query, dict):  # the engine chose: how it read the phrase (as the CLI's JSON)
        prompt["query"] = query
    canvas = draw_canvas(session.image, np.stack([r.mask for r in results]) if results else None,
                         [r.label for r in results], [r.score for r in results], session.points,
                         session.box, session.corner, display_factor(session.image.shape) if display else 1.0)
    t1 = time.perf_counter()
    session.runs += 1
    best = max((r.score for r in results), default=0.0)
    status = f"Result #{session.runs}: {len(results)} mask(s), best score {best:.2f} ({(t1 - t0) * 1e3:.0f} ms)."
    if phrase is not None and presence is not None and not found:
        status = (f"Result #{session.runs}: no '{phrase}' found in this image (presence {presence:.2f})"
                  + (f"; the closest match is shown, score {best:.2f}." if results else ".")
                  + f" ({(t1 - t0) * 1e3:.0f} ms)")
    if "query" in prompt:  # a wrong pick can be traced to the words
        from textsam.text.spatial import parse

        status += f" Read as: {parse(phrase).describe()}."
    if notes:
        status += " Note: " + " ".join(notes)
    session.last = Outcome(results, prompt, status)
    return View(canvas, status, {"predict": (t_pred - t0) * 1e3, "total": (t1 - t0) * 1e3})


def result_doc(session: Session) -> dict | None:
    """The JSON of the latest result, built in memory (the ``segment`` API writes no files): the document
    :func:`export` writes, less the file names."""
    from textsam import __version__, rle

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
    from textsam.results import write_results

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


def _error(err: BaseException) -> str:
    return f"**⚠️ {short_message(err, 600)}**"


class WebApp:
    """Request handlers of the app. Each takes the session's :class:`Session` and returns a :class:`View`.

    Args:
        model_factory: ``name -> model`` (default: ``create_model``, with random weights for the demo
            model when its file is missing). Called once per model name; the model is shared.
        predictor_factory: ``model -> predictor`` with ``set_image`` / ``predict`` (default
            :class:`~textsam.predictor.TextSamPredictor`).
        default_model: the model new sessions use.
        max_pixels: larger uploads are refused with a message.
        cache_size, cache_bytes: the embedded images kept (LRU over all sessions, keyed by model and image
            hash): at most ``cache_size`` images (default: no count limit) holding at most ``cache_bytes``
            (default: 1/16 of the machine's memory, 256 MB to 2 GB).
        workers: threads that run the models (default: sized to the machine, see ``serving_plan``).
    """

    def __init__(
        self, model_factory: Callable[[str], Any] | None = None, predictor_factory: Callable[[Any], Any] | None = None,
        *, default_model: str = DEMO_MODEL, max_pixels: int = DEFAULT_MAX_PIXELS, cache_size: int | None = None,
        cache_bytes: int | None = None, workers: int | None = None, models: Sequence[str] | None = None,
    ) -> None:
        import textsam

        if predictor_factory is None:
            predictor_factory = textsam.TextSamPredictor
        self.hub = ModelHub(model_factory or default_model_factory, predictor_factory, cache_size,
                            cache_bytes=cache_bytes, workers=workers)
        self.default_model, self.max_pixels = default_model, max_pixels
        self.models = list(models) if models is not None else textsam.list_models()
        if default_model not in self.models:
            self.models.insert(0, default_model)
        self.workdir = Path(tempfile.mkdtemp(prefix="textsam_app_"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.workdir, True)
        try:
            self.notice = self.hub.notice(default_model)
        except TextSamError as err:
            self.notice = f"**Could not load `{default_model}`:** {short_message(err)} Pick another model."

    def new_session(self) -> Session:
        return Session(model=self.default_model)

    def close(self) -> None:
        """Remove the app's temporary folder (downloads, examples); also done at interpreter exit."""
        self._cleanup()

    def _plain(self, s: Session, status: str) -> View:
        if s.image is None:
            return View(None, status=status)
        canvas = draw_canvas(s.image, points=s.points, box=s.box, corner=s.corner,
                             factor=display_factor(s.image.shape))
        return View(canvas, status=status)

    # ------------------------------------------------------------------------------------ handlers
    def upload(self, s: Session, payload: Any) -> View:
        """A new image (``None`` when the upload was cleared): decode, check, embed once."""
        s.clear_prompts()
        s.image = s.key = None
        if payload is None:
            return View(status="")
        try:
            s.image, s.name = read_upload(payload, self.max_pixels)
        except InputError as err:
            return View(status=_error(err))
        s.key = image_key(s.image)
        try:
            self.hub.embed(s.model, s.image, s.key)
        except TextSamError as err:
            return self._plain(s, _error(err))
        h, w = s.image.shape[:2]
        return self._plain(s, f"Loaded {s.name} ({w}x{h}). Click on an object, draw a box or type a phrase.")

    def run(self, s: Session, text: str | None, all_instances: bool = False, multimask: bool = False,
            negative: str | None = None) -> View:
        """Segment with everything the session has (the Segment button); :meth:`export` writes downloads.
        ``negative``: the *Not this* phrase (see :func:`segment`)."""
        try:
            return segment(self.hub, s, text, all_instances=all_instances, multimask=multimask, negative=negative)
        except TextSamError as err:
            s.last = None
            return self._plain(s, _error(err))

    def export(self, s: Session) -> Export | None:
        """Mask PNGs + JSON of the session's latest result (``None``: no result to show)."""
        return export(s, self.workdir)

    def click(self, s: Session, x: float, y: float, mode: str, text: str | None = None,
              all_instances: bool = False, multimask: bool = False, negative: str | None = None) -> View:
        """A click on the image: a positive/negative point, or a box corner; segments at once."""
        if s.image is None:
            return View(status=_error(InputError("Upload an image (or pick an example) first.")))
        if mode not in MODES:
            return self._plain(s, _error(InputError(f"unknown prompt mode {mode!r}")))
        s.history.append(s.snapshot())
        if mode == MODE_BOX:
            if s.corner is None:
                s.corner = (float(x), float(y))
                return self._plain(s, "Box: now click the opposite corner.")
            corner, s.corner = s.corner, None
            box = box_from_corners(corner, (float(x), float(y)))  # any two opposite corners
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                s.history.pop()
                return self._plain(s, _error(InputError("That box is too small: click two opposite corners.")))
            s.box = box
        else:
            s.points.append((float(x), float(y), 1 if mode == MODE_POSITIVE else 0))
        return self.run(s, text, all_instances, multimask, negative)

    def undo(self, s: Session, text: str | None = None, all_instances: bool = False, multimask: bool = False,
             negative: str | None = None) -> View:
        if s.image is None or not s.history:
            return self._plain(s, "Nothing to undo.")
        s.points, s.box, s.corner = s.history.pop()
        if s.corner is None and (s.points or s.box is not None or (text or "").strip()):
            return self.run(s, text, all_instances, multimask, negative)
        s.last = None
        return self._plain(s, "Undone: click the opposite corner of the box." if s.corner else "Undone.")

    def clear(self, s: Session) -> View:
        s.clear_prompts()
        return self._plain(s, "Cleared clicks, box and masks." if s.image is not None else "")

    def select_model(self, s: Session, name: str) -> tuple[View, str]:
        """Switch the session's model; on failure keep the current one and say why."""
        if name == s.model:
            return self._plain(s, ""), name
        try:
            notice = self.hub.notice(name)
        except TextSamError as err:
            msg = f"**Could not load `{name}`:** {short_message(err)} Still using `{s.model}`."
            return self._plain(s, msg), s.model
        s.model = name
        s.clear_prompts()
        if s.image is not None and s.key is not None:
            try:
                self.hub.embed(name, s.image, s.key)
            except TextSamError as err:
                return self._plain(s, _error(err)), name
        return self._plain(s, f"Using `{name}`. {notice}".strip()), name

    def api_segment(self, image: Any, text: str | None, points: Any = None, box: Any = None,
                    all_instances: bool = False, multimask: bool = False,
                    negative: str | None = None) -> tuple[np.ndarray, dict]:
        """Stateless segmentation for the ``segment`` API: returns ``(overlay, result JSON)``.

        ``points``: ``[[x, y, label], ...]`` pixels (label 1 = foreground, 0 = background);
        ``box``: ``[x0, y0, x1, y1]`` pixels (top-left, bottom-right) or ``None``; ``negative``: what not to
        segment (``negative_text``, with a text prompt). Raises InputError with a
        clear message (a bad upload, a point outside the image, an inverted or empty box, ...).
        """
        s = self.new_session()
        s.image, s.name = read_upload(image, self.max_pixels)
        s.key = image_key(s.image)
        s.points, s.box = parse_points(points), parse_box(box)
        if s.box is not None and (s.box[2] - s.box[0] < 1 or s.box[3] - s.box[1] < 1):
            raise InputError(f"box {s.box} is empty: give x1 > x0 and y1 > y0 (at least a pixel apart)")
        view = segment(self.hub, s, text, all_instances=bool(all_instances), multimask=bool(multimask),
                       negative=negative, display=False)
        t0 = time.perf_counter()
        doc = result_doc(s) or {}
        timing = dict(view.timing_ms, export=(time.perf_counter() - t0) * 1e3)
        timing["total"] = timing["total"] + timing["export"]
        return view.canvas, dict(doc, timing_ms={k: round(v, 2) for k, v in timing.items()})

