"""The ``textsam`` command line: ``textsam <command> ...``.

Each command is one module of this package holding its parser and its handler: ``add_parser(subparsers)``
registers it and sets ``handler=<function(args) -> int>`` as a parser default. Handlers import their
implementation when they run, so ``import textsam.cli`` (and ``textsam --help``) stays cheap: nothing
here imports torch or numpy at module level.

Exit codes: 0 success; 2 a user error (:class:`textsam.errors.TextSamError`, bad arguments, an
operating-system error such as a full disk or a missing permission, running out of memory), printed as
one line ``textsam: error: ...`` saying what to do; 1 an unexpected error; 130 interrupted. ``-v`` shows
INFO logs and the traceback of errors.
"""

from __future__ import annotations

import argparse
import logging
import traceback
from collections.abc import Callable

from textsam.errors import TextSamError

from ..allocator import keep_freed_memory
from . import app, data, eval, export, label, segment, train, weights
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    ArgumentParser,
    UsageError,
    print_error,
)

Handler = Callable[[argparse.Namespace], int]

# the commands in the order `textsam --help` lists them
COMMANDS = (weights, segment, label, app, eval, train, export, data)


def _version() -> str:
    """The installed package version, or ``textsam.__version__`` when not installed."""
    from importlib import metadata

    try:
        return metadata.version("textsam")
    except metadata.PackageNotFoundError:
        import textsam

        return str(getattr(textsam, "__version__", "unknown"))


def build_parser() -> argparse.ArgumentParser:
    """The full ``textsam`` parser with every command."""
    parser = ArgumentParser(prog=PROG, description="Text-promptable Segment Anything.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="log at INFO level and show tracebacks of unexpected errors",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def os_error_message(err: OSError) -> str:
    """One line for an operating-system error, with what to do about the common ones."""
    import errno

    where = f" ({err.filename})" if err.filename else ""
    what = err.strerror or str(err)
    hints = {
        errno.ENOSPC: "free some disk space, or write somewhere else",
        errno.EACCES: "check the permissions, or use another path",
        errno.EPERM: "check the permissions, or use another path",
        errno.EROFS: "the file system is read-only: use another path",
        errno.ENOENT: "check the path",
        errno.EISDIR: "give a file, not a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
        errno.EMFILE: "too many open files: raise the limit (ulimit -n) or process fewer files at once",
    }
    hint = hints.get(err.errno or -1, "check the path and the machine's disk and permissions")
    return f"{what}{where}: {hint}"


def main(argv: list[str] | None = None) -> int:
    """Run the ``textsam`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    verbose = False
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        verbose = bool(args.verbose)
        _setup_logging(verbose)
        keep_freed_memory()  # this process is ours: each image reuses the last one's pages (textsam/allocator.py)
        handler: Handler = args.handler
        return int(handler(args))
    except UsageError as err:
        print_error(err)
    except TextSamError as err:
        if verbose:
            traceback.print_exc()
        print_error(err)
    except SystemExit as exc:  # --help / --version, or a handler calling sys.exit
        code = exc.code
        if code is None or isinstance(code, int):
            return code or EXIT_OK
        print_error(code)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except MemoryError:
        if verbose:
            traceback.print_exc()
        print_error("out of memory: use a smaller model (e.g. --model mobile_sam), smaller images or fewer prompts "
                    "at a time, or a machine with more memory")
    except OSError as err:  # the machine, not the code: disk full, permissions, a file that vanished
        if verbose:
            traceback.print_exc()
        print_error(os_error_message(err))
    except Exception as err:  # noqa: BLE001 - last resort: report instead of a raw traceback
        if verbose:
            traceback.print_exc()
            print_error(f"unexpected {type(err).__name__}: {err}")
        else:
            print_error(f"unexpected {type(err).__name__}: {err} (run with -v for the traceback)")
        return EXIT_FAILURE
    return EXIT_USAGE
