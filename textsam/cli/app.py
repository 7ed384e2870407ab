"""``textsam app``: serve the web app (:mod:`textsam.app`) on this machine."""

from __future__ import annotations

import argparse

from textsam.app import add_arguments

from .common import Subparsers, add_command


def add_parser(subparsers: Subparsers) -> None:
    """``textsam app [--model NAME] [--host 127.0.0.1] [--port 7860] [--share]``."""
    p = add_command(
        subparsers, "app", "start the web app (Gradio) on this machine",
        description="Start the textsam web app. It listens on 127.0.0.1 only unless --host says otherwise; "
        "--share also opens a public gradio.live link. Needs the app extra: pip install 'textsam[app]'.",
    )
    add_arguments(p)
    p.set_defaults(handler=run_app)


def run_app(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM (:func:`textsam.app.ui.run`)."""
    from textsam.app import ui

    return ui.run(args)
