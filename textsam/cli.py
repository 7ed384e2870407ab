"""The ``textsam`` command line: ``textsam <command> ...``.

Each command registers itself with an ``_add_<command>_parser(subparsers)`` function listed in
``_PARSER_BUILDERS``; it sets ``handler=<function(args) -> int>`` as a parser default. Handlers
import their implementation lazily so that ``import textsam.cli`` (and ``textsam --help``) stays
cheap: nothing here imports torch at module level.

User errors (:class:`textsam.errors.TextSamError`, a missing file, bad arguments) print
``textsam: error: <message>`` to stderr and return 2 without a traceback; ``-v`` shows INFO logs and
the traceback of unexpected errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from textsam.errors import TextSamError

PROG = "textsam"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]
_Subparsers = Any  # argparse._SubParsersAction is private


class UsageError(Exception):
    """A command line argparse could not parse; main() prints it and returns 2."""


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting the process."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _version() -> str:
    """The installed package version, or ``textsam.__version__`` when not installed."""
    from importlib import metadata

    try:
        return metadata.version("textsam")
    except metadata.PackageNotFoundError:
        import textsam

        return str(getattr(textsam, "__version__", "unknown"))


def _common_options() -> argparse.ArgumentParser:
    """Options accepted after any subcommand too (``textsam weights list -v``)."""
    common = _ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="log at INFO level and show tracebacks of unexpected errors",
    )
    return common


def add_command(subparsers: _Subparsers, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with the common options; builders for every command use this."""
    return subparsers.add_parser(
        name, help=help, description=kwargs.pop("description", help), parents=[_common_options()], **kwargs
    )


# --------------------------------------------------------------------------------------------------
# textsam weights ...


def _add_weights_parser(subparsers: _Subparsers) -> None:
    """``textsam weights list|download|verify|path``: manage checkpoint files in the cache."""
    weights = add_command(subparsers, "weights", "list, download, verify and locate checkpoint files")
    actions = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    p = add_command(actions, "list", "show the known checkpoints and whether they are cached")
    p.set_defaults(handler=_weights_list)

    p = add_command(actions, "download", "download checkpoints into the cache (resumes, verifies sha256)")
    p.add_argument("names", nargs="*", metavar="NAME", help="weights names (see `textsam weights list`)")
    p.add_argument("--all", action="store_true", help="download every known checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_weights_download)

    p = add_command(actions, "verify", "re-hash cached checkpoints (exit 1 on mismatch or missing)")
    p.add_argument("names", nargs="*", metavar="NAME", help="weights names; default: every cached one")
    p.set_defaults(handler=_weights_verify)

    p = add_command(actions, "path", "print where a checkpoint is (or will be) stored")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=_weights_path)


def _weights_list(args: argparse.Namespace) -> int:
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


def _weights_download(args: argparse.Namespace) -> int:
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


def _weights_verify(args: argparse.Namespace) -> int:
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


