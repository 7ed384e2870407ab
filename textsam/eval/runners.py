"""Benchmarks by name: build one from a data folder, build the predictor, run or score, report.

===============  ==========================================  =========================================
benchmark        data (``--data ROOT``)                      metrics
===============  ==========================================  =========================================
``refer``        refs.json / refs(unc).p + instances.json    mIoU, cIoU, P@0.5..0.9
                 + images/ (:mod:`textsam.eval.refer`)
``synthetic``    the synthetic generator's root; split       same as refer
                 ``test`` by default
``instances``    COCO / LVIS annotations + images            AP, AP50, AP75, APs, APm, APl (COCOeval)
                 (:mod:`textsam.eval.instances`)
``semseg``       ade20k / voc / context / camvid layouts     mIoU, pixel accuracy per protocol
                 (:mod:`textsam.eval.semseg`)
``points``       COCO annotations + images                   mIoU at 1, 2, 3, 5, 9 clicks
                 (:mod:`textsam.eval.points`)
===============  ==========================================  =========================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Benchmark
from .runner import Runner, score_predictions

__all__ = ["BENCHMARKS", "build_benchmark", "resolve_templates", "predictor_factory", "run_benchmark",
           "detect_layout", "score_predictions", "Runner"]

BENCHMARKS = ("refer", "synthetic", "instances", "semseg", "points")
TEXT_BENCHMARKS = ("refer", "synthetic", "instances", "semseg")


def resolve_templates(spec: str | None) -> dict[str, Any]:
    """``{"name", "templates"}`` for a template-set name (``default``, ``imagenet80``, ``single``) or a
    text file with one template per line (``{}`` marks the phrase; blank and ``#`` lines skipped)."""
    from ..text import templates as tpl

    if spec is None:
        return {"name": "default", "templates": list(tpl.DEFAULT_TEMPLATES)}
    if spec in tpl.TEMPLATE_SETS:
        return {"name": spec, "templates": tpl.get_templates(spec)}
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--templates {spec!r} is neither a template set ({', '.join(tpl.list_template_sets())}) "
                         "nor a file of templates")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the templates file {path} ({err}); it must be UTF-8 text with one "
                         "template per line, such as 'a photo of a {}.'") from None
    return {"name": path.name, "templates": tpl.get_templates([ln for ln in lines if ln and not ln.startswith("#")])}


def detect_layout(root: Path) -> str:
    """Guess a semantic-segmentation layout from the folder's contents (an error when it is unclear)."""
    from ..data.semseg import LAYOUTS

    root = Path(root)
    subs = [root] + ([d for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else [])
    for d in subs:
        if (d / "objectInfo150.csv").is_file() or ((d / "images").is_dir() and (d / "annotations").is_dir()):
            return "ade20k"
        if (d / "SegmentationClassContext").is_dir():
            return "context"
        if (d / "SegmentationClass").is_dir():
            return "voc"
        if (d / "images").is_dir() and (d / "labels").is_dir():
            return "camvid"
    raise InputError(f"cannot tell the layout of {root}: pass --layout ({', '.join(LAYOUTS)})")


def build_benchmark(
    name: str,
    data: str | Path,
    *,
    split: str | None = None,
    layout: str | None = None,
    ignore_index: int | None = None,
    templates: dict[str, Any] | None = None,
    protocols: Sequence[str] | None = None,
    clicks: Sequence[int] | None = None,
    categories: Sequence[str] | None = None,
) -> Benchmark:
    """The benchmark ``name`` over the data folder ``data`` (see the module table)."""
    if name not in BENCHMARKS:
        raise InputError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)}")
    if categories is not None and name != "instances":
        raise InputError("--categories applies to the instances benchmark only")
    root = Path(data).resolve()
    if not root.exists():
        raise InputError(f"data folder not found: {root}")
    if name in TEXT_BENCHMARKS and templates is None:
        templates = resolve_templates(None)
    if name in ("refer", "synthetic"):
        from ..data.refer import ReferDataset
        from .refer import ReferBenchmark, find_refer_files

        if name == "synthetic" and split is None:
            split = "test"
        if name == "synthetic" and not ((root / split).is_dir() or (root / "refs.json").is_file()):
            raise InputError(f"{root} has no {split!r} split: write the synthetic data first with "
                             f"textsam.data.synthetic.generate({str(root)!r}, seed=0)")
        refs, inst, images = find_refer_files(root, split)
        ref_split = None if name == "synthetic" or (root / str(split)).is_dir() else split
        ds = ReferDataset(refs, inst, images, split=ref_split)
        info = {"root": str(root), "split": split, "refs": refs.name}
        absent_file = refs.parent / "absent.json"
        absent = None
        if name == "synthetic" and absent_file.is_file():
            import json

            absent = {int(a["image_id"]): list(a["sentences"]) for a in json.loads(absent_file.read_text())}
            info["absent"] = absent_file.name
        return ReferBenchmark(ds, templates=templates, name=name, data_info=info, absent=absent)
    if name in ("instances", "points"):
        from ..data.coco import CocoDataset
        from .instances import InstancesBenchmark, find_coco_files

        ann, images = find_coco_files(root, split)
        ds = CocoDataset(ann, images)
        info = {"root": str(root), "annotations": str(ann.relative_to(root)) if ann.is_relative_to(root) else str(ann)}
        if name == "instances":
            return InstancesBenchmark(ds, templates=templates, data_info=info, categories=categories)
        from .points import DEFAULT_CLICKS, PointsBenchmark

        return PointsBenchmark(ds, clicks=clicks or DEFAULT_CLICKS, data_info=info)
    from ..data.semseg import SemsegDataset
    from .semseg import PROTOCOLS, SemsegBenchmark

    layout = layout or detect_layout(root)
    ds = SemsegDataset.from_layout(layout, root, split=split, ignore_index=ignore_index)
    info = {"root": str(root), "layout": layout, "split": split, "ignore_index": ds.ignore_index}
    return SemsegBenchmark(ds, protocols=protocols or PROTOCOLS, templates=templates, data_info=info)


def predictor_factory(
    model: str = "sam_vit_b",
    *,
    checkpoint: str | Path | None = None,
    clip: str | None = None,
    text_head: str | Path | bool | None = None,
    device: str | None = None,
    templates: dict[str, Any] | None = None,
    fast: bool = False,
) -> Callable[[], Any]:
    """A function building ``TextSamPredictor(textsam.create_model(...))``, with ``templates`` (from
    :func:`resolve_templates`) as the phrase templates when given, and the fast path's engine
    (:meth:`~textsam.text.options.TextOptions.fast`) when ``fast``.

    Under torchrun, ``device="cuda"`` becomes ``cuda:<LOCAL_RANK>``.
    """

    def build() -> Any:
        import textsam
        from textsam.text.prompter import default_options

        dev = device
        if dev == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        net = textsam.create_model(model, checkpoint=checkpoint, clip=clip, text_head=text_head, device=dev)
        options = None
        if templates or fast:
            options = default_options(net)
        if templates:
            options = replace(options, scoring=replace(options.scoring, templates=tuple(templates["templates"])))
        if fast:
            return textsam.TextSamPredictor.fast(net, options)
        return textsam.TextSamPredictor(net, text_options=options)

    return build


def run_benchmark(
    benchmark: Benchmark,
    out_dir: str | Path,
    *,
    factory: Callable[[], Any],
    model_info: dict[str, Any],
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Run with a model (resumable, torchrun-sharded); the report on rank 0, None on other ranks."""
    return Runner(benchmark, out_dir, factory, model_info=model_info, limit=limit, progress=progress).run()
