"""``textsam label``: a vocabulary over images into a dataset (COCO, YOLO-seg, Label Studio, PNG masks),
resumable per image, in shards, and ``textsam label merge`` of the shards.

A thin client of :mod:`textsam.label`: inputs, ontology, the per-image store, the writers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from textsam.errors import InputError

from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Subparsers,
    add_command,
    add_model_options,
    add_no_progress,
    predictor_from_args,
    resolve_fast_model,
)

__all__ = ["add_parser", "run_label"]

FORMATS = ("coco", "yolo", "labelstudio", "masks")


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def add_parser(subparsers: Subparsers) -> None:
    """``textsam label INPUT... --classes A,B -o OUT --format coco`` and ``textsam label merge OUT_SHARD... -o OUT``."""
    p = add_command(
        subparsers, "label", "label images with a vocabulary into a dataset (COCO, YOLO-seg, Label Studio, masks)",
        description=(
            "Find every instance of every class on each image and write a dataset into OUT. INPUT: image files, "
            "folders (searched recursively), .txt files of image paths, COCO JSON files (their images). Each image's "
            "labels are kept in OUT/.textsam-label as soon as it is done, so the same command again resumes a "
            "killed run, and a finished one changes no file. Unreadable images are listed in OUT/skipped.json. "
            "--shard I/N labels every N-th image only (I from 0); then `textsam label merge OUT0 ... OUT{N-1} -o "
            "OUT --format F` writes the dataset. Exit status: 0 done, 2 a bad argument or some images skipped, "
            "1 an unexpected error, 130 interrupted."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="images, folders, .txt lists of paths or COCO JSON files; or `merge` then shard folders")
    voc = p.add_mutually_exclusive_group()
    voc.add_argument("--classes", metavar="A,B,C|FILE",
                     help="the classes: comma-separated, or a file with one class per line (or a JSON/YAML ontology)")
    voc.add_argument("--ontology", metavar="FILE",
                     help="a JSON or YAML mapping from what is typed to the model to the class saved, e.g. "
                          "{\"a photo of a red car\": \"car\"}")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="the dataset folder")
    p.add_argument("--format", choices=FORMATS, default="coco", help="dataset format (default: coco)")
    p.add_argument("--polygons", action="store_true", help="polygons instead of RLE masks (COCO)")
    p.add_argument("--min-score", type=_probability, default=0.0, metavar="S",
                   help="keep masks whose predicted IoU is at least S (default 0)")
    p.add_argument("--min-presence", type=_probability, metavar="P",
                   help="keep the classes whose presence is at least P (default: the model's own threshold)")
    p.add_argument("--negative-text", metavar="PHRASE",
                   help="what none of the classes is, e.g. 'shadow' (as `textsam segment --negative-text`)")
    p.add_argument("--one-per-class", action="store_true",
                   help="the best mask of each class found, all classes in one pass (faster with many classes) "
                        "instead of every instance")
    p.add_argument("--shard", metavar="I/N", help="label every N-th image from the I-th (0 <= I < N) only")
    p.add_argument("--review", action="store_true", help="also write an overlay per image and an HTML page")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray Data actors, one predictor each (needs "
                        "pip install 'textsam[distributed]'); the dataset is the same")
    p.add_argument("--workers", type=int, metavar="N",
                   help="--engine ray: the number of Ray workers, each with its own predictor (default 2; with "
                        "--device cuda each takes one GPU)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="--engine ray: a running Ray cluster (e.g. auto, ray://head:10001); default: a local Ray "
                        "instance on this machine, started and stopped by this command")
    add_model_options(p, default=None, fast=True)
    add_no_progress(p)
    p.set_defaults(handler=run_label)


def _ontology(args: argparse.Namespace) -> Any:
    from textsam.label.ontology import read_ontology

    if args.classes is None and args.ontology is None:
        raise InputError("give the classes: --classes 'person,car' (or a file), or --ontology FILE.json|yaml")
    if args.ontology is not None:
        path = Path(args.ontology)
        if not path.is_file():
            raise InputError(f"the ontology file {path} does not exist: give a JSON or YAML file")
        if path.suffix.lower() not in (".json", ".yaml", ".yml"):
            raise InputError(f"the ontology file {path} must be .json, .yaml or .yml")
        return read_ontology(path)
    return read_ontology(args.classes)


def _request(args: argparse.Namespace, ontology: Any, instances: str) -> dict[str, Any]:
    """What the labels depend on: the vocabulary, the model, the mode, the negative phrase (only when given, so a
    run without one resumes a store written before the option existed), textsam's version."""
    from textsam import __version__

    from .segment import _model_key

    request = {"ontology": [list(pair) for pair in zip(ontology.phrases, ontology.classes)], "model": _model_key(args),
               "no_text_head": bool(args.no_text_head), "instances": instances, "version": __version__}
    if getattr(args, "negative_text", None) is not None:
        request["negative_text"] = args.negative_text
    return request