def _weights_path(args: argparse.Namespace) -> int:
    from textsam.weights import pretrained

    path = pretrained.weights_path(args.name)
    print(path)
    if not path.is_file():
        print(f"note: {args.name} is not downloaded yet", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# textsam segment ...

_POINT_SYNTAX = "X,Y or X,Y,LABEL (pixels; LABEL 1 = foreground, the default, 0 = background), e.g. --point 120,80,0"
_BOX_SYNTAX = "X0,Y0,X1,Y1 (pixels, top-left then bottom-right corner), e.g. --box 10,20,200,180"


def _floats(text: str) -> list[float]:
    values = [float(part) for part in text.split(",")]
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise ValueError("not a finite number")
    return values


def _parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y[,LABEL]`` -> ``(x, y, label)``; argparse reports a clear error for anything else."""
    try:
        values = _floats(text)
    except ValueError:
        values = []
    if len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0.0, 1.0)):
        raise argparse.ArgumentTypeError(f"expected {_POINT_SYNTAX}; got {text!r}")
    label = int(values[2]) if len(values) == 3 else 1
    return values[0], values[1], label


def _parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` with ``X1 > X0`` and ``Y1 > Y0``."""
    try:
        values = _floats(text)
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected {_BOX_SYNTAX}; got {text!r}")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(f"the box must have X1 > X0 and Y1 > Y0: expected {_BOX_SYNTAX}; got {text!r}")
    return x0, y0, x1, y1


def _parse_clip(text: str) -> str:
    """``NAME/TAG`` as open_clip names them, e.g. ``ViT-B-16-quickgelu/openai``."""
    name, sep, tag = text.partition("/")
    if not sep or not name or not tag or "/" in tag:
        raise argparse.ArgumentTypeError(f"expected NAME/TAG, e.g. ViT-B-16-quickgelu/openai; got {text!r}")
    return text


def _add_model_options(p: argparse.ArgumentParser, *, clip: bool = True, default: str | None = "sam_vit_b") -> None:
    """``--model``, ``--checkpoint``, ``--clip`` (optional) and ``--text-head``: which model to build."""
    p.add_argument("--model", default=default, metavar="NAME",
                   help="model name (default: sam_vit_b" + ("; shapes_tiny with --example)" if default is None else ")"))
    p.add_argument("--checkpoint", type=Path, metavar="PATH", help="SAM weights file instead of the published ones")
    if clip:
        p.add_argument("--clip", type=_parse_clip, metavar="NAME/TAG",
                       help="open_clip model, e.g. ViT-B-16-quickgelu/openai")
    p.add_argument("--text-head", type=Path, metavar="PATH", help="trained text head (textsam bundle)")


def create_model_from_args(args: argparse.Namespace) -> Any:
    """``textsam.create_model`` with the options of :func:`_add_model_options` (and ``--device`` if present)."""
    import textsam

    kwargs: dict[str, Any] = {"checkpoint": args.checkpoint}
    for option in ("device", "clip", "text_head"):
        value = getattr(args, option, None)
        if value is not None:
            kwargs[option] = value
    return textsam.create_model(args.model, **kwargs)


def _add_segment_parser(subparsers: _Subparsers) -> None:
    """``textsam segment IMAGE|FOLDER ... -o OUT``: masks, overlays and JSON for each image."""
    p = add_command(
        subparsers, "segment", "segment images from a phrase, clicks and/or a box",
        description=(
            "Segment each image (folders are scanned for .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp) and write "
            "<stem>_mask<i>.png, <stem>_overlay.png and <stem>.json (COCO RLE) into the output folder. "
            "Only files textsam wrote are ever replaced; images already done for the same request are skipped, "
            "so the same command again resumes. Exit status: 0 every image done, 2 some inputs could not be "
            "read (listed; the others are written) or a bad argument, 1 an unexpected error, 130 interrupted."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--example", action="store_true",
                   help="also segment the example image shipped with textsam (default model then: shapes_tiny)")
    p.add_argument("-t", "--text", metavar="PHRASE", help="what to segment, e.g. 'red car'")
    p.add_argument("--negative-text", metavar="PHRASE", help="what not to segment, e.g. 'shadow'")
    p.add_argument(
        "--point", dest="points", action="append", type=_parse_point, default=[], metavar="X,Y[,LABEL]",
        help="a click in pixels; LABEL 1 = foreground (default), 0 = background; repeatable",
    )
    p.add_argument("--box", type=_parse_box, metavar="X0,Y0,X1,Y1", help="a box in pixels")
    p.add_argument("--all", dest="all_instances", action="store_true", help="segment every instance of the phrase")
    p.add_argument("--multimask", action="store_true", help="write SAM's 3 candidate masks, best first")
    _add_model_options(p, default=None)
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, mps (default: cpu)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder to write results into")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_segment)


def _segment(args: argparse.Namespace) -> int:
    from textsam.segment_cli import run_segment

    return run_segment(args)


# --------------------------------------------------------------------------------------------------
# textsam app ...


def _add_app_parser(subparsers: _Subparsers) -> None:
    """``textsam app [--model NAME] [--host 127.0.0.1] [--port 7860] [--share]``: the web app."""
    p = add_command(
        subparsers, "app", "start the web app (Gradio) on this machine",
        description="Start the textsam web app. It listens on 127.0.0.1 only unless --host says otherwise; "
        "--share also opens a public gradio.live link. Needs the app extra: pip install 'textsam[app]'.",
    )
    p.add_argument("--model", default="shapes_tiny", metavar="NAME",
                   help="model selected at start (default: shapes_tiny, the bundled offline demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--share", action="store_true", help="also create a public share link (off by default)")
    p.set_defaults(handler=_app)


def _app(args: argparse.Namespace) -> int:
    from textsam.webapp import run

    return run(args)


# --------------------------------------------------------------------------------------------------
# textsam eval ...

_BENCHMARK_HELP = (
    "refer: RefCOCO-style referring expressions (mIoU, cIoU, P@k); synthetic: the synthetic generator's test "
    "split, scored like refer; instances: COCO/LVIS mask AP of every category name; semseg: class-name "
    "semantic segmentation (full- and oracle-vocabulary mIoU); points: SAM's single-point protocol (mIoU at "
    "1, 2, 3, 5, 9 clicks)"
)


def _add_eval_parser(subparsers: _Subparsers) -> None:
    """``textsam eval BENCHMARK --data ROOT --out DIR``: benchmarks with report.json / report.md."""
    p = add_command(
        subparsers, "eval", "evaluate on a benchmark (refer, synthetic, instances, semseg, points)",
        description="Evaluate a model on a benchmark and write OUT/results.jsonl (one line per image, resumable), "
        "OUT/report.json and OUT/report.md. Run under torchrun (python -m torch.distributed.run "
        "--nproc_per_node N -m textsam eval ...) to shard images over processes. " + _BENCHMARK_HELP,
    )
    p.add_argument("benchmark", choices=("refer", "synthetic", "instances", "semseg", "points"), metavar="BENCHMARK",
                   help="refer, synthetic, instances, semseg or points")
    p.add_argument("--data", required=True, type=Path, metavar="ROOT", help="the dataset folder")
    p.add_argument("--split", metavar="NAME", help="split (COCO: val2017; refer: a refs split; synthetic: test)")
    _add_model_options(p)
    p.add_argument("--templates", metavar="NAME|FILE",
                   help="prompt templates: default, imagenet80, single, or a file with one template per line")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images")
    p.add_argument("--predictions", type=Path, metavar="FILE",
                   help="score this predictions file (results JSONL, or COCO results JSON for instances); no model")
    p.add_argument("--layout", choices=("ade20k", "voc", "context", "camvid"), help="semseg folder layout (default: guessed)")
    p.add_argument("--ignore-index", type=int, metavar="N", help="semseg label value to ignore (default: the layout's)")
    p.add_argument("--protocol", choices=("full", "oracle", "both"), default="both",
                   help="semseg vocabulary protocol (default: both)")
    p.add_argument("--clicks", metavar="N,N,...", help="points: click counts to score (default: 1,2,3,5,9)")
    p.add_argument("--categories", metavar="NAME,NAME,...",
                   help="instances: prompt and score only these category names (default: all)")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1 (default: cpu; under torchrun cuda = cuda:LOCAL_RANK)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (rerun to resume)")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from textsam.eval.cli import run_eval

    return run_eval(args)


# --------------------------------------------------------------------------------------------------
# textsam train ...


def _add_train_parser(subparsers: _Subparsers) -> None:
    """``textsam train CONFIG [--resume PATH|auto] [--out DIR] [--overwrite] [--steps N] [--stop-at N] [--device D]``
    (torchrun-ready)."""
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
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    """Ctrl-C (SIGINT) or SIGTERM: the loop writes the checkpoint of the last completed step; say how to go on."""
    import shlex

    from textsam.train.loop import TrainingInterrupted, main_from_args

    try:
        return main_from_args(args)
    except TrainingInterrupted as stop:
        again = ["textsam", "train", str(args.config), "--out", str(stop.output_dir), "--resume", "auto"]
        again += ["--steps", str(args.steps)] if args.steps else []
        again += ["--device", args.device] if args.device else []
        _error(f"interrupted after step {stop.step}, checkpoint {stop.checkpoint} written; continue with: "
               f"{shlex.join(again)}")
        return 128 + stop.signum


def _add_data_parser(subparsers: _Subparsers) -> None:
    """``textsam data synth --out ROOT [--seed N] [--train N] [--val N] [--test N] [--size PX]``."""
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
    s.set_defaults(handler=_data_synth)


def _data_synth(args: argparse.Namespace) -> int:
    from textsam.data.synthetic import generate

    meta = generate(args.out, seed=args.seed, num_train=args.train, num_val=args.val, num_test=args.test,
                    image_size=args.size, workers=args.workers)
    for split, counts in meta["counts"].items():
        print(f"{split}: {counts['images']} images, {counts['annotations']} objects, {counts['refs']} refs")
    print(f"written to {args.out}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# Parser and entry point

# Other commands (segment, app, train, eval, export) add their own _add_<cmd>_parser here.
# --------------------------------------------------------------------------------------------------
# textsam export ...


def _add_export_parser(subparsers: _Subparsers) -> None:
    """``textsam export --model NAME -o decoder.onnx [--text] [--return-single-mask]``: ONNX decoder."""
    p = add_command(
        subparsers, "export", "export the prompt encoder + mask decoder to ONNX (SAM's ONNX interface)",
        description=(
            "Write an ONNX graph of the prompt encoder and mask decoder with SAM's official inputs "
            "(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size) and "
            "outputs (masks, iou_predictions, low_res_masks). --text adds a text_embedding input "
            "(model.text_encoder.encode([phrase])) and, for a text head with a word path, text_word_features "
            "and text_word_mask (model.text_encoder.encode_words([phrase])). The image encoder is not part of the graph: compute the "
            "embedding with TextSamPredictor.get_image_embedding()."
        ),
    )
    _add_model_options(p, clip=False)
    p.add_argument("--text", action="store_true", help="add the text_embedding input (needs a text head)")
    p.add_argument("--return-single-mask", action="store_true",
                   help="return one mask (SAM's choice rule) instead of all four mask tokens")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, at least 11)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the .onnx file to write")
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from textsam.export.onnx import check_export, export_onnx

    check_export(args.output, args.opset)  # before the (possibly slow) model build
    path = export_onnx(create_model_from_args(args), args.output, return_single_mask=args.return_single_mask,
                       with_text=args.text, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return EXIT_OK


_PARSER_BUILDERS: list[Callable[[_Subparsers], None]] = [
    _add_weights_parser, _add_segment_parser, _add_app_parser, _add_eval_parser, _add_train_parser,
    _add_export_parser,
    _add_data_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The full ``textsam`` parser with every registered subcommand."""
    parser = _ArgumentParser(prog=PROG, description="Text-promptable Segment Anything.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="log at INFO level and show tracebacks of unexpected errors",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _PARSER_BUILDERS:
        add_parser(subparsers)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _error(message: object) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _os_error_message(err: OSError) -> str:
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
        handler: Handler = args.handler
        return int(handler(args))
    except UsageError as err:
        _error(err)
    except TextSamError as err:
        if verbose:
            traceback.print_exc()
        _error(err)
    except SystemExit as exc:  # --help / --version, or a handler calling sys.exit
        code = exc.code
        if code is None or isinstance(code, int):
            return code or EXIT_OK
        _error(code)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except MemoryError:
        if verbose:
            traceback.print_exc()
        _error("out of memory: use a smaller model (e.g. --model mobile_sam), smaller images or fewer prompts "
               "at a time, or a machine with more memory")
    except OSError as err:  # the machine, not the code: disk full, permissions, a file that vanished
        if verbose:
            traceback.print_exc()
        _error(_os_error_message(err))
    except Exception as err:  # noqa: BLE001 - last resort: report instead of a raw traceback
        if verbose:
            traceback.print_exc()
            _error(f"unexpected {type(err).__name__}: {err}")
        else:
            _error(f"unexpected {type(err).__name__}: {err} (run with -v for the traceback)")
        return EXIT_FAILURE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
