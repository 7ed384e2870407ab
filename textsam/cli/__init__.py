"""The ``textsam`` command line (console script ``textsam = "textsam.cli:main"``, and ``python -m textsam``).

:mod:`.main` holds the top-level parser, :func:`main` and the exit codes; :mod:`.common` the options
every command shares (the model options among them); each command is one module with its parser and
its handler: :mod:`.segment`, :mod:`.weights`, :mod:`.app`, :mod:`.eval`, :mod:`.train`, :mod:`.export`,
:mod:`.data`. Importing this package imports no torch or numpy.
"""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
