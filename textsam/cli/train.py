"""``textsam train CONFIG``: train a model or a text head (torchrun-ready)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Subparsers, add_command, print_error


def add_parser(subparsers: Subparsers) -> None:
    """``textsam train CONFIG [--resume PATH|auto] [--out DIR] [--overwrite] [--steps N] [--stop-at N] [--device D]``."""
    p = add_command(
        subparsers, "train", "train a model or a text head from a JSON/TOML config",
        description=(
            "Train per CONFIG (a .json or .toml TrainConfig, see textsam.train.config). Multi-GPU / multi-process: "
            "torchrun --nproc_per_node N -m textsam train CONFIG."
        ),
    )
    p.add_argument("config", type=Path, metavar="CONFIG", help="training config (.json or .toml)")
    p.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint, or 'auto' for the latest one")
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (overrides output_dir)")
    p.add_argument("--steps", type=int, metavar="N", help="total optimizer steps (overrides steps)")
    p.add_argument("--stop-at", type=int, metavar="N",
                   help="stop after step N of the schedule: write its checkpoint and export its weights")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the files of an earlier run in the output folder first (without it, or --resume, "
                   "such a folder is refused)")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (overrides device)")
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Run the training loop. On Ctrl-C (SIGINT) or SIGTERM the loop writes the checkpoint of the last
    completed step; this prints the command that continues and returns 128 + the signal number."""
    import shlex

    from textsam.errors import InputError
    from textsam.train.config_file import load_config
    from textsam.train.loop import TrainingInterrupted, process_rank, train

    config = load_config(args.config).with_overrides(output_dir=args.out and str(args.out), steps=args.steps,
                                                     device=args.device)
    if args.stop_at is not None and not 1 <= args.stop_at <= config.steps:
        raise InputError(f"--stop-at must be between 1 and steps ({config.steps}), got {args.stop_at}")
    try:
        path = train(config, resume=args.resume, stop_at=args.stop_at, overwrite=args.overwrite)
    except TrainingInterrupted as stop:
        again = ["textsam", "train", str(args.config), "--out", str(stop.output_dir), "--resume", "auto"]
        again += ["--steps", str(args.steps)] if args.steps else []
        again += ["--device", args.device] if args.device else []
        print_error(f"interrupted after step {stop.step}, checkpoint {stop.checkpoint} written; continue with: "
                    f"{shlex.join(again)}")
        return 128 + stop.signum
    if process_rank() == 0:
        print(path)
    return 0
