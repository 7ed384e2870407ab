"""What every ``textsam`` command shares: exit codes, the parser class, the model options and the
prompt-syntax parsers.

Nothing here imports torch or numpy at module level (``textsam --help`` stays fast); building the model
(:func:`create_model_from_args`) imports textsam's model code when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

PROG = "textsam"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Subparsers = Any  # argparse._SubParsersAction is private

POINT_SYNTAX = "X,Y or X,Y,LABEL (pixels; LABEL 1 = foreground, the default, 0 = background), e.g. --point 120,80,0"
BOX_SYNTAX = "X0,Y0,X1,Y1 (pixels, top-left then bottom-right corner), e.g. --box 10,20,200,180"


class UsageError(Exception):
    """A command line that cannot run as given; ``main()`` prints it as one line and returns 2."""


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting the process."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# what --fast changes besides the model (TextSamPredictor.fast, TextOptions.fast), for every command's help
FAST_HELP = ("CLIP ViT-B/32 (OpenAI) for a published SAM unless --clip is given, a lighter text engine (at most "
             "24 proposal clicks, 16 proposals, 3 CLIP crops per phrase) and the image encoder in bf16 where the "
             "CPU or GPU computes bf16 natively (the engine's proposal clicks and CLIP towers run in bf16 there "
             "anyway), else, on an x86 CPU, the linear layers of CLIP's image tower and of a ViT image encoder "
             "(sam_vit_b/l/h; not mobile_sam's) in int8")


def print_error(message: object) -> None:
    """``textsam: error: <message>`` on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _common_options() -> argparse.ArgumentParser:
    """Options accepted after any subcommand too (``textsam weights list -v``)."""
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="log at INFO level and show tracebacks of unexpected errors",
    )
    return common


