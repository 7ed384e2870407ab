"""The training recipes for the published models (configs/sam_*.toml) run end to end on the shared samples.

Each test loads a shipped config and changes only what a machine without the published weights and data
needs: ``[data] root`` (the sample laid out as ``textsam data download`` writes it), the start weights
(random weights of the right shapes, written in the official format), the CLIP (random, saved as an open_clip
``local-dir``), and the sizes (2 steps of 1 sample, 1 crop variant, no validation pass in the default run).
It then trains through the CLI, loads the exported head with ``create_model(..., text_head=FILE)`` and
evaluates it with ``textsam eval refer`` on the RefCOCO-style sample (the numbers mean nothing with random
weights; the tests show that the path works).

Default run: ``sam_vit_b`` for real, with a small random CLIP of ViT-B/16's embedding width (512): a random
ViT-B/16 takes 5 s to build here, three times per recipe. The image embedding (17 s for ViT-B at 1024 px on
this 2-core CPU) is computed once into a cache shared by the vit_b recipes, as the shipped configs share
theirs. ``slow``: every recipe with its real CLIP architecture (ViT-B/16, ViT-L/14, ViT-L/14@336) and
``sam_vit_h``.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import REPO

RECIPES = ("sam_vit_b_clip_b16_text", "sam_vit_b_clip_b16_crops", "sam_vit_b_clip_l14_text",
           "sam_vit_h_clip_l14_text", "sam_vit_h_clip_l14_336_crops")
IMAGE_ID = 17627  # the one image of the sample that both coco_val2017_tiny and refcocos_on_coco_tiny hold
VAL_IMAGE_ID = 37777  # the validation image of the slow run


def _subset(instances: dict, image_ids: set[int]) -> dict:
    return {**instances, "images": [im for im in instances["images"] if im["id"] in image_ids],
            "annotations": [a for a in instances["annotations"] if a["image_id"] in image_ids]}


@pytest.fixture(scope="module")
def data_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared samples in the layout the recipes read (``data/coco/...``, ``data/refcoco*/refs(...).p``):
    COCO instances and images from coco_val2017_tiny (image 17627, and 37777 for the slow run's validation),
    the refs of refcocos_on_coco_tiny on those images as RefCOCO pickles (17627's ref in split "train",
    37777's in "val"; the same file for RefCOCO, RefCOCO+ and RefCOCOg)."""
    root = tmp_path_factory.mktemp("recipe_data")
    coco = shared_data / "coco_val2017_tiny"
    (root / "coco" / "annotations").mkdir(parents=True)
    instances = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    subset = _subset(instances, {IMAGE_ID, VAL_IMAGE_ID})
    (root / "coco" / "annotations" / "instances_train2017.json").write_text(json.dumps(subset))
    (root / "coco" / "train2017").symlink_to(coco / "val2017", target_is_directory=True)
    refs = json.loads((shared_data / "refcocos_on_coco_tiny" / "refs.json").read_text())
    split = {IMAGE_ID: "train", VAL_IMAGE_ID: "val"}
    kept = [{**r, "split": split[r["image_id"]]} for r in refs if r["image_id"] in split]
    assert sorted(r["split"] for r in kept) == ["train", "val"]
    for name, file in (("refcoco", "refs(unc).p"), ("refcoco+", "refs(unc).p"), ("refcocog", "refs(umd).p")):
        (root / name).mkdir()
        (root / name / file).write_bytes(pickle.dumps(kept, protocol=2))
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files shared by the module's tests: checkpoints, CLIPs and the embedding cache of each SAM."""
    return tmp_path_factory.mktemp("recipes")


def sam_checkpoint(work: Path, model: str) -> Path:
    """Random weights of ``model`` in the official segment-anything ``.pth`` format (written once)."""
    path = work / f"{model}_random.pth"
    if not path.is_file():
        from .tiny import official_sam

        torch.save(official_sam(model.removeprefix("sam_"), seed=0).state_dict(), path)
    return path


