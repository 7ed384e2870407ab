"""textsam.weights.checkpoint: reading files, format detection, the HF -> official key map, strict loading.

The HF test builds a tiny transformers ``SamModel`` and a tiny official segment-anything ``Sam`` of the
same shape, writes the HF one with ``save_pretrained``, maps its names with ``hf_to_sam`` and loads them
strictly into the official model: both models must then give the same logits and IoU predictions.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from textsam.errors import CheckpointMismatchError, WeightsError
from textsam.weights.checkpoint import (
    detect_format,
    guess_model_name,
    hf_to_sam,
    load_into,
    read_state_dict,
    to_sam_state_dict,
)

sam_modeling = pytest.importorskip("segment_anything.modeling")

IMG = 256  # image side; embedding is IMG // 16 = 16
ENC = 64  # ViT width
DIM = 32  # prompt / decoder width
ENC_DEPTH = 2
ENC_HEADS = 2
WINDOW = 7
GLOBAL = (1,)
DEC_MLP = 64
DEC_HEADS = 4


def build_official_sam() -> nn.Module:
    """A tiny official SAM; pixel mean 0 / std 1 so ``Sam.forward`` sees the tensor we pass."""
    m = sam_modeling
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            img_size=IMG,
            patch_size=16,
            embed_dim=ENC,
            depth=ENC_DEPTH,
            num_heads=ENC_HEADS,
            mlp_ratio=4,
            out_chans=DIM,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=WINDOW,
            global_attn_indexes=GLOBAL,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=DIM,
            image_embedding_size=(IMG // 16, IMG // 16),
            input_image_size=(IMG, IMG),
            mask_in_chans=16,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=DEC_MLP, num_heads=DEC_HEADS),
            transformer_dim=DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=DIM,
        ),
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    ).eval()


def build_hf_sam() -> nn.Module:
    """The same tiny model in transformers; every weight randomised (HF init is nearly all zeros)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SamConfig(
        vision_config=dict(
            hidden_size=ENC,
            num_hidden_layers=ENC_DEPTH,
            num_attention_heads=ENC_HEADS,
            global_attn_indexes=list(GLOBAL),
            window_size=WINDOW,
            image_size=IMG,
            mlp_dim=4 * ENC,
            output_channels=DIM,
            num_pos_feats=DIM // 2,
        ),
        prompt_encoder_config=dict(hidden_size=DIM, image_size=IMG, mask_input_channels=16),
        # official decoder LayerNorms use torch's default eps 1e-5 (HF's default is 1e-6)
        mask_decoder_config=dict(
            hidden_size=DIM,
            mlp_dim=DEC_MLP,
            num_attention_heads=DEC_HEADS,
            iou_head_hidden_dim=DIM,
            layer_norm_eps=1e-5,
        ),
    )
    model = transformers.SamModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied PE matrix appears once
            noise = torch.randn(p.shape, generator=g)
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif "positional_embedding" in name:
                p.copy_(noise)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.shape[0]
                p.copy_(noise / max(fan_in, 1) ** 0.5)
    return model


@pytest.fixture(scope="module")
def official() -> nn.Module:
    torch.manual_seed(0)
    return build_official_sam()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = build_hf_sam()
    out = tmp_path_factory.mktemp("hf_sam")
    model.save_pretrained(out)
    return model, out


# ------------------------------------------------------------------------------------- HF <-> official


def test_hf_file_maps_to_official_keys_and_shapes(
    official: nn.Module, hf_dir: tuple[nn.Module, Path]
) -> None:
    _, folder = hf_dir
    sd = read_state_dict(folder / "model.safetensors")
    assert detect_format(sd) == "hf"
    mapped = hf_to_sam(sd)
    expected = official.state_dict()
    assert set(mapped) == set(expected)
    for key, value in expected.items():
        assert tuple(mapped[key].shape) == tuple(value.shape), key
    assert detect_format(mapped) == "sam"
    # the folder itself is accepted too
    assert set(read_state_dict(folder)) == set(sd)


def test_hf_in_memory_dict_with_both_pe_copies(official: nn.Module, hf_dir: tuple[nn.Module, Path]) -> None:
    model, _ = hf_dir
    sd = model.state_dict()  # holds both copies of the tied positional matrix
    assert "shared_image_embedding.positional_embedding" in sd
    assert "prompt_encoder.shared_embedding.positional_embedding" in sd
    mapped = to_sam_state_dict(sd)
    assert set(mapped) == set(official.state_dict())
    torch.testing.assert_close(
        mapped["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
        sd["shared_image_embedding.positional_embedding"],
    )
    bad = dict(sd)
    bad["shared_image_embedding.positional_embedding"] = (
        bad["shared_image_embedding.positional_embedding"] + 1
    )
    with pytest.raises(WeightsError, match="point-encoding"):
        hf_to_sam(bad)


def test_full_size_vit_b_key_map_on_meta_device() -> None:
    """The real vit_b layout (314 official keys, 315 HF keys), built without allocating weights."""
    transformers = pytest.importorskip("transformers")
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        official = sam_model_registry["vit_b"]()
        hf = transformers.SamModel(transformers.SamConfig())
    expected = official.state_dict()
    hf_sd = hf.state_dict()
    assert (len(expected), len(hf_sd)) == (314, 315)
    mapped = hf_to_sam(hf_sd)
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == v.shape for k, v in expected.items())
    assert guess_model_name(hf_sd) == guess_model_name(expected) == "sam_vit_b"


