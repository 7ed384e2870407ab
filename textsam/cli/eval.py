"""``textsam eval BENCHMARK --data ROOT --out DIR``: benchmarks with a resumable results file and a report.

Examples::

    textsam eval refer --data ../shared/data/refcocos_on_coco_tiny --clip ViT-B-16-quickgelu/openai --out runs/refer
    textsam eval instances --data ../shared/data/coco_val2017_tiny --templates single --limit 10 --out runs/coco
    textsam eval semseg --data ../shared/data/ade20k_sceneparsing_sample --layout ade20k --out runs/ade
    textsam eval points --data ../shared/data/coco_val2017_tiny --out runs/points
    python -m torch.distributed.run --nproc_per_node 2 -m textsam eval refer --data ... --out runs/refer
    textsam eval instances --data ../shared/data/coco_val2017_tiny --predictions results.json --out runs/rescore
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from textsam.errors import InputError

from .common import (
    EXIT_OK,
    FAST_HELP,
    Subparsers,
    add_command,
    add_model_options,
    add_no_progress,
    resolve_fast_model,
    text_head_arg,
)

__all__ = ["add_parser", "run_eval"]

BENCHMARK_HELP = (
    "refer: RefCOCO-style referring expressions (mIoU, cIoU, P@k); synthetic: the synthetic generator's test "
    "split, scored like refer; instances: COCO/LVIS mask AP of every category name; semseg: class-name "
    "semantic segmentation (full- and oracle-vocabulary mIoU); points: SAM's single-point protocol (mIoU at "
    "1, 2, 3, 5, 9 clicks)"
)


def add_parser(subparsers: Subparsers) -> None:
    """``textsam eval BENCHMARK --data ROOT --out DIR``: benchmarks with report.json / report.md."""
    p = add_command(
        subparsers, "eval", "evaluate on a benchmark (refer, synthetic, instances, semseg, points)",
        description="Evaluate a model on a benchmark and write OUT/results.jsonl (one line per image, resumable), "
        "OUT/report.json and OUT/report.md. Run under torchrun (python -m torch.distributed.run "
        "--nproc_per_node N -m textsam eval ...) to shard images over processes. " + BENCHMARK_HELP,
    )
    p.add_argument("benchmark", choices=("refer", "synthetic", "instances", "semseg", "points"), metavar="BENCHMARK",
                   help="refer, synthetic, instances, semseg or points")
    p.add_argument("--data", required=True, type=Path, metavar="ROOT", help="the dataset folder")
    p.add_argument("--split", metavar="NAME", help="split (COCO: val2017; refer: a refs split; synthetic: test)")
    add_model_options(p, device_help="cpu, cuda, cuda:1 (default: cpu; under torchrun cuda = cuda:LOCAL_RANK)")
    p.add_argument("--fast", action="store_true",
                   help=f"the CPU fast path: {FAST_HELP} (the model stays --model)")
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
    add_no_progress(p)
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (rerun to resume)")
    p.set_defaults(handler=run_eval)


def _clicks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InputError(f"--clicks takes positive integers separated by commas, e.g. 1,2,3,5,9; got {text!r}")
    return values


def _print_summary(report: dict[str, Any], out: Any) -> None:
    def flat(prefix: str, value: Any) -> list[str]:
        if isinstance(value, dict):
            return [line for k, v in value.items() for line in flat(f"{prefix}{k} ", v)]
        if isinstance(value, float):
            return [f"  {prefix.strip()}: {100 * value:.2f}" if value >= 0 else f"  {prefix.strip()}: n/a"]
        return [f"  {prefix.strip()}: {value}"]

    print(f"{report['benchmark']}: {report.get('protocol')}", file=sys.stderr)
    for line in flat("", report.get("metrics", {})):
        print(line, file=sys.stderr)
    for problem in report.get("problems", []):
        print(f"  problem: {problem}", file=sys.stderr)
    print(f"report: {out / 'report.md'}", file=sys.stderr)


def run_eval(args: argparse.Namespace) -> int:
    """Run ``textsam eval``; 0 on success (problems are listed in the report and on stderr)."""
    from textsam.eval.runners import (
        build_benchmark,
        predictor_factory,
        resolve_templates,
        run_benchmark,
        score_predictions,
    )

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be a positive number of images, got {args.limit}")
    text = args.benchmark != "points"
    if not text and args.templates is not None:
        raise InputError("--templates has no effect on the points benchmark (it uses no text)")
    templates = resolve_templates(args.templates) if text else None
    protocols = None if args.protocol in (None, "both") else [args.protocol]
    benchmark = build_benchmark(
        args.benchmark, args.data, split=args.split, layout=args.layout, ignore_index=args.ignore_index,
        templates=templates, protocols=protocols, clicks=_clicks(args.clicks),
        categories=[c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None,
    )
    out = Path(args.out)
    if args.predictions is not None:
        report = score_predictions(benchmark, args.predictions, out, limit=args.limit)
    else:
        from textsam.factory import check_device, get_config

        get_config(args.model)  # an unknown name or device fails before any output is written
        check_device(args.device)
        resolve_fast_model(args, args.model)  # --fast: its CLIP (ViT-B/32 for a published SAM), named in run.json
        model_info = {
            "name": args.model,
            "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
            "clip": args.clip,
            "text_head": "none (training-free engine)" if args.no_text_head else
            (None if args.text_head is None else str(args.text_head)),
        }
        if args.fast:  # only when given, so runs written before --fast keep their description
            model_info["engine"] = "fast (TextOptions.fast)"
        factory = predictor_factory(args.model, checkpoint=args.checkpoint, clip=args.clip,
                                    text_head=text_head_arg(args), device=args.device, templates=templates,
                                    fast=args.fast)
        try:
            report = run_benchmark(benchmark, out, factory=factory, model_info=model_info, limit=args.limit,
                                   progress=not args.no_progress)
        except KeyboardInterrupt:
            print(f"stopped: the images finished so far are kept in {out}; run the same command again to "
                  "resume", file=sys.stderr)
            raise
    if report is not None:  # rank 0 (or a single process)
        _print_summary(report, out)
    return EXIT_OK
