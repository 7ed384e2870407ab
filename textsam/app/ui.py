"""The app's page (Gradio) and its server: ``build_demo(...) -> gr.Blocks``, ``launch``, ``run`` (``textsam
app``) and ``main`` (``python app/app.py``).

The page wires :class:`~textsam.app.handlers.WebApp`'s handlers to Gradio components; each session's image
and prompts live in its own ``gr.State``. Gradio is imported when a page is built (``pip install
'textsam[app]'``). The server listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from textsam.errors import InputError, TextSamError

from ..allocator import keep_freed_memory
from . import DEMO_MODEL, add_arguments
from .canvas import to_image_xy
from .handlers import MODE_POSITIVE, MODES, Session, View, WebApp
from .serving import (
    check_address,
    fast_model_factory,
    fast_predictor,
    port_in_use,
    serving_plan,
    short_message,
    weights_model_factory,
)
from .uploads import DEFAULT_MAX_PIXELS

__all__ = ["build_demo", "launch", "run", "main", "add_arguments", "write_examples"]
logger = logging.getLogger(__name__)
MAX_FILE_SIZE = "25mb"


def write_examples(folder: str | Path) -> list[str]:
    """Small synthetic example images (written once into ``folder``); returns their paths."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = {
        "shapes.png": ((240, 180), (200, 200, 200), [("ellipse", (30, 40, 100, 110), (220, 40, 40)),
                                                     ("rectangle", (140, 60, 210, 130), (40, 80, 220))]),
        "cells.png": ((200, 160), (30, 30, 40), [("ellipse", (20, 20, 60, 60), (240, 220, 60)),
                                                 ("ellipse", (110, 30, 150, 70), (240, 220, 60)),
                                                 ("ellipse", (60, 95, 100, 135), (240, 220, 60)),
                                                 ("rectangle", (150, 100, 185, 140), (60, 200, 90))]),
        "triangle.png": ((160, 160), (235, 225, 200), [("polygon", (80, 20, 140, 135, 20, 135), (30, 150, 60))]),
    }
    paths = []
    for name, (size, bg, shapes) in specs.items():
        path = folder / name
        if not path.is_file():
            im = Image.new("RGB", size, bg)
            draw = ImageDraw.Draw(im)
            for kind, xy, colour in shapes:
                getattr(draw, kind)(list(xy), fill=colour)
            im.save(path, optimize=True)
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------------------------------ gradio
def _gradio() -> Any:
    try:
        import gradio as gr
    except ImportError as err:
        raise InputError("the web app needs Gradio: pip install 'textsam[app]'") from err
    return gr