def _check_writers(args: argparse.Namespace) -> None:
    from textsam.label.writers import get_review_writer, get_writer

    get_writer(args.format)
    if args.review:
        get_review_writer()


def _prepare(out: Path) -> Any:
    import os

    from textsam.label.store import Store

    from .segment import prepare_output_dir

    if out.exists() and not out.is_dir():
        raise InputError(f"the output path {out} is a file: give a folder with -o (it is created if missing)")
    if out.is_dir() and os.access(out, os.W_OK | os.X_OK):
        return Store(out)  # no probe file: a finished run changes nothing in OUT, not even its modification time
    prepare_output_dir(out)
    return Store(out)


def _finish(store: Any, run: dict[str, Any], ontology: Any, options: Any, args: argparse.Namespace) -> int:
    from textsam.label.writers import write_from_store

    images, skipped, changed = write_from_store(store, run, ontology, options, format=args.format,
                                                polygons=bool(args.polygons), review=bool(args.review))
    count = sum(len(im.instances) for im in images)
    what = "wrote" if changed else "unchanged:"
    print(f"{what} {args.format} dataset of {len(images)} image(s), {count} instance(s), "
          f"{len(ontology.categories)} class(es) in {store.out}", file=sys.stderr)
    if skipped:
        print(f"textsam: error: {len(skipped)} image(s) could not be read (listed in {store.out / 'skipped.json'}); "
              "the others are in the dataset", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def run_merge(args: argparse.Namespace, folders: list[str]) -> int:
    """``textsam label merge OUT_SHARD... -o OUT``: the shards' stores into OUT's, then the dataset."""
    from textsam.label.ontology import Ontology
    from textsam.label.run import LabelOptions
    from textsam.label.shards import copy_records, merge_stores

    if args.shard is not None:
        raise InputError("merge takes no --shard: give the shards' folders, e.g. textsam label merge OUT0 OUT1 -o OUT")
    missing = [f for f in folders if not Path(f).is_dir()]
    if missing:
        raise InputError(f"shard folder(s) not found: {', '.join(missing)}; check the paths")
    _check_writers(args)
    run, sources = merge_stores([Path(f) for f in folders])
    pairs = run["request"]["ontology"]
    ontology = Ontology(tuple(p for p, _ in pairs), tuple(c for _, c in pairs))
    options = LabelOptions(min_score=args.min_score, min_presence=args.min_presence,
                           instances=run["request"]["instances"])
    store = _prepare(Path(args.output))
    store.check_request(run["request_hash"], None)
    store.remove_leftovers()
    store.write_run(run)
    copy_records(sources, store)
    return _finish(store, run, ontology, options, args)


def _label_on_ray(args: argparse.Namespace, refs: Any, entries: Any, store: Any, phrases: Any,
                  instances: str) -> Any:
    """The images not yet in the store, labelled by Ray workers (same model options), written into the store."""
    from textsam.label.ray_engine import label_with_ray

    from .common import text_head_arg

    device = getattr(args, "device", None)
    model_args = {"name": args.model, "checkpoint": args.checkpoint, "clip": getattr(args, "clip", None),
                  "text_head": text_head_arg(args), "device": device, "fast": bool(getattr(args, "fast", False))}
    gpus = 1.0 if device is not None and str(device).startswith("cuda") else 0.0
    return label_with_ray(refs, entries, store, phrases, model_args, instances=instances,  # type: ignore[arg-type]
                          negative_text=args.negative_text,
                          workers=args.workers or 2, num_gpus_per_worker=gpus, address=args.ray_address,
                          progress=not args.no_progress)


def run_label(args: argparse.Namespace) -> int:
    """Run ``textsam label`` (see the parser's description for the exit status)."""
    from textsam.factory import check_device
    from textsam.label.inputs import collect_inputs
    from textsam.label.run import LabelOptions, label_into_store, plan_images
    from textsam.label.shards import inputs_digest, parse_shard, shard_images
    from textsam.label.store import request_hash

    resolve_fast_model(args, "sam_vit_b")

    if args.inputs and args.inputs[0] == "merge":
        return run_merge(args, list(args.inputs[1:]))
    ontology = _ontology(args)
    if args.negative_text is not None and not args.negative_text.strip():
        raise InputError("--negative-text is empty: give a phrase or leave the option out.")
    instances = "one" if args.one_per_class else "all"
    options = LabelOptions(min_score=args.min_score, min_presence=args.min_presence, instances=instances)
    shard = parse_shard(args.shard) if args.shard is not None else None
    _check_writers(args)
    if args.engine == "ray":
        from textsam.label.ray_engine import require_ray

        require_ray()  # before anything is written
        if args.workers is not None and args.workers < 1:
            raise InputError(f"--workers must be at least 1, got {args.workers}")
    elif args.workers is not None or args.ray_address is not None:
        raise InputError("--workers and --ray-address go with --engine ray")
    if args.engine == "local" or args.ray_address is None:
        check_device(getattr(args, "device", None))  # a remote cluster's devices are checked by its workers
    out = Path(args.output)
    inputs = collect_inputs(args.inputs, exclude=[out])
    request = _request(args, ontology, instances)
    digest = request_hash(request)
    store = _prepare(out)
    store.check_request(digest, None if shard is None else list(shard))
    store.remove_leftovers()
    refs = shard_images(inputs.images, shard)
    entries = plan_images(refs, digest)
    run = {"request": request, "request_hash": digest, "inputs": inputs_digest(inputs.images),
           "count": len(inputs.images), "shard": None if shard is None else list(shard),
           "image_root": str(inputs.root), "images": entries}
    store.write_run(run)
    done = sum(1 for e in entries if e["key"] is None or store.has(e["key"]))
    if done:
        print(f"{done} of {len(entries)} image(s) already labelled in {out} (same request): skipped", file=sys.stderr)

    def make_predictor() -> Any:
        return predictor_from_args(args)

    try:
        if args.engine == "ray":
            report = _label_on_ray(args, refs, entries, store, ontology.phrases, instances)
        else:
            report = label_into_store(refs, entries, store, ontology.phrases, make_predictor, instances=instances,
                                      negative_text=args.negative_text, progress=not args.no_progress)
    except KeyboardInterrupt:
        finished = sum(1 for e in entries if e["key"] is not None and store.has(e["key"]))
        print(f"textsam: interrupted: {finished} of {len(entries)} image(s) are labelled in {out}; run the same "
              "command again to finish the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    if report.failed:
        print(f"textsam: error: unexpected errors on {len(report.failed)} image(s) (listed above; run with -v for "
              "details and report them); run the same command again to retry them", file=sys.stderr)
        return EXIT_FAILURE
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: {len(entries)} of {len(inputs.images)} image(s) labelled in {out}; when "
              f"every shard is done: textsam label merge OUT0 ... OUT{shard[1] - 1} -o OUT --format {args.format}",
              file=sys.stderr)
        skipped = [e for e in entries if e["key"] is None or "skipped" in (store.read(e["key"]) or {})]
        if skipped:
            print(f"textsam: error: {len(skipped)} image(s) of this shard could not be read (the merge lists them in "
                  "skipped.json)", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK
    return _finish(store, run, ontology, options, args)
