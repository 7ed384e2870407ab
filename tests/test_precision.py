"""bf16 where it is only an approximation's business: the engine's proposals and CLIP image tower, and the fast
path's image encoder; fp32 elsewhere and on devices without native bf16."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import textsam
import textsam.precision as precision
import textsam.predictor as predictor_module
import textsam.text.engine as engine_module
from textsam.errors import InputError
from textsam.text.options import EngineOptions, TextOptions


def _scene() -> np.ndarray:
    im = Image.new("RGB", (128, 128), (200, 200, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([10, 40, 45, 75], fill=(220, 40, 40))
    d.ellipse([85, 40, 120, 75], fill=(40, 80, 220))
    d.rectangle([45, 95, 80, 125], fill=(230, 200, 40))
    return np.asarray(im)


def test_precision_names_are_checked_and_fp32_autocast_does_nothing() -> None:
    with pytest.raises(InputError, match="'fp32', 'bf16' or 'fp16'"):
        precision.check_precision("int8", "image_precision")
    with pytest.raises(InputError, match="engine precision"):
        EngineOptions(precision="fp16")
    with precision.autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
    assert precision.native_bf16("meta") is False
    assert isinstance(precision.native_bf16("cpu"), bool)


def test_native_bf16_on_a_gpu_is_ampere_or_newer_of_that_device(monkeypatch) -> None:
    """Older GPUs (a T4, a V100) only emulate bf16, which torch.cuda.is_bf16_supported() counts as support: bf16
    is native from compute capability 8, read for the device asked about."""
    asked = []

    def capability(device):  # noqa: ANN001, ANN202
        asked.append(torch.device(device).index)
        return {0: (7, 5), 1: (8, 0), 2: (9, 0)}[torch.device(device).index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert [precision.native_bf16(f"cuda:{i}") for i in range(3)] == [False, True, True]
    assert asked == [0, 1, 2]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.native_bf16("cuda:1") is False


def test_a_bf16_image_tower_is_a_cached_copy_outside_the_state_dict(clip_spec: str) -> None:
    from textsam.text.clip import TextEncoder

    encoder = TextEncoder.create(clip_spec, None)
    keys = set(encoder.state_dict())
    assert encoder.image_model("fp32") is encoder.clip
    tower = encoder.image_model("bf16")
    assert tower is encoder.image_model("bf16")  # made once
    assert next(tower.parameters()).dtype == torch.bfloat16
    assert next(encoder.clip.visual.parameters()).dtype == torch.float32  # the model's own tower is untouched
    assert set(encoder.state_dict()) == keys
    size = encoder.clip.visual.image_size
    size = size if isinstance(size, int) else size[0]
    x = torch.rand(3, 3, size, size)
    with torch.inference_mode():
        full = torch.nn.functional.normalize(encoder.clip.encode_image(x), dim=-1)
        half = torch.nn.functional.normalize(tower.encode_image(x.bfloat16()).float(), dim=-1)
    assert torch.nn.functional.cosine_similarity(full, half).min() > 0.99
    with pytest.raises(InputError, match="precision"):
        encoder.image_model("int4")
    with torch.no_grad():  # new weights (an optimizer step, load_state_dict): the copy is made again
        next(encoder.clip.visual.parameters()).add_(0.01)
    assert encoder.image_model("bf16") is not tower


def test_bf16_phrase_embeddings_come_from_a_cached_copy_of_the_text_transformer(clip_spec: str) -> None:
    """encode(precision="bf16"): a bf16 copy of the text transformer (no per-call weight casts), a cache of its
    own, embeddings close to fp32's; a change of the tower's weights makes the copy again."""
    from textsam.text.clip import TextEncoder

    encoder = TextEncoder.create(clip_spec, None)
    keys = set(encoder.state_dict())
    phrases = ["a red circle", "the dog on the left", "a zebra"]
    full = encoder.encode(phrases)
    half = encoder.encode(phrases, precision="bf16")
    copy = encoder.text_transformer("bf16")
    assert copy is encoder.text_transformer("bf16") and copy is not encoder.clip.transformer
    assert next(copy.parameters()).dtype == torch.bfloat16 and set(encoder.state_dict()) == keys
    assert (full * half).sum(-1).min() > 0.99 and not torch.equal(full, half)
    assert torch.equal(encoder.encode(phrases), full)  # the fp32 cache is not the bf16 one
    calls = encoder.tower_calls
    assert torch.equal(encoder.encode(phrases, precision="bf16"), half) and encoder.tower_calls == calls
    with torch.no_grad():
        next(encoder.clip.transformer.parameters()).add_(0.01)
    assert encoder.text_transformer("bf16") is not copy
    with pytest.raises(InputError, match="precision"):
        encoder.encode(phrases, precision="int8")


def test_reduced_towers_run_quick_gelu_as_silu_with_rescaled_weights() -> None:
    """The bf16 and int8 tower copies fold OpenAI CLIP's QuickGELU into SiLU (c_fc x 1.702, c_proj / 1.702): the
    same function (checked in fp32 on a folded copy), the fp32 towers keep open_clip's modules."""
    import copy

    from open_clip.transformer import QuickGELU

    from textsam.text.clip import fold_quick_gelu

    from .tiny import tiny_clip_encoder

    encoder = tiny_clip_encoder()
    x = torch.rand(2, 3, 64, 64)
    folded = copy.deepcopy(encoder.clip.visual)
    with torch.no_grad():
        fold_quick_gelu(folded)
    kinds = lambda m: {type(a).__name__ for a in m.modules() if isinstance(a, (QuickGELU, torch.nn.SiLU))}  # noqa: E731
    assert kinds(encoder.clip.visual) == {"QuickGELU"} and kinds(folded) == {"SiLU"}
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), encoder.clip.visual(x), atol=1e-5, rtol=1e-4)
        assert not torch.equal(folded.transformer.resblocks[0].mlp.c_fc.weight,
                               encoder.clip.visual.transformer.resblocks[0].mlp.c_fc.weight)
    for tower in (encoder.image_model("bf16").visual, encoder.text_transformer("bf16")):
        assert kinds(tower) == {"SiLU"}
    assert kinds(encoder.clip) == {"QuickGELU"}  # the model's own towers are untouched
    if torch.backends.quantized.engine in ("x86", "fbgemm", "onednn"):
        int8 = encoder.image_model("int8")
        assert kinds(int8.visual) == {"SiLU"}
        with torch.inference_mode():
            cos = torch.nn.functional.cosine_similarity(int8.encode_image(x), encoder.clip.encode_image(x))
        assert cos.min() > 0.99