def build_demo(
    model_factory: Callable[[str], Any] | None = None, *, predictor_factory: Callable[[Any], Any] | None = None,
    default_model: str = DEMO_MODEL, models: Sequence[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_size: int | None = None, cache_bytes: int | None = None, workers: int | None = None,
    concurrency_limit: int = 32, examples_dir: str | Path | None = None,
) -> Any:
    """The app as a queued ``gr.Blocks`` (its :class:`WebApp` is ``demo.textsam``). See :class:`WebApp`.

    ``concurrency_limit`` requests of each kind are let through Gradio's queue at once (waiting, mostly:
    the models run on the app's worker threads, cheap requests first), 64 more may wait in it.
    """
    gr = _gradio()
    app = WebApp(model_factory, predictor_factory, default_model=default_model, max_pixels=max_pixels,
                 cache_size=cache_size, cache_bytes=cache_bytes, workers=workers, models=models)
    examples = write_examples(examples_dir if examples_dir is not None else app.workdir / "examples")

    def one_at_a_time(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        """``fn(session, ...)`` holding the session's lock: one session's requests run one at a time, so a
        request's export step (the second step of every request) and the next click cannot interleave, whose
        outputs could otherwise reach the page out of order (the next result's status over the earlier
        step's "Downloads ready"). Other sessions are not held up."""
        @functools.wraps(fn)  # the signature too: gradio reads the event-data parameter from it
        def run(s: Session, *args: Any) -> tuple:
            with s.lock():
                return fn(s, *args)
        return run

    def outputs(s: Session, v: View) -> tuple:
        return s, v.canvas, v.status  # the canvas is at display_factor scale; on_select maps clicks back

    def guarded(fn: Callable[..., View]) -> Callable[..., tuple]:
        def handler(s: Session, *args: Any) -> tuple:
            try:
                return outputs(s, fn(s, *args))
            except Exception as err:  # noqa: BLE001 - the page shows it; the app keeps serving
                logger.exception("request failed")
                return s, gr.skip(), f"**Unexpected error** ({type(err).__name__}): {short_message(err)}"
        return handler

    def on_export(s: Session) -> tuple:
        """Second step of every request: the masks, downloads and JSON follow ``s.last``."""
        if s.last is None:
            return s, None, None, None, gr.skip()
        if s.exported == s.runs:
            return s, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            e = app.export(s)
        except Exception as err:  # noqa: BLE001
            logger.exception("export failed")
            return s, None, None, None, f"**Could not write the downloads:** {short_message(err)}"
        assert e is not None
        summary = {"image": e.doc["image"], "prompt": e.doc["prompt"],
                   "results": [{k: r[k] for k in ("label", "score", "box_xyxy", "area")} for r in e.doc["results"]]}
        return s, (s.image, e.masks), e.files, summary, f"{s.last.status} Downloads ready."

    def on_select(s: Session, mode: str, text: str, all_inst: bool, multi: bool, negative: str,
                  evt: gr.SelectData) -> tuple:
        x, y = to_image_xy(*evt.index[:2], s.image.shape) if s.image is not None else (0.0, 0.0)
        return guarded(app.click)(s, x, y, mode, text, all_inst, multi, negative)

    on_select.__annotations__["evt"] = gr.SelectData  # a real class: gradio finds the event-data parameter

    def on_model(s: Session, name: str) -> tuple:
        try:
            view, shown = app.select_model(s, name)
        except Exception as err:  # noqa: BLE001
            logger.exception("model switch failed")
            return s, gr.skip(), f"**Unexpected error:** {short_message(err)}", s.model
        return (*outputs(s, view), shown)

    def on_api(image: Any, text: str | None, points: Any, box: Any, all_instances: bool,
               negative: str | None = None) -> tuple:
        try:
            return app.api_segment(image, text, points, box, all_instances, negative=negative)
        except TextSamError as err:
            logger.info("segment API: %s", short_message(err, 200))  # the user's mistake: no traceback
            raise gr.Error(short_message(err, 600), print_exception=False) from None

    with gr.Blocks(title="textsam", delete_cache=(1800, 3600)) as demo:
        state = gr.State(app.new_session(), time_to_live=3 * 3600,
                         delete_callback=lambda s: shutil.rmtree(s.out_dir or "", ignore_errors=True))
        gr.Markdown("## textsam: segment what you name or click\nUpload an image, then click on an object, "
                    "draw a box (two clicks) or type a phrase. Each click updates the mask.")
        gr.Markdown(app.notice, elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                image_in = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                    height=240, elem_id="upload")
                gr.Examples(examples=[[p] for p in examples], inputs=[image_in], label="Examples")
                model_dd = gr.Dropdown(app.models, value=default_model, label="Model", elem_id="model")
            with gr.Column(scale=2):
                canvas = gr.Image(label="Click here to add prompts", interactive=False, format="png",
                                  elem_id="canvas", height=420)
                mode = gr.Radio(MODES, value=MODE_POSITIVE, label="A click adds", elem_id="mode")
                with gr.Row():
                    text = gr.Textbox(label="Text prompt", placeholder="e.g. red circle (Enter to segment)",
                                      elem_id="text", scale=3)
                    negative = gr.Textbox(label="Not this (optional)", placeholder="e.g. shadow",
                                          elem_id="negative", scale=2)
                with gr.Row():
                    all_inst = gr.Checkbox(label="All instances (needs text)", elem_id="all-instances")
                    multi = gr.Checkbox(label="Multimask (3 candidates)", elem_id="multimask")
                with gr.Row():
                    seg_btn = gr.Button("Segment", variant="primary", elem_id="segment")
                    undo_btn = gr.Button("Undo", elem_id="undo")
                    clear_btn = gr.Button("Clear", elem_id="clear")
                status = gr.Markdown(elem_id="status")
        with gr.Row():
            result = gr.AnnotatedImage(label="Masks and scores", elem_id="result", height=320)
            with gr.Column():
                files = gr.File(label="Downloads: mask PNGs and JSON (COCO RLE)", file_count="multiple",
                                interactive=False, elem_id="downloads")
                summary = gr.JSON(label="Result", elem_id="summary")
        with gr.Row(visible=False):  # the named API: gradio_client's predict(..., api_name="/segment")
            api_image = gr.Image(type="filepath", image_mode=None, label="image")
            api_text = gr.Textbox(label="text")
            api_points = gr.JSON(label="points [[x, y, label], ...]")
            api_box = gr.JSON(label="box [x0, y0, x1, y1]")
            api_all = gr.Checkbox(label="all_instances")
            api_negative = gr.Textbox(label="negative_text")
            api_overlay = gr.Image(format="png", label="overlay")
            api_json = gr.JSON(label="result")
            api_btn = gr.Button("segment")

        outs, export_outs = [state, canvas, status], [state, result, files, summary, status]
        ui = dict(api_visibility="private")
        options = [text, all_inst, multi, negative]
        for event, fn, inputs, extra in [
            (image_in.change, guarded(app.upload), [state, image_in], dict(preprocess=False)),
            (canvas.select, on_select, [state, mode, *options], {}),
            (seg_btn.click, guarded(app.run), [state, *options], {}),
            (text.submit, guarded(app.run), [state, *options], {}),
            (negative.submit, guarded(app.run), [state, *options], {}),
            (undo_btn.click, guarded(app.undo), [state, *options], {}),
            (clear_btn.click, guarded(app.clear), [state], {}),
            (model_dd.change, on_model, [state, model_dd], {"outputs": [*outs, model_dd]}),
        ]:
            extra.setdefault("outputs", outs)
            event(one_at_a_time(fn), inputs, **extra, **ui).then(
                one_at_a_time(on_export), [state], export_outs, **ui)
        api_btn.click(on_api, [api_image, api_text, api_points, api_box, api_all, api_negative],
                      [api_overlay, api_json],
                      api_name="segment", preprocess=False)
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=64)
    demo.textsam = app
    return demo


def launch(demo: Any, *, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           max_file_size: str | int = MAX_FILE_SIZE, **kwargs: Any) -> Any:
    """``demo.launch`` with the app's safe defaults (localhost, upload size limit, no share link).

    Raises InputError (saying to pass ``--port``/``--host``) when the address cannot be listened on.
    """
    if port is not None:
        check_address(host, port)
    try:
        return demo.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                           allowed_paths=kwargs.pop("allowed_paths", None), **kwargs)
    except OSError as err:
        if "empty port" not in str(err):
            raise
        raise InputError(port_in_use(host, port)) from None


