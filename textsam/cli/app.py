"""``textsam app``: serve the web app (:mod:`textsam.app`) on this machine."""

from __future__ import annotations

import argparse

from textsam.app import add_arguments

from .common import Subparsers, add_command


def add_parser(subparsers: Subparsers) -> None:
    """``textsam app [--model NAME] [--host 127.0.0.1] [--port 7860] [--share] [--static DIR]``."""
    p = add_command(
        subparsers, "app", "start the web app (Gradio) on this machine",
        description="Start the textsam web app. It listens on 127.0.0.1 only unless --host says otherwise; "
        "--share also opens a public gradio.live link. Needs the app extra: pip install 'textsam[app]'. "
        "--static DIR serves a page written by `textsam export --web DIR` (it runs in the browser; no extra needed).",
    )
    add_arguments(p)
    p.set_defaults(handler=run_app)


def run_app(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM (:func:`textsam.app.ui.run`; with ``--static DIR``, the exported page's
    files, :mod:`textsam.app.static`)."""
    if args.static:
        from textsam.app.static import serve_until_stopped, static_server

        server = static_server(args.static, args.host, args.port)
        print(f"serving {args.static} at http://{args.host}:{server.server_port}/ (Ctrl-C stops)", flush=True)
        serve_until_stopped(server)
        return 0
    from textsam.app import ui

    return ui.run(args)
