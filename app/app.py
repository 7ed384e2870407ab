"""The textsam web app: ``python app/app.py [--model NAME] [--host 127.0.0.1] [--port 7860] [--share]``.

A thin launcher of :mod:`textsam.app` (which ``textsam app`` runs from an installed package); this copy
serves the example images shipped in ``app/examples``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from textsam.app.handlers import WebApp
from textsam.app.ui import build_demo as _build_demo
from textsam.app.ui import launch
from textsam.app.ui import main as _main

EXAMPLES = Path(__file__).resolve().parent / "examples"

__all__ = ["EXAMPLES", "WebApp", "build_demo", "launch", "main"]


def build_demo(*args: Any, **kwargs: Any) -> Any:
    """:func:`textsam.app.ui.build_demo` with this folder's example images."""
    kwargs.setdefault("examples_dir", EXAMPLES)
    return _build_demo(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Serve the app with this folder's example images (see :func:`textsam.app.ui.main`)."""
    return _main(argv, examples_dir=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main())
