"""``python -m textsam``: the same as the ``textsam`` command."""

from __future__ import annotations

import sys

from textsam.cli import main

if __name__ == "__main__":
    sys.exit(main())
