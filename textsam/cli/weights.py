"""``textsam weights list|download|verify|path``: the checkpoint files in the cache."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .common import EXIT_FAILURE, EXIT_OK, PROG, Subparsers, UsageError, add_command, add_no_progress


def add_parser(subparsers: Subparsers) -> None:
    """``textsam weights list|download|verify|path``: manage checkpoint files in the cache."""
    weights = add_command(subparsers, "weights", "list, download, verify and locate checkpoint files")
    actions = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    p = add_command(actions, "list", "show the known checkpoints and whether they are cached")
    p.set_defaults(handler=weights_list)

    p = add_command(actions, "download", "download checkpoints into the cache (resumes, verifies sha256)")
    p.add_argument("names", nargs="*", metavar="NAME", help="weights names (see `textsam weights list`)")
    p.add_argument("--all", action="store_true", help="download every known checkpoint")
    add_no_progress(p)
    p.set_defaults(handler=weights_download)

    p = add_command(actions, "verify", "re-hash cached checkpoints (exit 1 on mismatch or missing)")
    p.add_argument("names", nargs="*", metavar="NAME", help="weights names; default: every cached one")
    p.set_defaults(handler=weights_verify)

    p = add_command(actions, "path", "print where a checkpoint is (or will be) stored")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=weights_path)


def weights_list(args: argparse.Namespace) -> int:
    """Print the weights table: name, size, licence, cached or not, source."""
    from textsam.weights import pretrained

    rows = [("NAME", "SIZE_MB", "LICENSE", "CACHED", "SOURCE")]
    for name, entry in pretrained.WEIGHTS.items():
        size = "?" if entry.size is None else f"{entry.size / 1e6:.1f}"
        cached = "yes" if pretrained.is_cached(name) else "no"
        source = f"hf:{entry.hf_repo}/{entry.hf_filename}" if entry.url is None else entry.url
        rows.append((name, size, entry.license, cached, source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        print("  ".join([*cells, row[-1]]))
    print(f"\ncache: {pretrained.cache_dir()}")
    return EXIT_OK


def _check_names(names: Sequence[str]) -> None:
    """Raise WeightsError (listing known names) for the first unknown name."""
    from textsam.weights import pretrained

    for name in names:
        pretrained.get_entry(name)


def weights_download(args: argparse.Namespace) -> int:
    """Download the named checkpoints (or ``--all``) into the cache; print where each one is."""
    from textsam.weights import pretrained

    if args.all and args.names:
        raise UsageError("give weights names or --all, not both")
    names = list(pretrained.WEIGHTS) if args.all else args.names
    if not names:
        raise UsageError("name the weights to download, or pass --all (see `textsam weights list`)")
    _check_names(names)
    for name in names:
        path = pretrained.resolve_weights(name, progress=not args.no_progress)
        print(f"{name}: {path}")
    return EXIT_OK


def weights_verify(args: argparse.Namespace) -> int:
    """Re-hash the named (default: every cached) checkpoint; 1 when one is missing or damaged."""
    from textsam.errors import WeightsError
    from textsam.weights import pretrained

    _check_names(args.names)
    names = args.names or [n for n in pretrained.WEIGHTS if pretrained.is_cached(n)]
    if not names:
        print(f"no checkpoints cached in {pretrained.cache_dir()}")
        return EXIT_OK
    failed: list[str] = []
    for name in names:
        entry, path = pretrained.WEIGHTS[name], pretrained.weights_path(name)
        if not path.is_file():
            print(f"{name}: MISSING ({path})")
            failed.append(name)
            continue
        try:
            digest = pretrained.verify_cached(name)
        except WeightsError as err:
            print(f"{name}: FAILED: {err}")
            failed.append(name)
            continue
        status = "OK" if entry.sha256 else "no reference sha256"
        print(f"{name}: {status} sha256={digest}")
    if failed:
        print(f"{PROG}: {len(failed)} of {len(names)} checkpoint(s) missing or damaged; delete the damaged files and "
              f"run `textsam weights download {' '.join(failed)}`", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def weights_path(args: argparse.Namespace) -> int:
    """Print where the checkpoint is (or will be) stored."""
    from textsam.weights import pretrained

    path = pretrained.weights_path(args.name)
    print(path)
    if not path.is_file():
        print(f"note: {args.name} is not downloaded yet", file=sys.stderr)
    return EXIT_OK
