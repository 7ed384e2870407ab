"""Training a CLIP for the training-free engine (textsam.train.engine_clip): the engine's texts with their
meaning, the multi-positive vocabulary loss, the crops as the engine makes them, training and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from textsam.errors import InputError
from textsam.train.engine_clip import (
    EngineClipConfig,
    Vocabulary,
    crop_bank,
    finer_patches,
    main,
    meaning,
    phrase_vocabulary,
    plural,
    train_engine_clip,
    vocabulary_loss,
)

COLOURS = ("red", "blue", "orange")
SHAPES = ("circle", "cross", "star")


def test_meaning_of_the_engine_texts() -> None:
    assert [plural(s) for s in SHAPES] == ["circles", "crosses", "stars"] and plural("berry") == "berries"
    assert meaning("red circle", COLOURS, SHAPES) == ("red", "circle", False)
    assert meaning("crosses", COLOURS, SHAPES) == (None, "cross", True)
    assert meaning("orange shape", COLOURS, SHAPES) == ("orange", None, False)
    assert meaning("red objects", COLOURS, SHAPES) == ("red", None, True)
    assert meaning("red", COLOURS, SHAPES) is None  # no noun
    assert meaning("leftmost star", COLOURS, SHAPES) is None  # a word of no known meaning
    vocab = Vocabulary(("red circle", "circle", "red shape", "blue circle", "circles", "red shapes"),
                       ("red", None, "red", "blue", None, "red"), ("circle", "circle", None, "circle", "circle", None),
                       (False, False, False, False, True, True))
    assert vocab.positives([("red", "circle")]).tolist() == [True, True, True, False, True, True]
    assert vocab.positives([("red", "star")]).tolist() == [False, False, True, False, False, True]
    # a union of two objects: only plural phrases that fit both
    assert vocab.positives([("red", "circle"), ("blue", "circle")]).tolist() == [False] * 4 + [True, False]
    assert vocab.positives([("red", "circle"), ("red", "star")]).tolist() == [False] * 5 + [True]
    assert vocab.colourless.tolist() == [False, True, False, False, True, False]


def test_vocabulary_loss_spreads_over_positives_and_ignores_what_is_left_out() -> None:
    positive = torch.tensor([[True, True, False, False], [False, False, True, False]])
    valid = torch.tensor([[True, True, True, True], [False, True, True, True]])
    good = torch.tensor([[5.0, 5.0, -5.0, -5.0], [0.0, -5.0, 5.0, -5.0]])
    bad = torch.tensor([[-5.0, -5.0, 5.0, 5.0], [0.0, 5.0, -5.0, 5.0]])
    assert vocabulary_loss(good, positive, valid) < vocabulary_loss(bad, positive, valid)
    moved = good.clone()
    moved[1, 0] = 100.0  # an entry left out of the softmax changes nothing
    assert torch.equal(vocabulary_loss(moved, positive, valid), vocabulary_loss(good, positive, valid))
    assert torch.isfinite(vocabulary_loss(good, positive, valid))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    synthetic = pytest.importorskip("textsam.data.synthetic")
    root = tmp_path_factory.mktemp("engine_clip") / "data"
    synthetic.generate(root, seed=0, num_train=6, num_val=1, num_test=1, image_size=64)
    return root


def test_vocabulary_and_crops_of_the_synthetic_data(data: Path) -> None:
    import json

    from textsam.data.coco import CocoDataset
    from textsam.data.shapes_render import COLOURS as ALL_COLOURS
    from textsam.data.shapes_render import SHAPES as ALL_SHAPES
    from textsam.text.spatial import parse

    vocab = phrase_vocabulary(data / "train", sorted(ALL_COLOURS), ALL_SHAPES)
    heads = {parse(s["sent"]).head for ref in json.loads((data / "train" / "refs.json").read_text())
             for s in ref["sentences"]}
    assert set(vocab.phrases) <= heads | {parse(s).head for a in json.loads((data / "train" / "absent.json").read_text())
                                          for s in a["sentences"]}
    assert len(vocab.phrases) >= 5 and all(meaning(p, sorted(ALL_COLOURS), ALL_SHAPES) for p in vocab.phrases)
    coco = CocoDataset(data / "train" / "instances.json", data / "train" / "images")
    groups = [r["ann_ids"] for r in json.loads((data / "train" / "refs.json").read_text()) if len(r["ann_ids"]) > 1]
    assert groups
    bank = crop_bank(coco, 32, groups=groups)
    n = sum(len(coco.anns_for_image(i)) for i in coco.image_ids())
    unions = {tuple(g) for g in groups}
    assert bank.crops.shape == (n + len(unions), 4, 32, 32, 3) and bank.crops.dtype == torch.uint8
    assert int(bank.unions.sum()) == len(unions) and int((~bank.unions).sum()) == n
    assert all((len(m) > 1) == u for m, u in zip(bank.members, bank.unions))
    assert {c for m in bank.members for c, _ in m} <= set(ALL_COLOURS)
    assert {k for m in bank.members for _, k in m} <= set(ALL_SHAPES)
    def described(ids):
        return sorted((coco.annotation(i).extra["colour"], coco.categories[coco.annotation(i).category_id]) for i in ids)
    assert sorted(sorted(m) for m, u in zip(bank.members, bank.unions) if u) == sorted(described(g) for g in unions)
    # the engine's own crop view, resized as open_clip does, is the bank's first view
    from PIL import Image

    from textsam.text.scoring import crop_views

    first = coco.anns_for_image(coco.image_ids()[0])[0]
    image = coco.load_image(first.image_id)
    x, y, w, h = first.bbox
    view = crop_views(image, np.asarray(coco.mask(first), bool)[None], np.array([[x, y, x + w, y + h]]), ("crop",))[0][0]
    side = min(view.size)
    resized = view.resize((round(view.size[0] * 32 / side), round(view.size[1] * 32 / side)), Image.BICUBIC)
    left, top = (resized.size[0] - 32) // 2, (resized.size[1] - 32) // 2
    assert np.array_equal(np.asarray(resized.crop((left, top, left + 32, top + 32))), bank.crops[0, 0].numpy())


def test_training_lowers_the_loss_and_lock_image_keeps_the_image_tower(data: Path, clip_spec: str) -> None:
    from textsam.data.coco import CocoDataset
    from textsam.data.shapes_render import COLOURS as ALL_COLOURS
    from textsam.data.shapes_render import SHAPES as ALL_SHAPES
    from textsam.train.clip_pretrain import load_initial_clip

    coco = CocoDataset(data / "train" / "instances.json", data / "train" / "images")
    vocab = phrase_vocabulary(data / "train", sorted(ALL_COLOURS), ALL_SHAPES)
    init = load_initial_clip(clip_spec)
    size = int(init.model_cfg["vision_cfg"]["image_size"])
    bank = crop_bank(coco, size)
    before = {k: v.clone() for k, v in init.model.state_dict().items()}
    config = EngineClipConfig(steps=30, batch_size=32, lr=3e-3, warmup_steps=2, lock_image=True)
    losses = train_engine_clip(init.model, init.tokenizer, bank, vocab, config, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    after = init.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("visual."))
    assert not torch.equal(after["text_projection"], before["text_projection"])
    assert float(after["logit_scale"].exp()) == pytest.approx(config.ranking_scale)  # saved for the ranking
    with pytest.raises(InputError, match="colourless_fraction"):
        EngineClipConfig(colourless_fraction=1.5)


def test_cli_writes_a_clip_the_engine_loads(data: Path, clip_spec: str, tmp_path: Path) -> None:
    from textsam.text.clip import TextEncoder

    out = tmp_path / "engine_clip"
    assert main(["--data", str(data), "--init", clip_spec, "--out", str(out), "--steps", "3", "--batch-size", "8"]) == 0
    encoder = TextEncoder.create(f"local-dir:{out}", None)
    assert encoder.encode(["red circle"]).shape[0] == 1
    trained, start = encoder.clip.state_dict(), TextEncoder.create(clip_spec, None).clip.state_dict()
    assert not torch.equal(trained["visual.proj"], start["visual.proj"])  # both towers trained


def test_finer_patches_is_the_tower_on_an_enlarged_input(clip_spec: str, tmp_path: Path) -> None:
    """``--patch-size``: the tower with patches half as wide gives exactly the old patch embeddings of the input
    enlarged twice (nearest), and the old tower's output there with the interpolated positions; the config it
    returns loads back as the same model."""
    from copy import deepcopy

    import torch.nn.functional as F

    from textsam.text.clip import TextEncoder
    from textsam.train.clip_pretrain import load_initial_clip, save_local_dir

    init = load_initial_clip(clip_spec)
    new, cfg = finer_patches(init.model, init.model_cfg, 4)
    assert (cfg["vision_cfg"]["patch_size"], init.model_cfg["vision_cfg"]["patch_size"]) == (4, 8)
    x = torch.rand(2, 3, 32, 32)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(new.visual.conv1(x), init.model.visual.conv1(up), atol=1e-5, rtol=1e-5)
        old = deepcopy(init.model)
        old.visual.positional_embedding, old.visual.grid_size = new.visual.positional_embedding, new.visual.grid_size
        torch.testing.assert_close(new.encode_image(x), old.encode_image(up), atol=1e-5, rtol=1e-5)
        assert torch.equal(new.visual.proj, init.model.visual.proj) and new.visual.positional_embedding.shape[0] == 65
        loaded = TextEncoder.create(f"local-dir:{save_local_dir(new, cfg, tmp_path / 'p4')}", None).clip
        torch.testing.assert_close(loaded.encode_image(x), new.encode_image(x))
    with pytest.raises(InputError, match="divide"):
        finer_patches(init.model, init.model_cfg, 3)


def test_cli_patch_size_and_bf16(data: Path, clip_spec: str, tmp_path: Path) -> None:
    from textsam.text.clip import TextEncoder

    out = tmp_path / "p4"
    assert main(["--data", str(data), "--init", clip_spec, "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--patch-size", "4", "--bf16"]) == 0
    clip = TextEncoder.create(f"local-dir:{out}", None).clip
    assert clip.visual.conv1.weight.shape[-1] == 4 and clip.visual.conv1.weight.dtype == torch.float32
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--init", clip_spec, "--out", str(out), "--patch-size", "3"])
    with pytest.raises(InputError, match="precision"):
        EngineClipConfig(precision="fp16")


def test_cli_device(data: Path, clip_spec: str, tmp_path: Path) -> None:
    from textsam.text.clip import TextEncoder

    out = tmp_path / "cpu"
    assert main(["--data", str(data), "--init", clip_spec, "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--device", "cpu"]) == 0
    assert TextEncoder.create(f"local-dir:{out}", None).clip.visual.proj.device.type == "cpu"
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--init", clip_spec, "--out", str(out), "--device", "no-such-device"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--data", str(data), "--init", clip_spec, "--out", str(out), "--device", "cuda"])
