"""The textsam web app (Gradio): upload, click / box / phrase, see the masks, download PNGs and JSON.

:mod:`.ui` builds the page (``gr.Blocks``) and serves it (``textsam app``, ``python app/app.py``);
:mod:`.handlers` holds the request handlers (:class:`~.handlers.WebApp`, plain Python, testable without
a browser) and each session's state; :mod:`.serving` the machinery they share: the models, the cache of
embedded images, the compute threads sized to the machine. :mod:`.uploads` reads uploads and the API's
points and boxes, :mod:`.canvas` draws the click canvas. Gradio is imported only when a page is built.

This module holds only what the command line needs without loading anything: the app's options.
"""

from __future__ import annotations

import argparse

DEMO_MODEL = "shapes_tiny"

__all__ = ["DEMO_MODEL", "add_arguments", "add_weights_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's options: ``--model``, ``--host``, ``--port``, ``--share``, ``--static``, ``--fast`` (``textsam app`` and
    ``python app/app.py``)."""
    from textsam.cli.common import FAST_HELP  # here: textsam.cli imports this module

    parser.add_argument("--model", default=DEMO_MODEL, metavar="NAME",
                        help=f"model selected at start (default: {DEMO_MODEL}, the bundled offline demo model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--static", metavar="DIR", default=None,
                        help="serve a page exported with `textsam export --web DIR` instead (it runs in the browser)")
    parser.add_argument("--fast", action="store_true",
                        help=f"the CPU fast path for every model: {FAST_HELP}")
    add_weights_arguments(parser)


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--clip``, ``--text-head``, ``--no-text-head``: other weights for the model ``--model``
    names (a text head you trained, SAM or CLIP files on a machine without network); the other models of the
    page keep their published weights."""
    from textsam.cli.common import add_weights_options

    add_weights_options(parser.add_argument_group(
        "weights of the --model model (the page's other models keep the published ones)"))
