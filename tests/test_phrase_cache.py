"""The phrase-embedding LRU caches of TextEncoder: bounded, and correct when a batch mixes old and new phrases."""

from __future__ import annotations

import torch

from .tiny import tiny_clip_encoder


def test_full_cache_with_a_batch_mixing_an_old_phrase_and_new_ones() -> None:
    enc = tiny_clip_encoder()
    enc.cache_size = 4
    enc.encode(["a", "b", "c", "d"])
    got = enc.encode(["a", "e", "f", "g", "h"])  # 'a' is cached; the new ones would evict it first
    fresh = tiny_clip_encoder().encode(["a", "e", "f", "g", "h"])
    torch.testing.assert_close(got, fresh)
    assert len(enc._cache) == 4


def test_word_cache_has_the_same_property() -> None:
    enc = tiny_clip_encoder()
    enc.cache_size = 2
    enc.encode_words(["a", "b"])
    pooled, words, mask = enc.encode_words(["a", "c", "d"])
    ref = tiny_clip_encoder().encode_words(["a", "c", "d"])
    torch.testing.assert_close(pooled, ref[0])
    torch.testing.assert_close(words, ref[1])
    assert torch.equal(mask, ref[2]) and len(enc._word_cache) == 2


def test_cache_keeps_the_most_recently_used() -> None:
    enc = tiny_clip_encoder()
    enc.cache_size = 2
    enc.encode(["a", "b"])
    enc.encode(["a"])  # touch 'a': 'b' is now the oldest
    enc.encode(["c"])
    assert list(enc._cache) == ["a", "c"]


def test_threads_sharing_one_encoder_with_a_small_cache() -> None:
    from concurrent.futures import ThreadPoolExecutor

    enc = tiny_clip_encoder()
    enc.cache_size = 3
    phrases = [f"thing {i}" for i in range(12)]
    ref = tiny_clip_encoder().encode(phrases)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: enc.encode([phrases[i % 12], phrases[(i * 5) % 12]]), range(200)))
    for i, out in enumerate(outs):
        torch.testing.assert_close(out, ref[[i % 12, (i * 5) % 12]])
    assert len(enc._cache) <= 3