@pytest.mark.parametrize("multimask", [True, False])
def test_hf_weights_give_official_outputs(
    hf_dir: tuple[nn.Module, Path], multimask: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    hf, folder = hf_dir
    sam = build_official_sam()
    load_into(sam, to_sam_state_dict(read_state_dict(folder / "model.safetensors")), strict=True)

    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, IMG, IMG, generator=g)  # already normalised, IMG x IMG
    coords = torch.tensor([[[97.0, 61.0], [30.0, 200.0]]])  # (B, N, 2) x,y in the IMG frame
    labels = torch.tensor([[1, 0]])
    box = torch.tensor([[20.0, 40.0, 180.0, 220.0]])
    mask_in = torch.randn(1, 1, 4 * IMG // 16, 4 * IMG // 16, generator=g)

    with torch.no_grad():
        # image embedding
        ref_emb = sam.image_encoder(image)
        hf_emb = hf.get_image_embeddings(image)
        emb_diff = (ref_emb - hf_emb).abs().max().item()

        # points only, through the official Sam.forward (preprocess is the identity here)
        ref = sam(
            [
                {
                    "image": image[0],
                    "original_size": (IMG, IMG),
                    "point_coords": coords,
                    "point_labels": labels,
                }
            ],
            multimask_output=multimask,
        )[0]
        out = hf(
            pixel_values=image,
            input_points=coords[:, None],
            input_labels=labels[:, None],
            multimask_output=multimask,
        )
        logit_diff = (ref["low_res_logits"] - out.pred_masks[:, 0]).abs().max().item()
        iou_diff = (ref["iou_predictions"] - out.iou_scores[:, 0]).abs().max().item()

        # points + box + mask input, through the low-level official calls
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=box, masks=mask_in)
        ref_low, ref_iou = sam.mask_decoder(
            image_embeddings=ref_emb,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        out2 = hf(
            image_embeddings=hf_emb,
            input_points=coords[:, None],
            input_labels=labels[:, None],
            input_boxes=box[:, None],
            input_masks=mask_in,
            multimask_output=multimask,
        )
        logit_diff2 = (ref_low - out2.pred_masks[:, 0]).abs().max().item()
        iou_diff2 = (ref_iou - out2.iou_scores[:, 0]).abs().max().item()

    scale = ref["low_res_logits"].abs().max().item()
    with capsys.disabled():
        print(
            f"\n[parity multimask={multimask}] embedding {emb_diff:.2e}; points: logits {logit_diff:.2e} "
            f"(|logit| max {scale:.2f}), iou {iou_diff:.2e}; points+box+mask: logits {logit_diff2:.2e}, "
            f"iou {iou_diff2:.2e}"
        )
    assert ref["low_res_logits"].shape == (1, 3 if multimask else 1, 4 * IMG // 16, 4 * IMG // 16)
    assert scale > 0.1  # the comparison is not between two near-zero outputs
    assert emb_diff <= 1e-4
    assert logit_diff <= 1e-4 and iou_diff <= 1e-4
    assert logit_diff2 <= 1e-4 and iou_diff2 <= 1e-4


# --------------------------------------------------------------------------------------- read_state_dict


@pytest.fixture()
def small_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "image_encoder.pos_embed": torch.randn(1, 2, 2, 4),
        "mask_decoder.iou_token.weight": torch.randn(1, 8),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_read_plain_wrapped_prefixed_and_safetensors(
    tmp_path: Path, small_sd: dict[str, torch.Tensor]
) -> None:
    from safetensors.torch import save_file

    torch.save(small_sd, tmp_path / "plain.pth")
    _assert_same(read_state_dict(tmp_path / "plain.pth"), small_sd)

    torch.save({"model": small_sd, "epoch": 3}, tmp_path / "wrapped.pth")
    _assert_same(read_state_dict(str(tmp_path / "wrapped.pth")), small_sd)

    torch.save({"state_dict": {f"module.{k}": v for k, v in small_sd.items()}}, tmp_path / "ddp.pt")
    _assert_same(read_state_dict(tmp_path / "ddp.pt"), small_sd)

    save_file(small_sd, str(tmp_path / "w.safetensors"))
    _assert_same(read_state_dict(tmp_path / "w.safetensors"), small_sd)


def test_read_truncated_and_missing_files(tmp_path: Path, small_sd: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    torch.save(small_sd, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.pth.*truncated or corrupt.*download it again"):
        read_state_dict(tmp_path / "cut.pth")

    save_file(small_sd, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(WeightsError, match=r"cut\.safetensors.*textsam weights verify"):
        read_state_dict(tmp_path / "cut.safetensors")

    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")

    (tmp_path / "lfs.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    with pytest.raises(WeightsError, match="Git LFS pointer"):
        read_state_dict(tmp_path / "lfs.pth")

    missing = tmp_path / "nope" / "sam_vit_b_01ec64.pth"
    with pytest.raises(WeightsError, match=r"not found: .*nope.*sam_vit_b_01ec64\.pth"):
        read_state_dict(missing)


class _NotWeights:
    pass


def test_read_non_checkpoint_pickles(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pth")

    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(WeightsError, match="holds no tensors"):
        read_state_dict(tmp_path / "meta.pth")

    with (tmp_path / "obj.pth").open("wb") as fh:
        pickle.dump(_NotWeights(), fh, protocol=2)
    with pytest.raises(WeightsError, match="obj.pth"):
        read_state_dict(tmp_path / "obj.pth")

    torch.save({"w": _NotWeights(), "t": torch.zeros(1)}, tmp_path / "objzip.pth")
    with pytest.raises(WeightsError, match="Python objects besides tensors"):
        read_state_dict(tmp_path / "objzip.pth")


class _MakesMarker:
    """Unpickling this would create a folder: a checkpoint must never be able to run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: D105
        import os

        return (os.mkdir, (self.path,))


def test_random_bytes_are_not_called_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(bytes(range(256)) * 16)  # starts with 0x00: no zip, no pickle
    with pytest.raises(WeightsError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert "neither a zip archive nor a pickle" in msg and "weights.pth" in msg
    assert "python objects" not in msg.lower() and "pickled" not in msg.lower()


def test_html_page_never_suggests_weights_only_false(tmp_path: Path) -> None:
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_text("<!DOCTYPE html><html><head><title>Sign in</title></head><body>login</body></html>\n")
    with pytest.raises(WeightsError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert "HTML" in msg and "download it again" in msg
    assert "weights_only" not in msg and "weights only" not in msg.lower() and "\n" not in msg
    import traceback

    shown = "".join(traceback.format_exception(info.value))  # what `textsam -v` would print
    assert "set to `False`" not in shown  # torch's advice is not chained in either


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle4"])
def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path: Path, how: str) -> None:
    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    if how == "pickle4":
        path.write_bytes(pickle.dumps({"w": _MakesMarker(marker)}, protocol=4))
    else:
        torch.save({"w": torch.zeros(2), "x": _MakesMarker(marker)}, path,
                   _use_new_zipfile_serialization=how == "zip")
    with pytest.raises(WeightsError, match=r"Python objects besides tensors \(it references posix\.mkdir") as info:
        read_state_dict(path)
    assert not marker.exists(), "loading the checkpoint ran code"
    assert "weights_only" not in str(info.value)


def test_legacy_and_misnamed_safetensors_files_load(tmp_path: Path, small_sd: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    torch.save(small_sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    _assert_same(read_state_dict(tmp_path / "old.pth"), small_sd)
    save_file(small_sd, str(tmp_path / "really_safetensors.pth"))
    _assert_same(read_state_dict(tmp_path / "really_safetensors.pth"), small_sd)


# ------------------------------------------------------------------------------------- formats, guesses


def test_detect_format() -> None:
    t = torch.zeros(1)
    assert detect_format({"image_encoder.pos_embed": t, "mask_decoder.iou_token.weight": t}) == "sam"
    assert detect_format({"image_encoder.layers.0.blocks.0.attn.qkv.weight": t}) == "sam"  # MobileSAM
    assert detect_format({"vision_encoder.pos_embed": t, "prompt_encoder.point_embed.0.weight": t}) == "hf"
    assert detect_format({"prompt_encoder.shared_embedding.positional_embedding": t}) == "hf"
    assert detect_format({"text_projector.proj.weight": t}) == "textsam_text_head"
    assert detect_format({"mask_decoder.iou_token.weight": t, "text_projector.proj.weight": t}) == "sam"
    with pytest.raises(WeightsError, match=r"unrecognised.*backbone\.conv1\.weight"):
        detect_format({"backbone.conv1.weight": t, "head.fc.bias": t})
    with pytest.raises(WeightsError, match="SAM 2"):
        detect_format({"memory_attention.layers.0.norm1.weight": t})
    with pytest.raises(WeightsError, match="empty"):
        detect_format({})


def test_guess_model_name() -> None:
    def vit(width: int, depth: int, prefix: str = "image_encoder") -> dict[str, torch.Tensor]:
        proj = "patch_embed.proj" if prefix == "image_encoder" else "patch_embed.projection"
        blocks = "blocks" if prefix == "image_encoder" else "layers"
        sd = {f"{prefix}.{proj}.weight": torch.zeros(width, 1, 1, 1)}
        sd.update({f"{prefix}.{blocks}.{i}.attn.proj.bias": torch.zeros(1) for i in range(depth)})
        return sd

    assert guess_model_name(vit(768, 12)) == "sam_vit_b"
    assert guess_model_name(vit(1024, 24)) == "sam_vit_l"
    assert guess_model_name(vit(1280, 32)) == "sam_vit_h"
    assert guess_model_name(vit(1280, 3)) == "sam_vit_h"  # width alone decides when depth is unusual
    assert guess_model_name(vit(768, 12, prefix="vision_encoder")) == "sam_vit_b"  # HF names
    assert (
        guess_model_name({"image_encoder.layers.0.blocks.0.attn.qkv.weight": torch.zeros(1)}) == "mobile_sam"
    )
    assert guess_model_name(vit(384, 12)) is None  # e.g. SlimSAM
    assert guess_model_name({"text_projector.proj.weight": torch.zeros(1)}) is None


# ---------------------------------------------------------------------------------------------- load_into


def test_load_into_reports_mismatches(official: nn.Module) -> None:
    sd = {k: v.clone() for k, v in official.state_dict().items()}
    sd.pop("mask_decoder.iou_token.weight")
    sd["mask_decoder.hf_token.weight"] = torch.zeros(1, DIM)
    sd["image_encoder.pos_embed"] = torch.zeros(1, 8, 8, ENC)

    with pytest.raises(CheckpointMismatchError) as info:
        load_into(official, sd)
    err = info.value
    msg = str(err)
    assert err.missing == ["mask_decoder.iou_token.weight"]
    assert err.unexpected == ["mask_decoder.hf_token.weight"]
    assert "1 missing keys" in msg and "mask_decoder.iou_token.weight" in msg
    assert "1 extra keys" in msg and "mask_decoder.hf_token.weight" in msg
    assert "unexpected" not in msg  # the CLI keeps that word for errors nobody foresaw
    assert "image_encoder.pos_embed: model [1, 16, 16, 64] vs file [1, 8, 8, 64]" in msg
    assert "SAM-HQ" in msg
    assert "\n" not in msg  # the CLI prints it as one line

    # non-strict: missing/unexpected are tolerated, shapes are not
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_into(official, sd, strict=False)
    sd["image_encoder.pos_embed"] = official.state_dict()["image_encoder.pos_embed"].clone()
    load_into(official, sd, strict=False)


def test_load_into_hints_the_right_model(official: nn.Module) -> None:
    sd = {k: v.clone() for k, v in official.state_dict().items()}
    sd["image_encoder.patch_embed.proj.weight"] = torch.zeros(1280, 3, 16, 16)
    with pytest.raises(CheckpointMismatchError, match=r"looks like sam_vit_h.*create_model\('sam_vit_h'"):
        load_into(official, sd)

    with pytest.raises(CheckpointMismatchError, match="only a textsam text head") as info:
        load_into(official, {"text_projector.proj.weight": torch.zeros(2, 2)})
    assert len(info.value.missing) == len(official.state_dict())
    assert "more)" in str(info.value)  # long key lists are cut with a count


def test_official_weights_load_into_parts_made_without_random_values(tmp_path: Path) -> None:
    """create_model with an official checkpoint builds SAM's parts on the meta device with empty storage (no random
    initialisation to overwrite) and the strict load fills every value; a part with non-persistent buffers
    (mobile_sam's TinyViT index tables, which no checkpoint holds) is built as usual."""
    import textsam
    from textsam.factory import build_sam, get_config

    reference = build_sam(get_config("sam_vit_b"))
    path = tmp_path / "sam_vit_b.pth"
    torch.save(reference.state_dict(), path)
    loaded = textsam.create_model("sam_vit_b", checkpoint=path, clip=None)
    ref_state = reference.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in loaded.state_dict().items())
    empty = build_sam(get_config("sam_vit_b"), init=False)
    assert all(p.device.type == "cpu" for p in empty.parameters())
    tiny = build_sam(get_config("mobile_sam"), init=False)
    usual = build_sam(get_config("mobile_sam"))
    for (name, buf), (_, ref) in zip(tiny.image_encoder.named_buffers(), usual.image_encoder.named_buffers()):
        if name.endswith("attention_bias_idxs"):
            assert torch.equal(buf, ref), name
