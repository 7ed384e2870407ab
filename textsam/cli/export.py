"""``textsam export``: the prompt encoder + mask decoder as an ONNX graph with SAM's ONNX interface."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK, Subparsers, add_command, add_model_options, create_model_from_args


def add_parser(subparsers: Subparsers) -> None:
    """``textsam export --model NAME -o decoder.onnx [--text] [--return-single-mask] [--opset N]``."""
    p = add_command(
        subparsers, "export", "export the prompt encoder + mask decoder to ONNX (SAM's ONNX interface)",
        description=(
            "Write an ONNX graph of the prompt encoder and mask decoder with SAM's official inputs "
            "(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size) and "
            "outputs (masks, iou_predictions, low_res_masks). --text adds a text_embedding input "
            "(model.text_encoder.encode([phrase])) whose text-head tokens join the point tokens; a text head's "
            "locator is not part of the graph. The image encoder is not part of the graph either: compute the "
            "embedding with TextSamPredictor.get_image_embedding()."
        ),
    )
    add_model_options(p, clip=False, device=False)
    p.add_argument("--text", action="store_true", help="add the text_embedding input (needs a text head)")
    p.add_argument("--return-single-mask", action="store_true",
                   help="return one mask (SAM's choice rule) instead of all four mask tokens")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, at least 11)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the .onnx file to write")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Check the output path and opset, build the model, write the graph and print its size."""
    from textsam.export.onnx import check_export, export_onnx

    check_export(args.output, args.opset)  # before the (possibly slow) model build
    path = export_onnx(create_model_from_args(args), args.output, return_single_mask=args.return_single_mask,
                       with_text=args.text, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return EXIT_OK
