"""Template sentences run from their shared beginnings (textsam.text.prefix) give the tower's own embeddings."""

from __future__ import annotations

import torch

from tests.tiny import tiny_clip_encoder
from textsam.precision import weight_versions
from textsam.text.prefix import PrefixCache, prefix_ids, supports_prefixes
from textsam.text.templates import DEFAULT_TEMPLATES, expand

PHRASES = ["a truck", "the red car on the left", "wheel", "a very long phrase about a small dog next to the door"]


def _sentences() -> list[str]:
    return [s for p in PHRASES for s in expand(p, DEFAULT_TEMPLATES)] + ["no template here", "photo"]


def test_prefix_run_equals_the_whole_sentence_run_in_fp32_and_bf16() -> None:
    enc = tiny_clip_encoder(seed=3)
    tokens = enc.tokenize(_sentences())
    cache = PrefixCache()
    cache.register([prefix_ids(r) for r in enc.tokenize([t.split("{}")[0] for t in DEFAULT_TEMPLATES])])
    assert sorted({len(p) for p in cache.prefixes}) == [4, 5, 6, 8]  # start token + "there is a" ... "a close-up photo of a"
    assert cache.longest(tokens[0].tolist()) == 5 and cache.longest(tokens[-1].tolist()) == 1  # "a photo of a" / none
    with torch.inference_mode():
        for precision, dtype, tol in (("fp32", torch.float32, 1e-5), ("bf16", torch.bfloat16, 2e-2)):
            transformer = enc.text_transformer(precision)
            assert supports_prefixes(enc.clip, transformer)
            ref = enc.embed_tokens(tokens, precision=precision).float()
            got = cache.embed(enc.clip, transformer, tokens, dtype)
            assert got.shape == ref.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, ref, atol=tol, rtol=0)
            # a row's value does not depend on the other rows of the batch
            torch.testing.assert_close(cache.embed(enc.clip, transformer, tokens[7:8], dtype), got[7:8], atol=tol, rtol=0)


def test_a_beginning_that_ends_inside_a_word_is_not_used() -> None:
    """The template "a photo of a{}" with "dog" gives "a photo of adog.": "adog" is one word, so the sentence does
    not start with the tokens of "a photo of a" and shares only the start token."""
    enc = tiny_clip_encoder()
    cache = PrefixCache()
    cache.register([prefix_ids(enc.tokenize(["a photo of a"])[0])])
    tokens = enc.tokenize(["a photo of adog.", "a photo of a dog."])
    assert cache.longest(tokens[0].tolist()) == 1 and cache.longest(tokens[1].tolist()) == 5
    with torch.inference_mode():
        torch.testing.assert_close(cache.embed(enc.clip, enc.clip.transformer, tokens, torch.float32),
                                   enc.embed_tokens(tokens), atol=1e-5, rtol=0)


def test_kept_beginnings_are_recomputed_when_the_weights_change() -> None:
    enc = tiny_clip_encoder()
    cache = PrefixCache()
    cache.register([prefix_ids(enc.tokenize(["a photo of the"])[0])])
    tokens = enc.tokenize(["a photo of the cat."])
    before = cache.embed(enc.clip, enc.clip.transformer, tokens, torch.float32)
    with torch.no_grad():
        enc.clip.transformer.resblocks[0].mlp.c_fc.weight.mul_(1.5)
    after = cache.embed(enc.clip, enc.clip.transformer, tokens, torch.float32)
    with torch.inference_mode():
        torch.testing.assert_close(after, enc.embed_tokens(tokens), atol=1e-5, rtol=0)
    assert not torch.allclose(before, after, atol=1e-4)


def test_weight_versions_change_with_new_storage_and_in_place_changes() -> None:
    """What the kept beginnings and the reduced tower copies follow: a fresh module's weights moved or cast
    (``.to(device)`` is the same kind of change as this cast: new storage whose version counter starts again)
    and an in-place step both change it."""
    layer = torch.nn.Linear(4, 4)
    first = weight_versions(layer)
    assert weight_versions(layer) == first
    layer.double()
    cast = weight_versions(layer)
    assert cast != first
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert weight_versions(layer) != cast


def test_encode_ensembles_runs_the_templates_beginnings_once_with_the_same_values() -> None:
    enc = tiny_clip_encoder(seed=1)
    got = enc.encode_ensembles(PHRASES, DEFAULT_TEMPLATES)
    assert len(enc._prefixes.prefixes) == len({t.split("{}")[0] for t in DEFAULT_TEMPLATES})
    with torch.inference_mode():
        plain = enc.embed_tokens(enc.tokenize(_sentences()[: len(PHRASES) * len(DEFAULT_TEMPLATES)]))
    means = torch.nn.functional.normalize(plain.view(len(PHRASES), len(DEFAULT_TEMPLATES), -1).mean(1), dim=-1)
    torch.testing.assert_close(got, means, atol=1e-5, rtol=0)
    # the template set by name registers the same beginnings
    enc.clear_cache()
    torch.testing.assert_close(enc.encode_ensembles(PHRASES, "default"), got, atol=1e-6, rtol=0)


def test_threads_registering_and_using_beginnings_share_one_encoder() -> None:
    """Threads with different template lists on one encoder (the app's workers share theirs): every answer is the
    one a single thread gets, and none fails while another registers beginnings."""
    import threading

    enc = tiny_clip_encoder(seed=2)
    lists = [[t] for t in DEFAULT_TEMPLATES] + [list(DEFAULT_TEMPLATES)]
    expected = [tiny_clip_encoder(seed=2).encode_ensembles(PHRASES, templates) for templates in lists]
    errors: list[BaseException] = []
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        try:
            results[i] = enc.encode_ensembles(PHRASES, lists[i])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(lists))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, ref in enumerate(expected):
        torch.testing.assert_close(results[i], ref, atol=1e-5, rtol=0)
