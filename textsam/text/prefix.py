"""Template sentences through a causal CLIP text tower with each template's shared beginning run once.

A phrase is embedded as the mean over template sentences ("a photo of a {}.", "there is a {} in the scene.",
...; :mod:`textsam.text.templates`), and every sentence of one template starts with the same tokens: the
start token and the template's words before the slot. In open_clip's text towers (OpenAI's CLIPs and the
ones textsam trains) attention is causal, so a position's state depends only on the tokens up to it: the
states of that shared beginning, the *prefix*, are the same in every sentence that starts with it. They are
computed once (and kept: the templates are fixed), and each sentence runs only its own remaining tokens,
whose attention reads the prefix's keys and values. The values are the tower's own up to floating-point
rounding; only the work changes. For the default templates the prefix is 4-8 of a sentence's 9-12 tokens:
20 phrases x 10 templates through ViT-B/16's text tower took 121 ms against 193 ms for the whole sentences in
bf16, 418 against 662 ms in fp32 (``benchmarks/bench_text.py``'s text-tower line, 2-core Xeon with AMX).

Shapes: token ids ``(N, L)`` as the tokenizer gives them (start token, words, end token, zero padding);
per block, a prefix's keys and values ``(heads, P, head_dim)``; the output ``(N, D)`` unit embeddings.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import weight_versions

__all__ = ["PrefixCache", "prefix_ids", "run_blocks", "supports_prefixes"]


def supports_prefixes(clip: nn.Module, transformer: nn.Module) -> bool:
    """Whether ``transformer`` (``clip``'s text transformer or a reduced copy of it) is a stack of open_clip's
    plain pre-norm blocks with one ``nn.MultiheadAttention`` each (packed q/k/v weights), which is what
    :class:`PrefixCache` runs by hand."""
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or not len(blocks) or not hasattr(clip, "positional_embedding"):
        return False
    for block in blocks:
        attn = getattr(block, "attn", None)
        if (not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or hasattr(block, "ln_1_kv")
                or attn.bias_k is not None or not all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"))):
            return False
    return True


def prefix_ids(tokens: Tensor) -> tuple[int, ...]:
    """The ids of a tokenised template beginning ``(L,)`` (start token, words, end token, padding) without its end
    token and padding: what every sentence made from that template starts with."""
    n = int((tokens != 0).sum())
    return tuple(int(t) for t in tokens[: max(1, n - 1)])


class PrefixCache:
    """The keys and values of known sentence beginnings, per text transformer, and the sentences run from them.

    ``register(prefixes)`` adds beginnings (token-id tuples, from :func:`prefix_ids`); ``embed`` finds each
    sentence's longest registered beginning (at least the start token, which every sentence shares) and runs
    the rest. The computed keys and values are kept per transformer for as long as its weights and the token and
    position embeddings keep their versions (:func:`~textsam.precision.weight_versions`), so
    :meth:`TextEncoder.clear_cache <textsam.text.clip.TextEncoder.clear_cache>`, which forgets phrases, keeps
    them; like the reduced-precision tower copies, they do not notice an in-place change to weights made under
    ``torch.inference_mode`` (which keep no version counter). Threads may share it: a race computes a beginning
    twice, with the same values.
    """

    def __init__(self) -> None:
        self.prefixes: dict[tuple[int, ...], None] = {}
        # per transformer (gone with it): the weights' versions they were computed with, and per beginning the
        # keys and values of every block
        self._states: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], dict]] = weakref.WeakKeyDictionary()

    def register(self, prefixes: Sequence[tuple[int, ...]]) -> None:
        """Add sentence beginnings (token-id tuples; the start token alone is no beginning worth keeping)."""
        # a new dict in one assignment: a thread reading the old one (longest) never sees it change size
        self.prefixes = {**self.prefixes, **dict.fromkeys(p for p in prefixes if len(p) > 1)}

    def longest(self, row: Sequence[int]) -> int:
        """Length of the longest registered beginning of the token ids ``row`` (start token, words, end token,
        zero padding) that leaves at least its end token to run (1: the start token alone)."""
        ids = tuple(t for t in row if t != 0)
        best = 1
        for p in self.prefixes:
            if best < len(p) < len(ids) and ids[: len(p)] == p:
                best = len(p)
        return best

    @torch.no_grad()
    def embed(self, clip: nn.Module, transformer: nn.Module, tokens: Tensor, dtype: torch.dtype) -> Tensor:
        """Unit embeddings ``(N, D)`` float32 of token ids ``tokens (N, L)`` through ``clip``'s text side with
        ``transformer`` (its own or a reduced copy, running in ``dtype``): the prefixes' keys and values from
        the cache, the rest of every sentence in one batch."""
        rows = tokens.tolist()
        lengths = [self.longest(row) for row in rows]
        ends = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
        starts = torch.tensor(lengths, device=tokens.device)
        rest = int((ends - starts).max()) + 1  # the longest remainder, its end token included
        # the distinct prefixes' keys and values, padded to the longest, and which one each row starts with
        begins = [tuple(row[:n]) for row, n in zip(rows, lengths)]
        distinct = list(dict.fromkeys(begins))
        which = torch.tensor([distinct.index(b) for b in begins], device=tokens.device)
        width = max(lengths)
        past = self._prefix_states(clip, transformer, distinct, dtype)
        stacked = [[torch.stack([F.pad(p[block][kv], (0, 0, 0, width - len(b))) for p, b in zip(past, distinct)])
                    for kv in (0, 1)] for block in range(len(transformer.resblocks))]
        positions = (starts[:, None] + torch.arange(rest, device=tokens.device)[None]).clamp_max(tokens.shape[1] - 1)
        ids = tokens.gather(1, positions)
        x = clip.token_embedding(ids).to(dtype) + clip.positional_embedding[positions].to(dtype)  # (N, R, W)
        # a row attends to its own prefix (the first `lengths[i]` of `width` slots) and causally to its rest
        slot = torch.arange(width, device=tokens.device)
        own = (slot[None] < starts[:, None])[:, None, :].expand(-1, rest, -1)  # (N, R, width)
        causal = torch.ones(rest, rest, dtype=torch.bool, device=tokens.device).tril()
        allowed = torch.cat([own, causal[None].expand(len(tokens), -1, -1)], dim=2)[:, None]  # (N, 1, R, width + R)
        bias = torch.zeros(allowed.shape, device=tokens.device).masked_fill(~allowed, float("-inf"))
        for block, (keys, values) in zip(transformer.resblocks, stacked):
            x = _block(block, x, keys[which], values[which], bias)[0]
        final = x[torch.arange(len(tokens), device=tokens.device), ends - starts]
        final = clip.ln_final(final.to(clip.ln_final.weight.dtype))
        proj = clip.text_projection
        if proj is not None:
            final = proj(final) if isinstance(proj, nn.Linear) else final @ proj
        return F.normalize(final.float(), dim=-1)

    def _prefix_states(self, clip: nn.Module, transformer: nn.Module, wanted: list[tuple[int, ...]],
                       dtype: torch.dtype) -> list[list[tuple[Tensor, Tensor]]]:
        """Per wanted beginning (P tokens each), per block, its keys and values ``(heads, P, head_dim)``. Those not
        kept are computed together with every registered beginning not yet kept, in one batch; all are computed
        again when the weights have changed (their :func:`~textsam.precision.weight_versions`)."""
        versions = weight_versions(transformer) + weight_versions([clip.token_embedding.weight, clip.positional_embedding])
        entry = self._states.get(transformer)
        if entry is None or entry[0] != versions:
            entry = self._states[transformer] = (versions, {})
        known = entry[1]
        missing = [b for b in dict.fromkeys([*wanted, *self.prefixes]) if b not in known]
        if any(b not in known for b in wanted):
            device = clip.positional_embedding.device
            longest = max(len(b) for b in missing)
            # zero padding after a beginning's end: attention is causal, so it cannot change the beginning's states
            tokens = torch.tensor([list(b) + [0] * (longest - len(b)) for b in missing], device=device)
            x = clip.token_embedding(tokens).to(dtype) + clip.positional_embedding[:longest].to(dtype)
            bias = torch.full((longest, longest), float("-inf"), device=device).triu(1)[None, None]
            per_block = []
            for block in transformer.resblocks:
                x, k, v = _block(block, x, None, None, bias)
                per_block.append((k, v))
            for i, b in enumerate(missing):
                known[b] = [(k[i, :, : len(b)], v[i, :, : len(b)]) for k, v in per_block]
        return [known[b] for b in wanted]


def run_blocks(transformer: nn.Module, x: Tensor, bias: Tensor) -> Tensor:
    """``x (N, L, W)`` through every block of ``transformer`` (see :func:`supports_prefixes`), run by hand, with
    the attention bias ``bias (L, L)`` (0 where a position may attend, -inf elsewhere). For a traced graph:
    ``nn.MultiheadAttention``'s own forward fixes the sequence length it was traced with."""
    for block in transformer.resblocks:
        x = _block(block, x, None, None, bias[None, None])[0]
    return x


def _block(block: nn.Module, x: Tensor, past_keys: Tensor | None, past_values: Tensor | None,
           bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One open_clip pre-norm block on ``x (N, R, W)`` whose attention also reads ``past_keys``/``past_values``
    ``(N, heads, P, head_dim)`` before the row's own; ``bias (N or 1, 1, R, P + R)`` float32, 0 where a position
    may attend, -inf elsewhere. Returns the new ``x`` and this block's keys and values of ``x``'s positions
    ``(N, heads, R, head_dim)``."""
    attn: nn.MultiheadAttention = block.attn
    n, r, w = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, r, heads, w // heads).transpose(1, 2) for t in (q, k, v))
    keys = k if past_keys is None else torch.cat([past_keys, k], dim=2)
    values = v if past_values is None else torch.cat([past_values, v], dim=2)
    # a plain softmax of the products: scaled_dot_product_attention's CPU kernel works row by row and head by head,
    # and with it 200 template sentences took 142 ms against 111 ms (ViT-B/16's text tower in bf16)
    scores = ((q * (q.shape[-1] ** -0.5)) @ keys.transpose(-1, -2)).float() + bias
    weights = (scores - scores.amax(-1, keepdim=True)).exp()
    out = (weights / weights.sum(-1, keepdim=True)).to(values.dtype) @ values
    out = attn.out_proj(out.transpose(1, 2).reshape(n, r, w))
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, k, v