@pytest.fixture(scope="module")
def engine_model() -> textsam.TextSam:
    return textsam.create_model("shapes_tiny", text_head=False)


def test_a_bf16_engine_runs_in_bf16_only_where_the_device_has_it(engine_model: textsam.TextSam,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    base = textsam.TextSamPredictor(engine_model).text.options
    assert base.engine.precision == "bf16"  # the default: bf16 where the device has it
    options = dataclasses.replace(base, engine=dataclasses.replace(base.engine, precision="fp32"))
    half = textsam.TextSamPredictor(engine_model)
    full = textsam.TextSamPredictor(engine_model, text_options=options)
    for p in (half, full):
        p.set_image(_scene())
    for native in (True, False):
        monkeypatch.setattr(engine_module, "native_bf16", lambda device, native=native: native)
        assert half.text.engine.precision(half) == ("bf16" if native else "fp32")
        assert full.text.engine.precision(full) == "fp32"
    monkeypatch.setattr(engine_module, "native_bf16", lambda device: True)
    seen: list[torch.dtype] = []
    original = engine_model.mask_decoder.predict_confident

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_model.mask_decoder, "predict_confident", spy)
    for phrase in ("the red circle", "the blue circle", "the yellow square"):
        a, b = half.predict(text=phrase), full.predict(text=phrase)
        inter = (a.masks[0] & b.masks[0]).sum()
        assert inter / max(1, (a.masks[0] | b.masks[0]).sum()) > 0.9, phrase  # the same object
        assert a.presence == pytest.approx(b.presence, abs=0.05)
    assert seen == [torch.bfloat16, torch.float32]  # each predictor's proposal clicks, once per image
    # the phrases' embeddings too: the bf16 engine's in a cache of their own, close to fp32's
    encoder = engine_model.text_encoder
    assert set(encoder._low_precision_caches) == {"bf16"} and set(encoder._low_precision_caches["bf16"]) == set(encoder._cache)
    for sentence, emb in encoder._cache.items():
        assert float(emb @ encoder._low_precision_caches["bf16"][sentence]) > 0.995
    tower = engine_model.text_encoder.image_model("bf16")
    assert half.text.engine._tokens is not None and len(half.text.engine._crops) > 0
    assert next(tower.parameters()).dtype == torch.bfloat16