def add_command(subparsers: Subparsers, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with the common options (``-v``); every command's parser is made here."""
    return subparsers.add_parser(
        name, help=help, description=kwargs.pop("description", help), parents=[_common_options()], **kwargs
    )


def add_no_progress(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: hide the progress bar."""
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# -------------------------------------------------------------------------------------- value parsers
def _floats(text: str) -> list[float]:
    values = [float(part) for part in text.split(",")]
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise ValueError("not a finite number")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y[,LABEL]`` -> ``(x, y, label)``; argparse reports a clear error for anything else."""
    try:
        values = _floats(text)
    except ValueError:
        values = []
    if len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0.0, 1.0)):
        raise argparse.ArgumentTypeError(f"expected {POINT_SYNTAX}; got {text!r}")
    label = int(values[2]) if len(values) == 3 else 1
    return values[0], values[1], label


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` with ``X1 > X0`` and ``Y1 > Y0``."""
    try:
        values = _floats(text)
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected {BOX_SYNTAX}; got {text!r}")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(f"the box must have X1 > X0 and Y1 > Y0: expected {BOX_SYNTAX}; got {text!r}")
    return x0, y0, x1, y1


CLIP_SYNTAX = ("NAME/TAG (e.g. ViT-B-16-quickgelu/openai), NAME/@/FILE (a weights file), local-dir:FOLDER (with "
               "open_clip_config.json) or hf-hub:ORG/REPO")


def parse_clip(text: str) -> str:
    """A CLIP in the forms :func:`textsam.text.clip.parse_clip_spec` reads: ``NAME/TAG`` as open_clip names them
    (``ViT-B-16-quickgelu/openai``), ``NAME/@/FILE`` (a local weights file; ``~`` expanded), ``local-dir:FOLDER``
    (an open_clip folder) or ``hf-hub:ORG/REPO``. A file or folder that is not there is refused here, with what to
    give instead."""
    text = text.strip()
    if text.startswith("local-dir:"):
        folder = Path(text[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise argparse.ArgumentTypeError(
                f"{folder} is no open_clip folder (it has no open_clip_config.json); expected {CLIP_SYNTAX}")
        return f"local-dir:{folder}"
    if text.startswith("hf-hub:"):
        if text.count("/") != 1 or text.endswith("/") or text == "hf-hub:/":
            raise argparse.ArgumentTypeError(f"expected {CLIP_SYNTAX}; got {text!r}")
        return text
    if "/@/" in text:
        name, path = text.split("/@/", 1)
        file = Path(path).expanduser()
        if not name or not path:
            raise argparse.ArgumentTypeError(f"expected {CLIP_SYNTAX}; got {text!r}")
        if not file.is_file():
            raise argparse.ArgumentTypeError(f"no CLIP weights file {str(file)!r}: expected {CLIP_SYNTAX}")
        return f"{name}/@/{file}"
    name, sep, tag = text.partition("/")
    if not sep or not name or not tag or "/" in tag:
        raise argparse.ArgumentTypeError(f"expected {CLIP_SYNTAX}; got {text!r}")
    return text


# -------------------------------------------------------------------------------------- the model
def add_model_options(
    p: argparse.ArgumentParser, *, clip: bool = True, device: bool = True, default: str | None = "sam_vit_b",
    device_help: str = "cpu, cuda, cuda:1, mps (default: cpu)", fast: bool = False, example: bool = False,
) -> None:
    """``--model``, ``--checkpoint``, ``--clip`` (when ``clip``), ``--text-head``, ``--device`` (when
    ``device``) and ``--fast`` (when ``fast``): which model to build, for :func:`create_model_from_args`, and
    :func:`predictor_from_args`.

    ``default=None`` leaves ``--model`` unset, for a command that picks its default later (``example``: the
    command's ``--example`` picks shapes_tiny, said in the help).
    """
    default_help = "sam_vit_b" + ("; mobile_sam with --fast" if fast else "") + (
        "; shapes_tiny with --example" if example else "")
    p.add_argument("--model", default=default, metavar="NAME", help=f"model name (default: {default_help})")
    add_weights_options(p, clip=clip)
    if device:
        p.add_argument("--device", metavar="DEVICE", help=device_help)
    if fast:
        p.add_argument("--fast", action="store_true",
                       help=f"the CPU fast path: mobile_sam unless --model is given, and {FAST_HELP}")


def add_weights_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, clip: bool = True) -> None:
    """``--checkpoint``, ``--clip`` (with ``clip``), ``--text-head``, ``--no-text-head``: other weights than the
    model's published ones (``textsam segment``, ``label``, ``export``, ``app``)."""
    p.add_argument("--checkpoint", type=Path, metavar="PATH", help="SAM weights file instead of the published ones")
    if clip:
        p.add_argument("--clip", type=parse_clip, metavar="NAME/TAG",
                       help="open_clip model, e.g. ViT-B-16-quickgelu/openai; NAME/@/FILE for a weights file you "
                            "downloaded, local-dir:FOLDER for an open_clip folder")
    p.add_argument("--text-head", type=Path, metavar="PATH", help="trained text head (a textsam weights file)")
    p.add_argument("--no-text-head", action="store_true",
                   help="drop the model's own text head (shapes_tiny): text goes through the training-free engine")


def create_model_from_args(args: argparse.Namespace) -> Any:
    """``textsam.create_model`` with the options of :func:`add_model_options` (an option the command
    does not have is passed as ``None``)."""
    import textsam

    return textsam.create_model(args.model, checkpoint=args.checkpoint, clip=getattr(args, "clip", None),
                                text_head=text_head_arg(args), device=getattr(args, "device", None))


def predictor_from_args(args: argparse.Namespace) -> Any:
    """A ``TextSamPredictor`` of :func:`create_model_from_args`'s model; with ``--fast``, the fast path
    (:meth:`textsam.TextSamPredictor.fast`)."""
    import textsam

    model = create_model_from_args(args)
    if getattr(args, "fast", False):
        return textsam.TextSamPredictor.fast(model)
    return textsam.TextSamPredictor(model)


def resolve_fast_model(args: argparse.Namespace, default: str) -> None:
    """Set ``args.model`` when it was not given: the fast path's model with ``--fast``, else ``default``; with
    ``--fast``, set ``args.clip`` to the fast path's CLIP when none was given (:func:`textsam.factory.fast_clip`:
    ViT-B/32 for a published SAM), so that a request's key names the CLIP that answered it."""
    from textsam.text.options import FAST_MODEL

    fast = getattr(args, "fast", False)
    if args.model is None:
        args.model = FAST_MODEL if fast else default
    if fast and hasattr(args, "clip"):
        from textsam.factory import fast_clip

        args.clip = fast_clip(args.model, args.clip, text_head_arg(args), getattr(args, "checkpoint", None))


def text_head_arg(args: argparse.Namespace) -> Path | bool | None:
    """``create_model``'s ``text_head`` from ``--text-head`` / ``--no-text-head`` (not both)."""
    if getattr(args, "no_text_head", False):
        if args.text_head is not None:
            raise UsageError("give --text-head FILE or --no-text-head, not both")
        return False
    return args.text_head
