"""The text pathway with tiny random models: tokens reach the decoder, one decoder call, caching, heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textsam.config import TextHeadConfig
from textsam.errors import InputError, WeightsError
from textsam.predictor import TextSamPredictor
from textsam.text.clip import parse_clip_spec
from textsam.text.options import EngineOptions, GroundingOptions, InstanceOptions, TextOptions
from textsam.text.projector import TextProjector
from textsam.text.templates import clean_phrase

from .tiny import tiny_clip_encoder, tiny_sam

GROUNDING = dict(grounding=GroundingOptions(enabled=True), engine=EngineOptions(enabled=False))


@pytest.fixture()
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (180, 300, 3), dtype=np.uint8)
    img[40:120, 60:150] = (220, 30, 30)
    img[100:170, 200:280] = (30, 30, 220)
    return img


def _with_head(model, num_tokens: int = 2):
    cfg = TextHeadConfig(clip_dim=model.text_encoder.embed_dim, token_dim=256, num_tokens=num_tokens, hidden_dim=64)
    model.text_projector = TextProjector(cfg).eval()
    return model


class DecoderSpy:
    """Counts mask-decoder calls and records the sparse-token shapes they received."""

    def __init__(self, model) -> None:
        self.calls: list[tuple[int, ...]] = []
        original = model.mask_decoder.forward

        def spy(*args, **kwargs):
            self.calls.append(tuple(kwargs["sparse_prompt_embeddings"].shape))
            return original(*args, **kwargs)

        model.mask_decoder.forward = spy


def test_phrase_checks() -> None:
    assert clean_phrase("  the   red\tcar ") == "the red car"
    for bad in ["", "   ", "\n\t"]:
        with pytest.raises(InputError, match="empty"):
            clean_phrase(bad)
    with pytest.raises(InputError, match="string"):
        clean_phrase(3)
    assert parse_clip_spec("ViT-B-16-quickgelu/openai") == ("ViT-B-16-quickgelu", "openai")
    assert parse_clip_spec("local-dir:/x/y") == ("local-dir:/x/y", None)
    assert parse_clip_spec("ViT-B-16/@//w/clip.safetensors") == ("ViT-B-16", "/w/clip.safetensors")


def test_text_embedding_cache_skips_the_tower() -> None:
    enc = tiny_clip_encoder()
    a = enc.encode("a red circle")
    assert enc.tower_calls == 1
    b = enc.encode(["a red circle"])
    assert enc.tower_calls == 1  # cached
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(1), atol=1e-5)
    enc.encode(["a red circle", "a blue square"])
    assert enc.tower_calls == 2  # only the new phrase ran


def test_a_text_copy_shares_the_image_tower_and_owns_its_text_tower() -> None:
    """``TextEncoder.text_copy``: the image tower is the same module, the text tower a copy with equal values
    that changes alone (a text head's fine-tuned tower is loaded into it while the original keeps scoring)."""
    enc = tiny_clip_encoder()
    phrases = ["a red circle", "the blue square"]
    before = enc.encode(phrases).clone()
    copy = enc.text_copy()
    assert copy.clip.visual is enc.clip.visual and copy.clip.transformer is not enc.clip.transformer
    assert torch.equal(copy.encode(phrases), before)
    with torch.no_grad():
        copy.clip.text_projection.mul_(-1)
    copy.clear_cache()
    assert torch.allclose(copy.encode(phrases), -before, atol=1e-6)
    enc.clear_cache()
    assert torch.equal(enc.encode(phrases), before)


def test_short_sequence_fast_path_equals_open_clip() -> None:
    enc = tiny_clip_encoder()
    phrases = ["a red circle", "the leftmost small blue star on the right", "x"]
    tokens = enc.tokenizer(phrases)
    with torch.inference_mode():
        full = enc.clip.encode_text(tokens, normalize=True)
        fast = enc.embed_tokens(tokens)
    assert torch.allclose(full, fast, atol=1e-5)


def test_non_ascii_and_long_phrases(caplog: pytest.LogCaptureFixture) -> None:
    enc = tiny_clip_encoder()
    assert enc.encode("Straße café 狗 🚗").shape == (1, enc.embed_dim)
    long_phrase = " ".join(["very"] * 100) + " long dog"
    emb = enc.encode(long_phrase)
    assert torch.isfinite(emb).all()
    assert "more than CLIP's context" in caplog.text


def test_text_tokens_change_the_output_and_carry_gradients(image) -> None:
    model = _with_head(tiny_sam(with_text=True))
    pred = TextSamPredictor(model, text_options=TextOptions(grounding=GroundingOptions(enabled=False)))
    pred.set_image(image)
    a = pred.predict(text="a red square", multimask_output=False, return_logits=True)
    b = pred.predict(text="a blue circle", multimask_output=False, return_logits=True)
    assert np.abs(a.low_res_logits - b.low_res_logits).max() > 1e-4

    # gradients from a mask loss reach the projector (training path, no inference_mode)
    model.train()
    emb = model.text_encoder.encode(["a red square"]).clone()
    tokens = model.text_projector(emb)
    low, iou = model.decode(pred.features.detach(), extra_tokens=tokens, multimask_output=False)
    target = torch.zeros_like(low)
    target[..., 10:30, 15:40] = 1
    loss = torch.nn.functional.binary_cross_entropy_with_logits(low, target)
    loss.backward()
    grads = [p.grad for p in model.text_projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_text_clicks_and_box_make_one_decoder_call(image) -> None:
    model = _with_head(tiny_sam(with_text=True), num_tokens=3)
    pred = TextSamPredictor(model, text_options=TextOptions(
        grounding=GroundingOptions(enabled=True, num_positive=2, num_negative=1), engine=EngineOptions(enabled=False)))
    pred.set_image(image)
    spy = DecoderSpy(model)
    out = pred.predict(
        text="the red square",
        point_coords=np.array([[100.0, 80.0]]),
        point_labels=np.array([1]),
        box=np.array([50, 30, 160, 130]),
    )
    assert len(spy.calls) == 1
    grounded = len(out.info["prompts"]["points"])
    assert 2 <= grounded <= 3  # 1-2 positives (second only on the same object) + 1 negative
    # 1 click + grounded points + 2 box corners + 3 text tokens, batch of 1: all in one sparse sequence
    assert spy.calls[0] == (1, 1 + grounded + 2 + 3, 256)
    assert out.masks.shape == (3, 180, 300) and out.masks.dtype == bool
    assert out.scores.shape == (3,)
    assert len(out.info["text_scores"]) == 3
    assert np.all(np.diff(out.info["ranking"]) <= 0)  # masks come best first


def test_text_alone_and_text_plus_one_click(image) -> None:
    model = tiny_sam(with_text=True)  # no text head: grounding alone
    pred = TextSamPredictor(model, text_options=TextOptions(**GROUNDING))
    pred.set_image(image)
    spy = DecoderSpy(model)
    alone = pred.predict(text="red square")
    click = pred.predict(text="red square", point_coords=np.array([[100, 80]]), point_labels=np.array([1]))
    assert [c[0] for c in spy.calls] == [1, 1]
    assert spy.calls[1][1] == spy.calls[0][1] + 1
    pts = np.asarray(alone.info["prompts"]["points"])
    assert pts.shape[1] == 2 and (pts[:, 0] <= 300).all() and (pts[:, 1] <= 180).all()
    assert click.masks.shape == alone.masks.shape


def test_without_text_results_are_unchanged(image) -> None:
    plain = tiny_sam(seed=3)
    texty = tiny_sam(seed=3, with_text=True)
    p1, p2 = TextSamPredictor(plain), TextSamPredictor(texty)
    p1.set_image(image)
    p2.set_image(image)
    kw = dict(point_coords=np.array([[120, 90]]), point_labels=np.array([1]), box=np.array([40, 20, 200, 150]))
    a, b = p1.predict(**kw), p2.predict(**kw)
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.low_res_logits, b.low_res_logits)


def test_repeated_phrase_does_not_rerun_the_text_tower(image) -> None:
    model = tiny_sam(with_text=True)
    pred = TextSamPredictor(model)
    pred.set_image(image)
    pred.predict(text="red square")
    calls = model.text_encoder.tower_calls
    pred.predict(text="red square")
    pred.predict(text="  red   square ")
    assert model.text_encoder.tower_calls == calls


def test_all_instances_one_decoder_batch(image) -> None:
    model = tiny_sam(with_text=True)
    pred = TextSamPredictor(model, text_options=TextOptions(instances=InstanceOptions(max_instances=4), **GROUNDING))
    pred.set_image(image)
    spy = DecoderSpy(model)
    out = pred.predict(text="square", instances="all")
    assert len(spy.calls) == 1 and spy.calls[0][0] >= 1
    n = out.masks.shape[0]
    assert out.masks.shape[1:] == (180, 300) and out.scores.shape == (n,)
    assert len(out.info["ranking"]) == n and np.all(np.diff(out.info["ranking"]) <= 0)


def test_several_phrases_one_call_and_negative_text(image) -> None:
    model = _with_head(tiny_sam(with_text=True))
    pred = TextSamPredictor(model)
    pred.set_image(image)
    spy = DecoderSpy(model)
    outs = pred.predict_phrases(["red square", "blue square", "background"], multimask_output=False)
    assert len(spy.calls) == 1 and spy.calls[0][0] == 3  # one Prediction per phrase, from one decoder batch
    assert [o.masks.shape for o in outs] == [(1, 180, 300)] * 3 and all(o.presence is not None for o in outs)
    neg = pred.predict(text="square", negative_text="blue square")
    assert neg.masks.shape[0] == 3
    with pytest.raises(InputError, match="needs a text prompt"):
        pred.predict(negative_text="dog", point_coords=np.array([[1, 1]]), point_labels=np.array([1]))


def test_text_head_file_round_trip_and_wrong_models(tmp_path) -> None:
    import textsam
    from textsam.weights.format import ClipSpec, TextsamFile, read, write

    cfg = TextHeadConfig(clip_dim=32, token_dim=256, num_tokens=2, hidden_dim=64)
    proj = TextProjector(cfg)
    tensors = {f"text_projector.{k}": v for k, v in proj.state_dict().items()}
    path = write(tmp_path / "head.safetensors", TextsamFile("sam_vit_b", ClipSpec("tiny_clip"), cfg, tensors,
                                                            training={"recipe": "unit test"}))
    back = read(path)
    assert back.text_head == cfg and back.sam_model == "sam_vit_b" and back.training == {"recipe": "unit test"}
    assert all(torch.equal(back.tensors[k], v) for k, v in tensors.items())
    model = textsam.create_model("sam_vit_b", pretrained=False)
    model.text_encoder = tiny_clip_encoder()
    textsam.factory.attach_text(model, text_head=path, pretrained=False)
    emb = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    assert torch.equal(model.text_projector(emb), proj(emb)) and model.text_locator is None
    with pytest.raises(WeightsError, match="trained for SAM model 'sam_vit_b'.*--model sam_vit_b"):
        textsam.factory.attach_text(tiny_sam(with_text=True), text_head=path, pretrained=False)
    with pytest.raises(WeightsError, match="CLIP"):
        textsam.factory.attach_text(model, text_head=path, clip="ViT-B-16-quickgelu/openai", pretrained=False)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError):
        read(tmp_path / "junk.safetensors")