# a small CLIP of ViT-B/16's embedding width (512) with the real tokenizer and context
SMALL_B16_WIDTH = {
    "embed_dim": 512, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 1, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def clip_dir(work: Path, name: str) -> str:
    """``local-dir:`` spec of a random CLIP: ``"small_b16_width"`` (:data:`SMALL_B16_WIDTH`) or an open_clip
    architecture name (its real config at random init)."""
    from textsam.train.clip_pretrain import build_clip, save_local_dir

    path = work / f"clip_{name}"
    if not path.is_dir():
        import open_clip

        cfg = SMALL_B16_WIDTH if name == "small_b16_width" else open_clip.get_model_config(name)
        torch.manual_seed(0)
        save_local_dir(build_clip(cfg), cfg, path)
    return f"local-dir:{path}"


def train_briefly(name: str, data_root: Path, work: Path, tmp_path: Path, *, clip: str, steps: int,
                  validate: bool = False) -> tuple[Any, Path, Path, list[dict]]:
    """Train the shipped recipe ``name`` for ``steps`` steps of 1 sample through ``textsam train`` (random SAM
    weights, ``clip``, the samples' data, the shared embedding cache); returns ``(config, SAM checkpoint, run
    folder, log records)``."""
    from textsam.cli import main
    from textsam.train.config_file import load_config, save_config

    shipped = load_config(REPO / "configs" / f"{name}.toml")
    checkpoint = sam_checkpoint(work, shipped.model)
    cfg = replace(
        shipped, pretrained=False, checkpoint=str(checkpoint), clip=clip, steps=steps, batch_size=1, num_workers=0,
        checkpoint_every=0, eval_every=0, log_every=1, progress=False,
        data=replace(shipped.data, root=str(data_root), val_split=shipped.data.val_split if validate else None,
                     eval_samples=1),
        augment=replace(shipped.augment, crop_variants=1),
        cache=replace(shipped.cache, dir=str(work / "cache" / shipped.model)),
    )
    save_config(cfg, tmp_path / "run.json")
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "run.json"), "--out", str(run), "--device", "cpu"]) == 0
    return shipped, checkpoint, run, [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def run_recipe(name: str, data_root: Path, work: Path, tmp_path: Path, shared_data: Path, *, clip: str,
               validate: bool = False) -> dict:
    """Train recipe ``name`` for 2 steps through the CLI, load its head, evaluate it; returns the report."""
    import textsam
    from textsam.cli import main
    from textsam.weights.format import read

    shipped, checkpoint, run, logs = train_briefly(name, data_root, work, tmp_path, clip=clip, steps=2,
                                                   validate=validate)
    losses = [r["loss"] for r in logs if "loss" in r]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2] and all(math.isfinite(v) for v in losses)
    assert validate == any("eval" in r for r in logs)
    images = list((work / "cache" / shipped.model / "images").glob("*/*/*.pt"))
    assert images and all(torch.load(p, weights_only=True).dtype == torch.float16 for p in images)

    exported = read(run / "model.safetensors")
    assert exported.sam_model == shipped.model and exported.clip is not None and exported.clip.model == clip
    assert {"prompt_encoder", "mask_decoder", "text_projector"} <= set(exported.parts)
    assert "image_encoder" not in exported.parts and exported.text_head is not None
    assert exported.text_head.num_tokens == shipped.text_head.num_text_tokens
    assert read(run / "text_head.safetensors").parts == ["text_projector"]

    # the run's weights load as a text head over the (here random) published SAM: its decoder and projector
    model = textsam.create_model(shipped.model, checkpoint=checkpoint, text_head=run / "model.safetensors")
    assert model.text_projector is not None
    decoder = exported.part("mask_decoder")
    state = model.mask_decoder.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in decoder.items())

    out = tmp_path / "eval"
    assert main(["eval", "refer", "--data", str(shared_data / "refcocos_on_coco_tiny"), "--limit", "1",
                 "--model", shipped.model, "--checkpoint", str(checkpoint), "--text-head", str(run / "model.safetensors"),
                 "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").is_file()
    assert report["model"]["text_head"] == str(run / "model.safetensors")
    metrics = report["metrics"]
    assert {"mIoU", "cIoU"} <= set(metrics) or {"miou", "ciou"} <= {k.lower() for k in metrics}
    return report


def test_vit_b_text_recipe_trains_exports_loads_and_evaluates(data_root: Path, work: Path, tmp_path: Path,
                                                             shared_data: Path) -> None:
    """configs/sam_vit_b_clip_b16_text.toml: COCO category names + the three refs files, 2 steps on sam_vit_b."""
    run_recipe("sam_vit_b_clip_b16_text", data_root, work, tmp_path, shared_data,
               clip=clip_dir(work, "small_b16_width"))


def test_vit_b_crops_recipe_trains_and_its_head_loads(data_root: Path, work: Path, tmp_path: Path,
                                                      shared_data: Path) -> None:
    """configs/sam_vit_b_clip_b16_crops.toml (the SAM paper's recipe) on sam_vit_b, reusing the text recipe's
    image embeddings from the shared cache; evaluated in the slow run (17 s more for the image)."""
    import textsam
    from textsam.weights.format import read

    shipped, checkpoint, run, logs = train_briefly("sam_vit_b_clip_b16_crops", data_root, work, tmp_path,
                                                   clip=clip_dir(work, "small_b16_width"), steps=1)
    assert [r["step"] for r in logs] == [1] and all(math.isfinite(r["loss"]) for r in logs)
    crops = list((work / "cache" / shipped.model / "crops").glob("*/train/*.pt"))
    assert crops and all(torch.load(p, weights_only=True).shape == (1, 512) for p in crops)
    exported = read(run / "model.safetensors")
    assert exported.training["recipe"] == "clip_crops" and "text_projector" in exported.parts
    model = textsam.create_model(shipped.model, checkpoint=checkpoint, text_head=run / "model.safetensors")
    tokens = model.text_projector(model.text_encoder.encode(["the white car"]))
    assert tokens.shape == (1, shipped.text_head.num_text_tokens, 256)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_with_its_real_architectures(name: str, data_root: Path, work: Path, tmp_path: Path,
                                                  shared_data: Path) -> None:
    """Each recipe with its SAM and its CLIP architecture at random init (vit_b: validation pass too)."""
    from textsam.text.clip import parse_clip_spec
    from textsam.train.config_file import load_config

    shipped = load_config(REPO / "configs" / f"{name}.toml")
    arch, _tag = parse_clip_spec(shipped.clip)
    try:
        report = run_recipe(name, data_root, work, tmp_path, shared_data, clip=clip_dir(work, arch),
                            validate=shipped.model == "sam_vit_b")
    finally:
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
    assert report["metrics"]


def test_recipe_configs_say_what_they_train_and_keep_val_and_test_out() -> None:
    """The shipped recipes: the published SAM and CLIP names, frozen cached encoders, train splits only, the
    images of every val/test ref kept out, a header that says what, on what data and for how long."""
    from textsam.train.config_file import load_config

    clips = {"b16": "ViT-B-16-quickgelu/openai", "l14": "ViT-L-14-quickgelu/openai",
             "l14_336": "ViT-L-14-336-quickgelu/openai"}
    for name in RECIPES:
        path = REPO / "configs" / f"{name}.toml"
        cfg, header = load_config(path), path.read_text().split("\n\n")[0]
        model, clip, recipe = name.split("_clip_")[0], name.split("_clip_")[1].rsplit("_", 1)[0], name.rsplit("_", 1)[1]
        assert cfg.model == model and cfg.pretrained and cfg.clip == clips[clip]
        assert cfg.recipe == {"text": "text", "crops": "clip_crops"}[recipe]
        assert cfg.freeze.image_encoder and cfg.freeze.text_encoder and cfg.cache.dir and cfg.cache.dtype == "float16"
        assert cfg.amp == "auto" and cfg.prompt_mix.point > 0 and cfg.prompt_mix.box > 0
        d = cfg.data
        assert d.refs_split_field and d.train_split == "train" and d.val_split == "val"
        assert d.instances == "coco/annotations/instances_train2017.json" and d.images == "coco/train2017"
        if cfg.recipe == "text":
            assert d.refs == "refcoco/refs(unc).p" and d.category_phrases
            assert d.extra_refs == ("refcoco+/refs(unc).p", "refcocog/refs(umd).p")
        for word in ("Trains:", "Data", "How long:", "Run: torchrun", "Evaluate: textsam eval refer"):
            assert word in header, (name, word)