def test_the_fast_predictor_takes_bf16_where_native_else_int8_else_fp32(engine_model: textsam.TextSam,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for native, int8, expected in ((True, True, "bf16"), (False, True, "int8"), (False, False, "fp32")):
        for module in (predictor_module, engine_module):
            monkeypatch.setattr(module, "native_bf16", lambda device, native=native: native)
            monkeypatch.setattr(module, "int8_supported", lambda device, int8=int8: int8)
        fast = textsam.TextSamPredictor.fast(engine_model)
        assert fast.image_precision == expected
        assert fast.text.options == textsam.TextSamPredictor(engine_model).text.options.fast()
        assert fast.text.options.engine.precision == "int8"
        assert fast.text.engine.precision(fast) == expected  # the engine's CLIP image tower alike
    # an encoder that does not say int8 suits it (mobile_sam's TinyViT) keeps fp32; the CLIP tower still int8
    for module in (predictor_module, engine_module):
        monkeypatch.setattr(module, "int8_supported", lambda device: True)
    monkeypatch.setattr(engine_model.image_encoder, "int8_fast_path", False, raising=False)
    fast = textsam.TextSamPredictor.fast(engine_model)
    assert (fast.image_precision, fast.text.engine.precision(fast)) == ("fp32", "int8")
    given = TextOptions(engine=EngineOptions(max_proposals=5))
    assert textsam.TextSamPredictor.fast(engine_model, given).text.options == given.fast()


def _biased_attention() -> tuple[torch.nn.Module, torch.Tensor]:
    """A small rel-pos attention on an 8 x 12 token map with strong biases, and a batch of 2 inputs."""
    import textsam.modeling.image_encoder as image_encoder

    torch.manual_seed(0)
    attn = image_encoder.Attention(64, num_heads=4, use_rel_pos=True, input_size=(8, 12)).eval()
    with torch.no_grad():
        attn.rel_pos_h.normal_(0, 0.5)
        attn.rel_pos_w.normal_(0, 0.5)
    return attn, torch.randn(2, 8, 12, 64)


def _record_calls(monkeypatch: pytest.MonkeyPatch, method: str, record) -> list:  # noqa: ANN001
    """Wrap ``Attention.<method>`` so that each call appends ``record(args)`` to the returned list."""
    import textsam.modeling.image_encoder as image_encoder

    calls = []
    original = getattr(image_encoder.Attention, method)

    def spy(self, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append(record(args))
        return original(self, *args)

    monkeypatch.setattr(image_encoder.Attention, method, spy)
    return calls


def test_the_bf16_cpu_attention_is_the_biased_softmax_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder's chunked bf16 attention (plain matmuls, the decomposed rel-pos bias added in place) computes
    what scaled_dot_product_attention with the bias mask computes, in several chunks of query rows."""
    import textsam.modeling.image_encoder as image_encoder

    attn, x = _biased_attention()
    monkeypatch.setattr(image_encoder, "BF16_AMX", False)  # a CPU without AMX tiles: the chunked path
    monkeypatch.setattr(image_encoder, "LOW_PRECISION_QUERIES", 24)  # 2 image lines a chunk: 4 chunks
    calls = _record_calls(monkeypatch, "_attend_chunked", lambda args: args[0].dtype)
    with torch.inference_mode():
        full = attn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            chunked = attn(x).float()
            monkeypatch.setattr(image_encoder, "_chunk_queries", lambda q: 0)
            masked = attn(x).float()
    assert calls == [torch.bfloat16]  # fp32 (96 tokens: fused) and the masked run took scaled_dot_product_attention
    scale = full.abs().mean()
    assert (chunked - masked).abs().mean() < 0.02 * scale
    assert (chunked - full).abs().mean() < 0.02 * scale and (masked - full).abs().mean() < 0.02 * scale


def test_the_bf16_amx_attention_folds_the_bias_into_the_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU with AMX tiles (``BF16_AMX``) bf16 global attention runs the fused kernel with the decomposed bias
    folded into the products (extra query channels, one-hot key channels) and windows run the fused kernel with
    the bias made by one product with a 0/1 expansion; both compute the biased softmax attention: against fp32,
    as close as the chunked path, and the folded path closer than the masked one (no rounded bf16 bias)."""
    import textsam.modeling.image_encoder as image_encoder

    attn, x = _biased_attention()
    monkeypatch.setattr(image_encoder, "BF16_AMX", True)
    monkeypatch.setattr(image_encoder, "FOLDED_MIN_TOKENS", 96)  # the 8 x 12 map counts as global attention
    folded_calls = _record_calls(monkeypatch, "_attend_folded", lambda args: args[0].shape)
    with torch.inference_mode():
        full = attn(x)
        assert folded_calls == []  # fp32 does not fold
        with torch.autocast("cpu", dtype=torch.bfloat16):
            folded = attn(x).float()
            assert folded_calls == [(2, 4, 96, 16)]
            monkeypatch.setattr(image_encoder, "FOLDED_MIN_TOKENS", 97)  # now "a window": the masked fused kernel
            masked = attn(x).float()
            assert len(folded_calls) == 1
            q = torch.randn(2, 4, 96, 16, dtype=torch.bfloat16)
            rh, rw = attn.rel_pos_h[:15].to(torch.bfloat16), attn.rel_pos_w[:23].to(torch.bfloat16)
            rh, rw = image_encoder.get_rel_pos(8, 8, rh), image_encoder.get_rel_pos(12, 12, rw)
            made = image_encoder.Attention._bias(q, rh, rw, 8, 12).float()
    # the bias made by the expansion product is the broadcast sum of the same bf16 terms, rounded once
    r_q = q.reshape(2, 4, 8, 12, 16)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).float().unsqueeze(-1)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).float().unsqueeze(-2)
    assert torch.equal(made, (rel_h + rel_w).to(torch.bfloat16).float().reshape(2, 4, 96, 96))
    scale = full.abs().mean()
    assert (folded - full).abs().mean() < 0.02 * scale and (masked - full).abs().mean() < 0.02 * scale
    assert (folded - full).abs().max() <= (masked - full).abs().max() * 1.5


