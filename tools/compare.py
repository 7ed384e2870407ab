"""Score trained runs side by side on one split with the training evaluation (``textsam.train.evaluate``).

    python tools/compare.py runs/v2_tower runs/v2_regions_sep runs/v2_regions_sep_blind \
        --split test --by-kind --out runs/compare.json

Each run folder holds ``train_config.json`` and ``model.safetensors``. Every run is rebuilt from its own
config with its exported weights, then scored on the referring expressions of ``--split`` (for the
synthetic data, the unseen colour-shape combinations): mIoU of the most confident mask for one click at
the deepest interior point, the exact box, the phrase (CLIP *text* embedding, whatever the recipe
trained on) and phrase + click. Text-blind runs get the same zero vector they were trained with.
``--by-kind`` also scores each phrase kind of the refs file (``kind``: attribute, category, spatial) alone.

Research tooling: not part of the installed package (it needs a textsam checkout's environment).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from textsam.train.cache import EmbeddingCache, text_table
from textsam.train.config import CacheConfig
from textsam.train.config_file import load_config
from textsam.train.data import open_source
from textsam.train.evaluate import evaluate
from textsam.train.recipes import build_recipe, make_dataset
from textsam.train.weights import load_exported


def phrase_kinds(source: object) -> dict[tuple[int, str], str]:
    """``(image_id, sentence) -> kind`` from the refs' ``kind`` field (empty for sources without refs)."""
    return {
        (int(ref.image_id), str(text)): str(ref.extra.get("kind", "unknown"))
        for ref, _i, text in getattr(source, "expressions", lambda: [])()
    }


def score_run(run: Path, split: str, limit: int | None, by_kind: bool = False,
              device: torch.device | str = "cpu") -> dict[str, object]:
    """mIoU per prompt kind for the run in folder ``run`` on ``split`` (and per phrase kind if ``by_kind``)."""
    device = torch.device(device)
    cfg = replace(load_config(run / "train_config.json"), cache=CacheConfig(), progress=False)
    if cfg.recipe == "clip_crops":  # scored with text, on the referring phrases
        cfg = replace(cfg, data=replace(cfg.data, refs="{split}/refs.json"))
    recipe = build_recipe(cfg, device)  # start weights as in training (e.g. the SAM stage)
    load_exported(recipe.model, run / "model.safetensors")  # then the parts this run trained
    source = open_source(cfg, split, want_refs=True)
    dataset = make_dataset(recipe, source, train=False, split=split, limit=limit)
    if recipe.text_encoder is not None and recipe.module.text_encoder is None:  # a trained tower runs per batch
        dataset.cache = EmbeddingCache.in_memory(text_table(recipe, [e.phrase for e in dataset.entries]))
    t0 = time.perf_counter()
    with torch.no_grad():
        if not by_kind or not dataset.entries:
            metrics: dict[str, object] = {**evaluate(recipe, dataset, device), "samples": len(dataset)}
        else:
            # Each expression is scored once, in its kind's group; the overall means are the
            # sample-weighted means of the groups.
            kinds = phrase_kinds(source)
            everything = dataset.entries
            groups: dict[str, list] = {}
            for entry in everything:
                groups.setdefault(kinds.get((entry.image_id, entry.phrase), "unknown"), []).append(entry)
            per_kind: dict[str, dict[str, float]] = {}
            for kind, entries in sorted(groups.items()):
                dataset.entries = entries
                per_kind[kind] = {**evaluate(recipe, dataset, device), "samples": len(entries)}
            dataset.entries = everything
            names = [k for k in next(iter(per_kind.values())) if k != "samples"]
            metrics = {k: sum(g[k] * g["samples"] for g in per_kind.values()) / len(everything) for k in names}
            metrics.update(samples=len(everything), by_kind=per_kind)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/compare.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="score at most N expressions (evenly spread)")
    parser.add_argument("--by-kind", action="store_true", help="also score each phrase kind (refs 'kind') alone")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="torch device to score on, e.g. cuda (default: cpu)")
    args = parser.parse_args(argv)
    results = {}
    for run in args.runs:
        results[str(run)] = score_run(run, args.split, args.limit, args.by_kind, args.device)
        print(run, json.dumps(results[str(run)]))
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