@pytest.fixture(scope="module")
def small_clip_file(tmp_path_factory) -> str:
    """A random open_clip ``ViT-S-32`` in the safetensors form open_clip loads (fp16 storage: half the bytes)."""
    import open_clip
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("clip") / "open_clip_model.safetensors"
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32")
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _same_model(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = dict(ours.named_buffers()), dict(ref.named_buffers())  # the causal mask no checkpoint holds, too
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ours.visual.preprocess_cfg == ref.visual.preprocess_cfg


@pytest.mark.parametrize("by_tag", [False, True])
def test_published_clip_weights_load_without_a_random_initialisation(small_clip_file, monkeypatch, by_tag) -> None:
    """A CLIP with weights (a local file, or a tag whose download is mocked here) is built by open_clip on the meta
    device and filled by open_clip's own ``load_checkpoint``: the same tensors, causal mask and preprocessing as
    ``open_clip.create_model(name, pretrained)``, and nothing random made only to be overwritten."""
    import open_clip
    import open_clip.factory

    from textsam.text.clip import TextEncoder

    pretrained = small_clip_file
    if by_tag:  # a tag with its own preprocessing, its file "downloaded"
        tag = {"url": "https://example.invalid/w.bin", "mean": (0.1, 0.2, 0.3), "std": (0.3, 0.2, 0.1)}
        for module in (open_clip, open_clip.factory):
            monkeypatch.setattr(module, "get_pretrained_cfg", lambda name, t: tag if t == "mocked" else {})
            monkeypatch.setattr(module, "download_pretrained", lambda cfg, cache_dir=None: small_clip_file)
        pretrained = "mocked"
    ref = open_clip.create_model("ViT-S-32", pretrained=pretrained).eval()
    builds = []
    create = open_clip.create_model

    def spy(*args, **kwargs):
        builds.append((kwargs.get("device"), kwargs.get("load_weights", True)))
        return create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", spy)
    encoder = TextEncoder.create("ViT-S-32", pretrained)
    assert builds == [("meta", False)]
    _same_model(encoder.clip, ref)
    if by_tag:
        assert encoder.clip.visual.preprocess_cfg["mean"] == (0.1, 0.2, 0.3)
    tokens = open_clip.get_tokenizer("ViT-S-32")(["a red car", "the dog on the left"])
    assert torch.equal(encoder.clip.encode_text(tokens), ref.encode_text(tokens))
    # random weights (no file) and schema names keep open_clip's own build
    builds.clear()
    TextEncoder.create("ViT-S-32", None)
    assert builds == [(None, True)]