def _sigterm_stops_server() -> Callable[[], None]:
    """Make SIGTERM stop the server the way Ctrl-C does (Gradio closes it, ``run`` cleans up); returns
    the undo. Only the main thread may set signal handlers; elsewhere nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, examples_dir: str | Path | None = None) -> int:
    """Serve the app until Ctrl-C or SIGTERM, then remove its temporary folder (``textsam app``).

    Sizes the work to the machine (:func:`~textsam.app.serving.serving_plan`): a few model threads, each
    running torch on its share of the CPUs.
    """
    check_address(args.host, args.port)  # before loading anything
    import torch

    workers, heavy, threads = serving_plan()
    torch.set_num_threads(threads)
    logger.info("serving with %d model threads (%d for new images), %d torch thread(s) each", workers, heavy,
                threads)
    fast = getattr(args, "fast", False)
    factory = fast_model_factory if fast else None
    text_head = _text_head(args)
    if any(x is not None for x in (getattr(args, "checkpoint", None), getattr(args, "clip", None), text_head)):
        factory = weights_model_factory(args.model, checkpoint=args.checkpoint, clip=args.clip, text_head=text_head,
                                        fast=fast)  # checks the files before the server starts
    restore = _sigterm_stops_server()
    demo = None
    try:
        demo = build_demo(default_model=args.model, examples_dir=examples_dir, workers=workers,
                          model_factory=factory, predictor_factory=fast_predictor if fast else None)
        allowed = [str(examples_dir)] if examples_dir is not None else None
        launch(demo, host=args.host, port=args.port, share=args.share, allowed_paths=allowed)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before Gradio's own wait loop took over
        logger.info("stopped")
    finally:
        restore()
        if demo is not None:
            demo.close()
            demo.textsam.close()
    return 0


def _text_head(args: argparse.Namespace) -> Path | bool | None:
    """``create_model``'s ``text_head`` from ``--text-head`` / ``--no-text-head`` (not both)."""
    if getattr(args, "no_text_head", False):
        if getattr(args, "text_head", None) is not None:
            raise InputError("give --text-head FILE or --no-text-head, not both")
        return False
    return getattr(args, "text_head", None)


def main(argv: list[str] | None = None, examples_dir: str | Path | None = None) -> int:
    """``python -m textsam.app.ui [--model NAME] [--host H] [--port P] [--share]`` (and ``python app/app.py``)."""
    import sys

    parser = argparse.ArgumentParser(description="textsam web app")
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # the app's own process: each image reuses the last one's pages (textsam/allocator.py)
    try:
        return run(parser.parse_args(argv), examples_dir)
    except TextSamError as err:
        print(f"textsam: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
