"""``textsam eval BENCHMARK --data ROOT --out DIR``: the handler (the parser is in :mod:`textsam.cli`).

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
import logging
import sys
from typing import Any

from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["run_eval"]


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
    from pathlib import Path

    from .runners import (
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
        from ..factory import check_device, get_config

        get_config(args.model)  # an unknown name or device fails before any output is written
        check_device(args.device)
        model_info = {
            "name": args.model,
            "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
            "clip": args.clip,
            "text_head": None if args.text_head is None else str(args.text_head),
        }
        factory = predictor_factory(args.model, checkpoint=args.checkpoint, clip=args.clip,
                                    text_head=args.text_head, device=args.device, templates=templates)
        try:
            report = run_benchmark(benchmark, out, factory=factory, model_info=model_info, limit=args.limit,
                                   progress=not args.no_progress)
        except KeyboardInterrupt:
            print(f"stopped: the images finished so far are kept in {out}; run the same command again to "
                  "resume", file=sys.stderr)
            raise
    if report is not None:  # rank 0 (or a single process)
        _print_summary(report, out)
    return 0
