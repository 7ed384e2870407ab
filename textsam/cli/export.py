"""``textsam export``: the prompt encoder + mask decoder as an ONNX graph with SAM's ONNX interface, or (``--web``)
a static folder that segments by text and clicks in a browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK, Subparsers, UsageError, add_command, add_model_options, create_model_from_args

WEB_DEFAULT_MODEL = "shapes_tiny"


def add_parser(subparsers: Subparsers) -> None:
    """``textsam export --model NAME -o decoder.onnx [--text] [--return-single-mask] [--opset N]`` and
    ``textsam export --web DIR [--model NAME] [--fast] [--web-runtime FILE.tgz] [--quantize]``."""
    p = add_command(
        subparsers, "export", "export the decoder to ONNX, or a browser page (--web DIR)",
        description=(
            "Write an ONNX graph of the prompt encoder and mask decoder with SAM's official inputs "
            "(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size) and "
            "outputs (masks, iou_predictions, low_res_masks). --text adds a text_embedding input "
            "(model.text_encoder.encode([phrase])) whose text-head tokens join the point tokens; a text head's "
            "locator is not part of the graph. The image encoder is not part of the graph either: compute the "
            "embedding with TextSamPredictor.get_image_embedding(). "
            "With --web DIR, write a static folder instead (ONNX graphs, onnxruntime-web, index.html) in which a "
            "browser segments by text, clicks and a box with no server; serve it with `textsam app --static DIR`."
        ),
    )
    add_model_options(p, clip=False, device=False, default=None)
    p.add_argument("--text", action="store_true", help="add the text_embedding input (needs a text head)")
    p.add_argument("--return-single-mask", action="store_true",
                   help="return one mask (SAM's choice rule) instead of all four mask tokens")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, at least 11)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--web", type=Path, metavar="DIR",
                   help=f"write the browser page's folder (default model: {WEB_DEFAULT_MODEL}, with text)")
    p.add_argument("--web-runtime", type=Path, metavar="FILE.tgz",
                   help="the onnxruntime-web npm tarball to vendor (default: the pinned one, downloaded once)")
    p.add_argument("--fetch-web-runtime", action="store_true",
                   help="only download the pinned onnxruntime-web into the cache (--web does it on first use) and exit")
    p.add_argument("--fast", action="store_true",
                   help="--web: the lighter text engine of the CPU fast path (at most 24 proposal clicks, 16 CLIP crops; fp32)")
    p.add_argument("--quantize", action="store_true",
                   help="--web: the image encoder's weights as 8-bit integers (smaller, slightly different masks)")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Check the output path and opset, build the model, write the graph (or the page) and print its size."""
    from textsam.export.onnx import check_export

    if args.fetch_web_runtime:
        from textsam.export.web_runtime import fetch_runtime

        print(f"onnxruntime-web: {fetch_runtime(args.web_runtime)}")
        return EXIT_OK
    if args.web is not None:
        if args.output is not None or args.text or args.return_single_mask:
            raise UsageError("--web writes a whole folder: drop -o, --text and --return-single-mask")
        return _run_web(args)
    if args.output is None:
        raise UsageError("give -o FILE.onnx (the decoder graph) or --web DIR (the browser page)")
    if args.quantize or args.fast or args.web_runtime is not None:
        raise UsageError("--quantize, --fast and --web-runtime go with --web DIR")
    from textsam.export.onnx import export_onnx

    args.model = args.model or "sam_vit_b"
    check_export(args.output, args.opset)  # before the (possibly slow) model build
    path = export_onnx(create_model_from_args(args), args.output, return_single_mask=args.return_single_mask,
                       with_text=args.text, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return EXIT_OK


def _run_web(args: argparse.Namespace) -> int:
    from textsam.export.web import check_web_folder, export_web
    from textsam.export.web_runtime import fetch_runtime
    from textsam.text.prompter import default_options

    args.model = args.model or WEB_DEFAULT_MODEL
    check_web_folder(args.web, args.opset)  # before the model build
    runtime = fetch_runtime(args.web_runtime)  # the same: a missing runtime is said before minutes of work
    model = create_model_from_args(args)
    options = default_options(model).fast() if args.fast else None
    out = export_web(model, args.web, name=args.model, runtime=runtime, opset=args.opset,
                     quantize=args.quantize, options=options)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB); serve it with: textsam app --static {out}")
    return EXIT_OK
