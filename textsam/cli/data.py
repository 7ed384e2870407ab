"""``textsam data synth|download``: write the synthetic shapes referring dataset; fetch the public ones."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_OK, Subparsers, UsageError, add_command, add_no_progress


def add_parser(subparsers: Subparsers) -> None:
    """``textsam data synth --out ROOT [--seed N] [--train N] [--val N] [--test N] [--size PX] [--workers N]``."""
    p = add_command(subparsers, "data", "make datasets")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    s = add_command(
        actions, "synth", "write the synthetic shapes referring dataset (COCO + refs JSON)",
        description="Seeded, byte-reproducible images of shapes with exact masks and referring phrases; "
        "the test split holds only colour-shape pairs never seen in train/val.",
    )
    s.add_argument("--out", type=Path, required=True, metavar="ROOT")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--train", type=int, default=2000, metavar="N")
    s.add_argument("--val", type=int, default=200, metavar="N")
    s.add_argument("--test", type=int, default=200, metavar="N")
    s.add_argument("--size", type=int, default=128, metavar="PX", help="image side in pixels")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="render in N processes (the output is the same for any N)")
    s.set_defaults(handler=run_synth)
    _add_download(actions)


def _add_download(actions: Subparsers) -> None:
    """``textsam data download DATASET... --root DIR [--only KEY,...] [--dry-run] [--keep-archives]``."""
    from textsam.data.download import DATASETS  # the table only: standard library, no torch

    keys = ", ".join(f"{name}: {'/'.join(a.key for a in d.archives)}" for name, d in DATASETS.items())
    d = add_command(
        actions, "download", f"download, verify and unpack {', '.join(DATASETS)} into --root",
        description="Fetch the official archives (each checked against its size and sha256), resuming a broken "
        "download, and unpack them into the layout textsam's readers and `textsam eval` take as is: "
        "ROOT/coco/{train2017,val2017,annotations}, ROOT/refcoco*/ (refs, instances.json, images -> coco/train2014), "
        "ROOT/lvis/annotations. Offline (TEXTSAM_OFFLINE=1) or when the network fails, it names each missing "
        "file's URL and the exact path to place it at; a file placed there is verified and unpacked.",
    )
    d.add_argument("datasets", nargs="+", choices=list(DATASETS), metavar="DATASET",
                   help=f"one or more of {', '.join(DATASETS)}")
    d.add_argument("--root", type=Path, required=True, metavar="DIR", help="the data folder (created if needed)")
    d.add_argument("--only", metavar="KEY[,KEY]",
                   help=f"fetch only these files (quick start: coco --only val2017,annotations); {keys}")
    d.add_argument("--dry-run", action="store_true", help="list what would be fetched and where; fetch nothing")
    d.add_argument("--keep-archives", action="store_true",
                   help="keep the downloaded zips in ROOT/downloads after unpacking (default: delete them)")
    add_no_progress(d)
    d.set_defaults(handler=run_download)


def run_synth(args: argparse.Namespace) -> int:
    """Write the dataset and print the counts of each split."""
    from textsam.data.synthetic import generate

    meta = generate(args.out, seed=args.seed, num_train=args.train, num_val=args.val, num_test=args.test,
                    image_size=args.size, workers=args.workers)
    for split, counts in meta["counts"].items():
        print(f"{split}: {counts['images']} images, {counts['annotations']} objects, {counts['refs']} refs")
    print(f"written to {args.out}")
    return EXIT_OK


_STATES = {
    "unpacked": "already unpacked: skipped",
    "present": "placed by hand: verified, then unpacked",
    "partial": "partly downloaded: resumed",
    "missing": "to fetch",
}


def run_download(args: argparse.Namespace) -> int:
    """Print the plan (``--dry-run``) or fetch, verify and unpack each archive; exit 2 naming what is missing."""
    from textsam.data import download as dl
    from textsam.download import format_size, is_offline, offline_reason
    from textsam.errors import DownloadError

    only = [k.strip() for k in args.only.split(",") if k.strip()] if args.only is not None else None
    if only is not None and not only:
        raise UsageError("--only needs at least one file key, e.g. --only val2017,annotations")
    root = Path(args.root).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--root {root} is a file: give a folder")
    items = dl.plan(args.datasets, root, only)
    if args.dry_run:
        for item in items:
            a = item.archive
            print(f"{item.label}: {a.url}")
            print(f"    {format_size(a.size)} ({a.size} bytes), sha256 {a.sha256 or 'unknown'}")
            print(f"    -> {item.path} [{_STATES[item.state]}]")
            print(f"    unpacks to {', '.join(str(root / p) for p in a.expect)}")
        for name in args.datasets:
            for link, target in dl.DATASETS[name].links:
                print(f"link {root / link} -> {root / target}")
        todo = [i for i in items if i.state in ("missing", "partial")]
        total = sum(i.archive.size for i in todo)
        print(f"would fetch {len(todo)} of {len(items)} files, {format_size(total)} in all (dry run: nothing fetched)")
        return EXIT_OK
    dl.check_root(root)
    offline = is_offline()
    missing = []
    for item in items:
        result = dl.fetch(item, root, offline=offline, progress=not args.no_progress,
                          keep_archives=args.keep_archives)
        if isinstance(result, dl.Missing):
            missing.append(result)
        elif result == "skipped":
            print(f"{item.label}: already unpacked in {item.into}")
        else:
            print(f"{item.label}: verified and unpacked into {item.into}")
    for note in dl.make_links(args.datasets, root):
        print(note)
    if missing:
        for m in missing:
            print(m.line(), file=sys.stderr)
        why = f"and downloads are disabled {offline_reason()}" if offline else "(the download failed)"
        raise DownloadError(f"{len(missing)} of {len(items)} files are missing {why}: place each file at the "
                            "path named above and run the same command again; it verifies and unpacks them")
    print(f"{', '.join(args.datasets)}: ready in {root}")
    return EXIT_OK