def test_the_fp32_cpu_attention_fused_in_line_chunks_or_chunked_equals_one_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 attention on a CPU takes scaled_dot_product_attention with the rel-pos bias as a mask, the bias made
    for a few image lines at a time when it would be large; on an AVX-512 CPU (``FP32_CHUNKED``) global attention
    runs as plain matmuls in chunks of query lines instead. Both give the one-mask result to fp32 rounding;
    windows (fewer than ``FP32_CHUNKED_MIN_TOKENS``) and autograd keep the fused kernel."""
    import textsam.modeling.image_encoder as image_encoder

    attn, x = _biased_attention()
    calls = _record_calls(monkeypatch, "_attend_chunked", lambda args: args[-1])
    biases = []
    original_bias = image_encoder.Attention._bias

    def bias_spy(*args):  # noqa: ANN002, ANN202
        biases.append(args[-2])  # the image lines of this chunk
        return original_bias(*args)

    monkeypatch.setattr(image_encoder.Attention, "_bias", staticmethod(bias_spy))
    monkeypatch.setattr(image_encoder, "FP32_CHUNKED", False)
    monkeypatch.setattr(image_encoder, "FP32_CHUNKED_MIN_TOKENS", 96)
    monkeypatch.setattr(image_encoder, "FP32_QUERIES", 36)  # 3 image lines a chunk, the last one shorter
    with torch.inference_mode():
        whole = attn(x)
        assert calls == [] and biases == [8]
        # 2 inputs x 4 heads x 12 columns x 96 keys per image line: 3 lines a chunk, the last one shorter
        monkeypatch.setattr(image_encoder, "_BIAS_CHUNK_ELEMENTS", 3 * 2 * 4 * 12 * 96)
        biases.clear()
        lines = attn(x)
        assert calls == [] and biases == [3, 3, 2]
        monkeypatch.setattr(image_encoder, "FP32_CHUNKED", True)
        chunked = attn(x)
        assert calls == [36]
        monkeypatch.setattr(image_encoder, "FP32_CHUNKED_MIN_TOKENS", 97)  # now "a window": the fused kernel
        attn(x)
        assert calls == [36]
    monkeypatch.setattr(image_encoder, "FP32_CHUNKED_MIN_TOKENS", 96)
    with torch.enable_grad():  # autograd (training) keeps the fused kernel
        fused_grad_mode = attn(x).detach()
    assert calls == [36]
    assert torch.allclose(lines, whole, atol=1e-5, rtol=1e-5)
    assert torch.allclose(chunked, whole, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fused_grad_mode, whole, atol=1e-5, rtol=1e-5)


def test_low_precision_copies_of_a_model_made_under_inference_mode(clip_spec: str) -> None:
    """Inference tensors keep no version counter; the bf16 copies are still made once and work."""
    from textsam.text.clip import TextEncoder

    with torch.inference_mode():
        encoder = TextEncoder.create(clip_spec, None)
        tower = encoder.image_model("bf16")
        assert tower is encoder.image_model("bf16")
        assert encoder.text_transformer("bf16") is encoder.text_transformer("bf16")
        half = encoder.encode(["a red circle"], precision="bf16")
    assert (half * encoder.encode(["a red circle"])).sum() > 0.99


@pytest.mark.slow
def test_the_encoder_compiles_and_matches_eager_at_inference() -> None:
    """torch.compile (inductor) of the encoder at inference, where the rel-pos bias mask is otherwise built with
    ``out=`` (which the compiler cannot lay out): the compiled encoder gives the eager embedding."""
    from textsam.modeling.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=128, patch_size=16, embed_dim=64, depth=2, num_heads=4, out_chans=32,
                          window_size=3, global_attn_indexes=(1,)).eval()  # 8 x 8 map: padded windows, a global block
    with torch.no_grad():
        for blk in enc.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.5)
            blk.attn.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        eager = enc(x)
        compiled = torch.compile(enc)(x)
    assert torch.allclose(compiled, eager, atol=1e-4, rtol=1e-4)
