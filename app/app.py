"""The textsam web app: ``python app/app.py [--model NAME] [--host 127.0.0.1] [--port 7860] [--share]``.

A thin wrapper around :mod:`textsam.webapp` (so ``textsam app`` works from an installed package);
this copy serves the example images shipped in ``app/examples``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from textsam.webapp import WebApp, launch
from textsam.webapp import build_demo as _build_demo
from textsam.webapp import main as _main

EXAMPLES = Path(__file__).resolve().parent / "examples"

__all__ = ["EXAMPLES", "WebApp", "build_demo", "launch", "main"]


def build_demo(*args: Any, **kwargs: Any) -> Any:
    """:func:`textsam.webapp.build_demo` with this folder's example images."""
    kwargs.setdefault("examples_dir", EXAMPLES)
    return _build_demo(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    return _main(argv, examples_dir=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main())
