"""The one file format (textsam.weights.format): round trips, and files of the earlier formats still load
with identical tensors (format 1 written here by hand, exactly as the earlier code wrote it)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import textsam
from textsam.config import TextHeadConfig
from textsam.errors import WeightsError
from textsam.weights.format import ClipSpec, TextsamFile, convert, head_config_from_tensors, read, write
from textsam.weights.pretrained import bundled_path


@pytest.fixture(scope="module")
def shipped() -> TextsamFile:
    return read(bundled_path("shapes_tiny"))


def _v1_tensors(shipped: TextsamFile) -> dict[str, torch.Tensor]:
    """The shipped tensors a format-1 file could hold: all but the locator's presence readout (format 2's)."""
    return {k: v for k, v in shipped.tensors.items() if not k.startswith("text_locator.presence.")}


def _v1_bundle(shipped: TextsamFile, path: Path) -> dict[str, torch.Tensor]:
    """The bundled model in the format-1 bundle layout: the locator inside the projector, a zero word path."""
    tensors = {("text_projector.locator." + k[len("text_locator."):]) if k.startswith("text_locator.") else k: v
               for k, v in _v1_tensors(shipped).items()}
    width = shipped.text_head.token_dim
    tensors.update({"text_projector.word_out.weight": torch.zeros(width, width),
                    "text_projector.word_out.bias": torch.zeros(width)})
    head = shipped.text_head
    meta = {"format": "textsam.bundle", "model": "shapes_tiny", "clip_name": shipped.clip.model,
            "clip_config": shipped.clip.config, "training": {"note": "v1"}, "text_options": dict(shipped.text_options),
            "text_head": {"clip_dim": head.clip_dim, "token_dim": head.token_dim, "num_tokens": head.num_tokens,
                          "hidden_dim": head.hidden_dim, "word_dim": head.locator_word_dim, "word_heads": 4,
                          "locator_dim": head.locator_dim, "locator_kind": "regions",
                          "locator_appearance": head.locator_appearance, "locator_factors": head.locator_factors}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"textsam": json.dumps(meta)})
    return tensors


def test_a_format_1_bundle_loads_with_identical_tensors_and_predictions(shipped: TextsamFile, tmp_path: Path) -> None:
    old = tmp_path / "bundle_v1.safetensors"
    _v1_bundle(shipped, old)
    back = read(old)
    assert set(back.tensors) == set(_v1_tensors(shipped))  # renamed, the all-zero word path dropped
    assert all(torch.equal(back.tensors[k], v) for k, v in _v1_tensors(shipped).items())
    assert back.text_head == replace(shipped.text_head, locator_presence=False) and back.clip == shipped.clip
    assert textsam.TextOptions.from_dict(back.text_options) == textsam.TextOptions.from_dict(shipped.text_options)
    converted = convert(old, tmp_path / "bundle_v2.safetensors")
    again = read(converted)
    assert all(torch.equal(again.tensors[k], v) for k, v in _v1_tensors(shipped).items())

    image = np.zeros((96, 128, 3), np.uint8)
    image[20:60, 30:70] = (220, 40, 40)
    outs = []
    for checkpoint in (None, old, converted):
        model = textsam.create_model("shapes_tiny", checkpoint=checkpoint)
        predictor = textsam.TextSamPredictor(model)
        predictor.set_image(image)
        outs.append(predictor.predict(text="the red square", return_logits=True).masks)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_a_format_1_head_with_a_tuned_tower_beside_it(shipped: TextsamFile, tmp_path: Path) -> None:
    head = shipped.text_head
    projector = {k: v for k, v in shipped.tensors.items() if k.startswith("text_projector.")}
    tower = {"text_encoder.clip.ln_final.weight": torch.ones(8), "text_encoder.clip.ln_final.bias": torch.zeros(8)}
    meta = {"format": "textsam.text_head", "version": 1, "sam_model": "shapes_tiny", "clip_model": "shapes_tiny_clip",
            "clip_pretrained": None, "clip_dim": head.clip_dim, "token_dim": head.token_dim,
            "num_tokens": head.num_tokens, "hidden_dim": head.hidden_dim, "recipe": "text",
            "extra": {"text_encoder": "fine-tuned"}, "word_dim": 0, "locator_dim": 0}
    run = tmp_path / "run"
    run.mkdir()
    save_file(projector, str(run / "text_head.safetensors"), metadata={"textsam": json.dumps(meta)})
    with pytest.raises(WeightsError, match="model.safetensors, which is missing"):
        read(run / "text_head.safetensors")
    trained = {"format": "textsam.trained", "sam_model": "shapes_tiny", "recipe": "text", "step": 5,
               "clip": "shapes_tiny_clip/None"}
    save_file({**projector, **tower}, str(run / "model.safetensors"), metadata={"textsam": json.dumps(trained)})
    back = read(run / "text_head.safetensors")
    assert back.clip.tensors == "text_tower" and back.text_head == TextHeadConfig(
        head.clip_dim, head.token_dim, head.num_tokens, head.hidden_dim)
    assert torch.equal(back.tensors["clip.ln_final.weight"], torch.ones(8))
    run_file = read(run / "model.safetensors")
    assert run_file.clip.spec == "shapes_tiny_clip" and run_file.training == {"recipe": "text", "step": 5}
    assert run_file.text_head == back.text_head  # read off the tensors' shapes


def test_round_trip_sparse_token_table_and_header(shipped: TextsamFile, tmp_path: Path) -> None:
    tables = [p for p in ("clip", "head_tower") if shipped.part(p)]
    dense = {p: shipped.part(p)["token_embedding.weight"] for p in tables}
    ids = torch.nonzero(dense["clip"].abs().sum(1)).flatten().tolist()
    tensors = {k: v for k, v in shipped.tensors.items() if ".token_embedding." not in k}
    tensors.update({f"{p}.token_embedding.weight": table for p, table in dense.items()})
    file = TextsamFile("shapes_tiny", shipped.clip, shipped.text_head, tensors, {"locator": {"grid": 8}},
                       {"stages": [1, 2]})
    path = write(tmp_path / "x.safetensors", file, dtype=torch.float16, sparse_token_ids=ids)
    back = read(path)
    for p, table in dense.items():
        assert torch.equal(back.part(p)["token_embedding.weight"], table.half()), p
    assert back.text_options == {"locator": {"grid": 8}} and back.training == {"stages": [1, 2]}
    assert back.parts == ["image_encoder", "prompt_encoder", "mask_decoder", "text_projector", "text_locator",
                          *tables]
    assert head_config_from_tensors(back.tensors) == shipped.text_head


def test_what_is_not_a_textsam_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="unknown parts"):
        write(tmp_path / "a.safetensors", TextsamFile(None, None, None, {"decoder.x": torch.zeros(1)}))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not a textsam file"):
        read(tmp_path / "plain.safetensors")
    path = write(tmp_path / "b.safetensors", TextsamFile("sam_vit_b", ClipSpec("x"), None,
                                                         {"mask_decoder.w": torch.zeros(1)}))
    raw = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["textsam"])
    raw["version"] = 99
    save_file({"mask_decoder.w": torch.zeros(1)}, str(path), metadata={"textsam": json.dumps(raw)})
    with pytest.raises(WeightsError, match="newer textsam"):
        read(path)
    partial = write(tmp_path / "c.safetensors", TextsamFile("sam_vit_b", None, None, {"mask_decoder.w": torch.zeros(1)}))
    with pytest.raises(WeightsError, match="cannot stand for a whole SAM"):
        textsam.create_model("sam_vit_b", checkpoint=partial)


def test_a_head_tower_beside_a_whole_clip(shipped: TextsamFile, tmp_path: Path) -> None:
    """Format 3: a whole CLIP (``clip.*``, what the engine scores with) and the text head's own fine-tuned text
    tower (``head_tower.*``) in one file: the head reads the tower, the engine the CLIP trained whole, both
    token tables stored sparsely; without the head only the whole CLIP is left."""
    from textsam.text.clip import is_text_tower_key

    clip = shipped.part("clip")
    ids = torch.nonzero(clip["token_embedding.weight"].abs().sum(1)).flatten().tolist()
    generator = torch.Generator().manual_seed(0)
    tower = {k: (v.float() + 0.05 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v
             for k, v in clip.items() if is_text_tower_key(k)}
    tensors = {k: v for k, v in shipped.tensors.items() if not k.startswith(("clip.", "head_tower."))}
    tensors.update({f"clip.{k}": v for k, v in clip.items()})
    tensors.update({f"head_tower.{k}": v for k, v in tower.items()})
    file = TextsamFile("shapes_tiny", replace(shipped.clip, tensors="full"), shipped.text_head, tensors)
    path = write(tmp_path / "m.safetensors", file, sparse_token_ids=ids)
    back = read(path)
    assert back.parts[-2:] == ["clip", "head_tower"]
    assert {"head_tower.token_embedding.ids", "clip.token_embedding.ids"} <= set(back.tensors)
    assert "head_tower.token_embedding.weight" not in back.tensors
    assert torch.equal(back.part("head_tower")["token_embedding.weight"][ids], tower["token_embedding.weight"][ids])

    model = textsam.create_model("shapes_tiny", checkpoint=path)
    head_state, engine_state = model.text_encoder.clip.state_dict(), model.scoring_encoder.clip.state_dict()
    assert model.scoring_encoder is model.engine_encoder is not model.text_encoder
    assert model.engine_encoder.clip.visual is model.text_encoder.clip.visual
    for k in ("transformer.resblocks.0.attn.in_proj_weight", "text_projection", "ln_final.weight"):
        assert torch.equal(head_state[k], tower[k]), k
        assert torch.equal(engine_state[k], clip[k].float()), k
    phrases = ["red circle", "blue square"]
    assert not torch.allclose(model.text_encoder.encode(phrases), model.engine_encoder.encode(phrases), atol=1e-3)
    assert not any(p.requires_grad for p in model.engine_encoder.parameters())

    blind = textsam.create_model("shapes_tiny", checkpoint=path, text_head=False)
    assert blind.engine_encoder is None and blind.scoring_encoder is blind.text_encoder
    assert torch.allclose(blind.text_encoder.encode(phrases), model.engine_encoder.encode(phrases))

    with pytest.raises(WeightsError, match="goes with a whole CLIP"):
        write(tmp_path / "bad.safetensors", replace(file, clip=replace(shipped.clip, tensors="text_tower")))
    with pytest.raises(WeightsError, match="goes with a whole CLIP"):
        write(tmp_path / "bad.safetensors", replace(file, text_head=None))
