"""``textsam data synth``: write the synthetic shapes referring dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK, Subparsers, add_command


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


def run_synth(args: argparse.Namespace) -> int:
    """Write the dataset and print the counts of each split."""
    from textsam.data.synthetic import generate

    meta = generate(args.out, seed=args.seed, num_train=args.train, num_val=args.val, num_test=args.test,
                    image_size=args.size, workers=args.workers)
    for split, counts in meta["counts"].items():
        print(f"{split}: {counts['images']} images, {counts['annotations']} objects, {counts['refs']} refs")
    print(f"written to {args.out}")
    return EXIT_OK
