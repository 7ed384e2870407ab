"""The CLIP text side: an open_clip model with its tokenizer and a per-phrase cache.

``TextEncoder.encode(phrases) -> (N, D)`` unit CLIP embeddings in the joint image-text space;
``TextEncoder.encode_words(phrases)`` adds the tower's last-layer per-token features ``(N, L, W)`` and their
mask. CLIP's pooled embedding is close to a bag of words (phrases that differ only in "left" / "right" get
nearly the same vector: 1 - cosine 3e-4 between "the leftmost star" and "the rightmost star" in
shapes_tiny's tower); a text head's locator may read the per-token features, where such words stay apart.
The image tower serves dense features (:mod:`textsam.text.grounding`).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError, WeightsError
from ..precision import DTYPES, autocast, check_precision, reduced_copy
from .prefix import PrefixCache, prefix_ids, run_blocks, supports_prefixes
from .templates import clean_phrase, expand, get_templates

logger = logging.getLogger(__name__)

DEFAULT_CLIP = ("ViT-B-16-quickgelu", "openai")
# the CPU fast path's CLIP for a published SAM (:func:`textsam.factory.fast_clip`): OpenAI's ViT-B/32, the crop
# scorer of ReCLIP, FastSAM and segment-anything-with-clip; its image tower is 4.4 GMACs at 224 px against
# ViT-B/16's 17.6 (49 patches instead of 196), the text tower is the same size
FAST_CLIP = ("ViT-B-32-quickgelu", "openai")


def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """``"NAME/TAG"`` -> ``(NAME, TAG)``; ``"NAME"`` -> ``(NAME, None)``; ``local-dir:``/``hf-hub:`` kept whole.

    A TAG may also be a path to a weights file (``"ViT-B-16/~/clip.safetensors"`` is ambiguous, so
    paths are given as ``NAME/@/path/to/file``).
    """
    spec = spec.strip()
    if spec.startswith(("local-dir:", "hf-hub:")):
        return spec, None
    if "/@/" in spec:
        name, path = spec.split("/@/", 1)
        return name, path
    if "/" in spec:
        name, tag = spec.split("/", 1)
        return name, tag or None
    return spec, None


def _sequence_first(transformer: nn.Module) -> nn.Module:
    """An open_clip text ``Transformer`` made to run its blocks on ``(L, N, D)`` tokens (it transposes once, into
    a contiguous tensor) when every attention in it is a plain ``nn.MultiheadAttention``: the same values. A
    batch-first MultiheadAttention with a mask projects a transposed view, which in bf16 on a CPU becomes a
    batched matmul against a copy of the weight per token position (three quarters of a phrase's time)."""
    attentions = [m for m in transformer.modules() if isinstance(m, nn.MultiheadAttention)]
    blocks = getattr(transformer, "resblocks", None)
    if (getattr(transformer, "batch_first", False) and attentions and blocks is not None
            and len(attentions) == len(blocks)):
        transformer.batch_first = False
        for attention in attentions:
            attention.batch_first = False
    return transformer


QUICK_GELU_SLOPE = 1.702  # open_clip's QuickGELU: x * sigmoid(1.702 x)


def fold_quick_gelu(tower: nn.Module) -> None:
    """Rewrite, in place, every MLP ``c_fc -> QuickGELU -> c_proj`` of an open_clip tower (OpenAI's CLIPs) as
    ``c_fc' -> SiLU -> c_proj'`` with ``c_fc' = 1.702 c_fc`` and ``c_proj' = c_proj / 1.702``: the same function,
    since ``silu(1.702 x) = 1.702 x sigmoid(1.702 x)``, in one elementwise pass instead of three. Used for the
    reduced-precision copies (:func:`textsam.precision.reduced_copy`), where it made 22 crops through ViT-B/16's bf16
    image tower 9% faster (716 -> 650 ms, 2-core Xeon with AMX; embeddings at the same cosine with fp32's, 0.99995);
    the fp32 towers stay open_clip's own."""
    for mlp in tower.modules():
        act = getattr(mlp, "gelu", None)
        if type(act).__name__ != "QuickGELU" or not all(isinstance(getattr(mlp, n, None), nn.Linear)
                                                          for n in ("c_fc", "c_proj")):
            continue
        mlp.c_fc.weight.mul_(QUICK_GELU_SLOPE)
        if mlp.c_fc.bias is not None:
            mlp.c_fc.bias.mul_(QUICK_GELU_SLOPE)
        mlp.c_proj.weight.div_(QUICK_GELU_SLOPE)
        mlp.gelu = nn.SiLU()


class ImageTower(nn.Module):
    """A CLIP's image side alone, e.g. a reduced-precision copy (:meth:`TextEncoder.image_model`): ``visual``
    and ``encode_image``, as open_clip's ``CLIP`` has them."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor:
        features = self.visual(image)
        return nn.functional.normalize(features, dim=-1) if normalize else features


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" while the weights are loaded
    right after (:func:`_built_on_meta_and_loaded`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def _built_on_meta_and_loaded(model_name: str, pretrained: str | None, device: str | torch.device | None,
                              cache_dir: str | Path | None) -> nn.Module | None:
    """``open_clip.create_model(model_name, pretrained)`` without the random values its weights overwrite.

    open_clip resolves the weights file once (a tag's download, ``open_clip.download_pretrained``, or the file
    given) and builds the model from it on the meta device (``load_weights=False``, with the tag's
    preprocessing); the model gets empty storage on ``device``, open_clip's own ``load_checkpoint`` fills it
    (strict: every parameter and persistent buffer), and the text tower's causal mask, the one buffer no
    checkpoint holds, is made again. ViT-B/16 with a file: 0.27 s against 1.06 s for open_clip's build
    (the random initialisation was most of it). None where this does not apply, and the caller builds as open_clip
    does: no weights wanted, a ``hf-hub:`` / ``local-dir:`` name, a tag or file open_clip does not know, or a
    model other than open_clip's plain ``CLIP`` (other non-persistent buffers: e.g. a Hugging Face text tower's).
    """
    import open_clip
    from open_clip.factory import parse_model_name
    from open_clip.model import CLIP

    if pretrained is None or parse_model_name(model_name)[0] is not None:
        return None
    tag = open_clip.get_pretrained_cfg(model_name.replace("/", "-"), pretrained)
    if not tag and not Path(pretrained).is_file():
        return None
    # the file once (a tag's download, or the cache's copy of it), then open_clip's build from it with the tag's
    # preprocessing (the keys of it open_clip merges: mean, std, interpolation, resize mode)
    path = open_clip.download_pretrained(tag, cache_dir=str(cache_dir) if cache_dir else None) if tag else pretrained
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        with torch.device("meta"):
            model = open_clip.create_model(model_name, pretrained=path, load_weights=False, device="meta",
                                           force_preprocess_cfg=dict(tag) if tag else None)
    finally:
        logging.getLogger().removeFilter(quiet)
    saved = set(model.state_dict())
    transient = {name: b for name, b in model.named_buffers() if name not in saved}
    mask = transient.get("attn_mask")
    if type(model) is not CLIP or set(transient) - {"attn_mask"} or (mask is not None and (
            mask.dim() != 2 or mask.shape[0] != mask.shape[1])):
        return None
    target = torch.device(device) if device is not None else torch.device("cpu")
    model.to_empty(device=target)
    open_clip.load_checkpoint(model, path, strict=True)
    if mask is not None:
        model.attn_mask = _causal_mask(mask.shape, target)
    return model


def _causal_mask(shape: torch.Size, device: torch.device) -> Tensor:
    """open_clip's text causal mask (``TextTransformer.build_causal_mask``): ``(L, L)``, -inf above the diagonal."""
    return torch.full(tuple(shape), float("-inf"), device=device).triu_(1)


class TextEncoder(nn.Module):
    """CLIP text tower plus its tokenizer, with an LRU cache of phrase embeddings.

    Args:
        clip_model: an open_clip ``CLIP`` model (its visual tower serves grounding).
        tokenizer: the tokenizer of the same open_clip model name.
        model_name: open_clip model name (kept in text-head metadata).
        pretrained: open_clip pretrained tag or weights path (kept in metadata), None for random.
        cache_size: how many phrase embeddings to keep.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: object,
        *,
        model_name: str,
        pretrained: str | None,
        cache_size: int = 4096,
    ) -> None:
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.pretrained = pretrained
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._word_cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self._low_precision_caches: dict[str, OrderedDict[str, Tensor]] = {}  # encode(precision="bf16"), ...
        self._cache_lock = threading.Lock()  # predictors on several threads share one encoder
        self.tower_calls = 0  # text-tower forward passes run so far (for cache measurements)
        # reduced-precision copies of the image tower, by (precision, device); a plain dict, not submodules,
        # so they are never part of the state dict
        self._image_towers: dict[tuple[str, str], tuple[tuple[int, ...], ImageTower]] = {}
        self._text_towers: dict[tuple[str, str], tuple[tuple[int, ...], nn.Module]] = {}  # the text transformer's
        # the templates' shared beginnings, run once (encode_ensembles registers them; :mod:`textsam.text.prefix`)
        self._prefixes = PrefixCache()
        self._registered_templates: set[tuple[str, ...]] = set()

    @classmethod
    def create(
        cls,
        model_name: str = DEFAULT_CLIP[0],
        pretrained: str | None = DEFAULT_CLIP[1],
        *,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
    ) -> TextEncoder:
        """Build an open_clip model by name with pretrained weights (tag, local file or ``local-dir:``).

        ``pretrained=None`` gives random weights and never touches the network.
        """
        import open_clip

        try:
            model = _built_on_meta_and_loaded(model_name, pretrained, device, cache_dir) or open_clip.create_model(
                model_name,
                pretrained=pretrained,
                device=device,
                cache_dir=str(cache_dir) if cache_dir else None,
            )
        except (RuntimeError, OSError) as err:
            detail = str(err).split("\n")[0][:160]
            # open_clip raises RuntimeError for unknown names and tags, and for weights it failed to download
            if isinstance(err, RuntimeError) and "download" not in str(err).lower():
                raise WeightsError(
                    f"cannot create CLIP model {model_name!r} with weights {pretrained!r} ({detail}). "
                    f"open_clip.list_pretrained() lists the valid NAME/TAG pairs."
                ) from err
            fast = (" (ViT-B/32 is the CPU fast path's CLIP: --clip "
                    f"{'/'.join(DEFAULT_CLIP)} keeps the default one)" if (model_name, pretrained) == FAST_CLIP else "")
            raise WeightsError(
                f"cannot get the CLIP weights {model_name}/{pretrained} ({detail}){fast}. Without network, "
                "download them elsewhere and pass a local file as --clip NAME/@/path/to/open_clip_model.safetensors "
                "or a folder as --clip local-dir:/path (with open_clip_config.json)."
            ) from err
        tokenizer = open_clip.get_tokenizer(model_name)
        return cls(model.eval(), tokenizer, model_name=model_name, pretrained=pretrained)

    @classmethod
    def from_config(cls, model_name: str, model_cfg: dict, state: dict[str, Tensor] | None = None,
                    *, device: str | torch.device | None = None) -> TextEncoder:
        """A CLIP outside open_clip's registry (one textsam trained itself) from its open_clip ``model_cfg``,
        with ``state`` (a whole CLIP state dict; random weights when None). Tokenizer: the standard CLIP BPE
        at the config's context length."""
        import open_clip
        from open_clip.model import CLIP

        from ..weights.checkpoint import load_into

        if state is None:
            clip = CLIP(**model_cfg)
        else:  # every value comes from ``state``: no random ones made first (as _built_on_meta_and_loaded)
            with torch.device("meta"):
                clip = CLIP(**model_cfg)
            mask = getattr(clip, "attn_mask", None)
            clip.to_empty(device="cpu")
            load_into(clip, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
            if mask is not None:
                clip.attn_mask = _causal_mask(mask.shape, torch.device("cpu"))
        context = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
        tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=context)
        encoder = cls(clip.eval(), tokenizer, model_name=model_name, pretrained=None)
        return encoder.to(device) if device is not None else encoder

    @property
    def embed_dim(self) -> int:
        """Width ``D`` of the joint CLIP embedding."""
        proj = getattr(self.clip, "text_projection", None)
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if isinstance(proj, Tensor):
            return int(proj.shape[1])
        return int(self.clip.visual.output_dim)

    @property
    def word_dim(self) -> int:
        """Width ``W`` of the per-token features (:meth:`encode_words`); 0 when the tower has none."""
        if not self._has_causal_tower():
            return 0
        return int(self.clip.ln_final.normalized_shape[0])

    @property
    def causal(self) -> bool:
        """Whether the text tower is open_clip's causal transformer pooled at the end token (OpenAI's CLIPs, the
        ones textsam trains): a sentence's embedding then ignores whatever follows its end token."""
        return self._has_causal_tower()

    def _has_causal_tower(self) -> bool:
        clip = self.clip
        return (isinstance(getattr(clip, "attn_mask", None), Tensor) and getattr(clip, "text_pool_type", None) == "argmax"
                and hasattr(clip, "token_embedding") and hasattr(clip, "ln_final"))

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77) or 77)

    def _device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def _warn_if_truncated(self, phrase: str) -> None:
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            return
        n = len(encode(phrase)) + 2  # start and end tokens
        if n > self.context_length:
            logger.warning("the text prompt has %d tokens, more than CLIP's context of %d; only the start was "
                           "used: %r...", n, self.context_length, phrase[:60])

    @torch.inference_mode()
    def encode(self, phrases: str | Sequence[str], precision: str = "fp32") -> Tensor:
        """Unit CLIP embeddings ``(N, D)`` (float32) of phrases; cached phrases skip the text tower.

        ``precision``: the text tower's transformer (``"bf16"``: a bf16 copy of it, :meth:`text_transformer`,
        about 1.7x faster on a CPU with native bf16, cosine with fp32's embedding >= 0.9999 for ViT-B/16; a cache
        of its own)."""
        items = [phrases] if isinstance(phrases, str) else list(phrases)
        if not items:
            raise InputError("no phrase given")
        check_precision(precision, "text tower precision")
        cleaned = [clean_phrase(p) for p in items]

        def compute(missing: list[str]) -> list[Tensor]:
            return list(self._embed_sentences(self.tokenize(missing), precision))

        cache = self._cache if precision == "fp32" else self._low_precision_caches.setdefault(precision, OrderedDict())
        return torch.stack(self._cached(cache, cleaned, compute))

    def _embed_sentences(self, tokens: Tensor, precision: str) -> Tensor:
        """Unit embeddings ``(N, D)`` float32 of token ids ``(N, L)`` for :meth:`encode`: through the registered
        template beginnings (:mod:`textsam.text.prefix`; the same values up to rounding) when some sentence starts
        with one and the tower allows it, else :meth:`embed_tokens`."""
        if self._prefixes.prefixes and self._has_causal_tower():
            transformer = self.text_transformer(precision)
            if supports_prefixes(self.clip, transformer) and any(self._prefixes.longest(row) > 1 for row in tokens.tolist()):
                dtype = self.clip.transformer.get_cast_dtype() if precision == "fp32" else DTYPES[precision]
                return self._prefixes.embed(self.clip, transformer, tokens, dtype)
        return self.embed_tokens(tokens, precision=precision).float()

    @torch.inference_mode()
    def encode_words(self, phrases: str | Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Pooled unit embeddings ``(N, D)``, per-token features ``(N, L, W)`` and their mask ``(N, L)``
        (True = a real token: start, words, end; padding rows are zero), float32; cached per phrase."""
        items = [phrases] if isinstance(phrases, str) else list(phrases)
        if not items:
            raise InputError("no phrase given")
        cleaned = [clean_phrase(p) for p in items]

        def compute(missing: list[str]) -> list[tuple[Tensor, Tensor]]:
            pooled, words, mask = self.embed_tokens(self.tokenize(missing), with_words=True)
            return [(e, w[m]) for e, w, m in zip(pooled.float(), words.float(), mask)]

        entries = self._cached(self._word_cache, cleaned, compute)
        length = max(w.shape[0] for _, w in entries)
        words = entries[0][1].new_zeros(len(entries), length, entries[0][1].shape[1])
        mask = torch.zeros(len(entries), length, dtype=torch.bool, device=words.device)
        for i, (_, w) in enumerate(entries):
            words[i, : w.shape[0]], mask[i, : w.shape[0]] = w, True
        return torch.stack([e for e, _ in entries]), words, mask

    def _cached(self, cache: OrderedDict, phrases: list[str], compute: Callable[[list[str]], list]) -> list:
        """The cached value of every phrase (``compute(missing)`` fills the misses in one tower call).

        The answer is assembled before the cache is trimmed, so a batch larger than the cache, or one that
        mixes an old entry with new ones, is always answered in full; the cache keeps the most recently
        used ``cache_size`` phrases.
        """
        with self._cache_lock:
            found = {p: cache[p] for p in dict.fromkeys(phrases) if p in cache}
        missing = [p for p in dict.fromkeys(phrases) if p not in found]
        if missing:
            for p in missing:
                self._warn_if_truncated(p)
            found.update(zip(missing, compute(missing)))
            self.tower_calls += 1
        with self._cache_lock:
            for p in dict.fromkeys(phrases):
                cache[p] = found[p]
                cache.move_to_end(p)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return [found[p] for p in phrases]

    def tokenize(self, phrases: Sequence[str]) -> Tensor:
        """Token ids ``(N, context_length)`` int64 of (already cleaned) phrases, on the tower's device."""
        return self.tokenizer(list(phrases)).to(self._device())

    def embed_tokens(self, tokens: Tensor, with_words: bool = False, *, trim: bool = True,
                     precision: str = "fp32") -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Unit embeddings ``(N, D)`` of token ids ``(N, L)``, with autograd (for training the tower).

        ``with_words``: also the last-layer per-token features ``(N, L', W)`` (after the final layer norm,
        before the joint projection) and their mask ``(N, L')`` (True up to and including the end token;
        ``L'`` = the longest phrase), as ``(pooled, words, mask)``.

        Bypasses the phrase cache: after changing the tower's weights call :meth:`clear_cache`.

        For open_clip's causal text towers the padding after the last real token cannot influence the
        pooled (end-of-text) feature, so the sequence is cut to the longest real length first: the
        same embedding, several times faster for short phrases than running all 77 positions. ``trim=False`` keeps
        every position (``L' = L``): a traced graph (the browser page's) must not fix the length it saw; the page
        cuts the tokens to its sentences' longest itself, which its graph takes (a dynamic length axis).

        ``precision`` (inference only): the transformer's precision (:meth:`text_transformer`); the token and
        position embeddings, the final layer norm and the projection stay fp32.
        """
        clip = self.clip
        if not self._has_causal_tower():
            if with_words:
                raise InputError(f"the CLIP text tower of {self.model_name!r} gives no per-token features here; "
                                 "use a text head without a word path (word_tokens = false)")
            with autocast(tokens.device, precision):
                return clip.encode_text(tokens, normalize=True).float()
        if trim:
            length = max(1, min(int((tokens != 0).sum(dim=1).max().item()), tokens.shape[1]))
            tokens = tokens[:, :length]
            positions: Tensor | slice = slice(0, length)
        else:
            # positions computed from the tokens, so that a traced graph takes rows of any length: slicing by the
            # traced length (a Python int) would fix the length it saw, and every shape after it
            positions = torch.ones_like(tokens[0]).cumsum(0) - 1
        transformer = self.text_transformer(precision)
        cast_dtype = clip.transformer.get_cast_dtype() if precision == "fp32" else DTYPES[precision]
        x = clip.token_embedding(tokens).to(cast_dtype) + clip.positional_embedding[positions].to(cast_dtype)
        causal = clip.attn_mask[positions][:, positions]
        if not trim and supports_prefixes(clip, transformer):
            x = run_blocks(transformer, x, causal.float())  # traceable at any length (see run_blocks)
        else:
            x = transformer(x, attn_mask=causal.to(cast_dtype))
        words = clip.ln_final(x if precision == "fp32" else x.to(clip.ln_final.weight.dtype))
        end = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
        x = words[torch.arange(words.shape[0], device=words.device), end]
        proj = clip.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        pooled = torch.nn.functional.normalize(x, dim=-1)
        if not with_words:
            return pooled
        mask = (torch.ones_like(tokens[0]).cumsum(0) - 1)[None] <= end[:, None]  # positions, as above
        return pooled, words * mask[..., None].to(words.dtype), mask

    def encode_ensemble(self, phrase: str, templates: Sequence[str]) -> Tensor:
        """One unit embedding ``(D,)``: the normalised mean over the phrase put into every template
        (:func:`textsam.text.templates.expand`; no templates: the bare phrase). Used wherever a phrase is
        compared with image features."""
        return self.encode_ensembles([phrase], templates)[0]

    def encode_ensembles(self, phrases: Sequence[str], templates: Sequence[str], precision: str = "fp32") -> Tensor:
        """:meth:`encode_ensemble` of several phrases, ``(P, D)``: every sentence in one text-tower batch (in
        ``precision``, see :meth:`encode`)."""
        groups = [expand(p, templates) if templates else [clean_phrase(p)] for p in phrases]
        self._register_templates(templates)
        emb = self.encode([s for group in groups for s in group], precision)
        means = torch.stack([chunk.mean(0) for chunk in torch.split(emb, [len(g) for g in groups])])
        return means / means.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _register_templates(self, templates: Sequence[str]) -> None:
        """Make the words before each template's slot a known sentence beginning (once per template list)."""
        key = tuple(get_templates(templates)) if templates else ()
        if key and key not in self._registered_templates and self._has_causal_tower():
            beginnings = [t.split("{}", 1)[0].strip() for t in key]
            self._prefixes.register([prefix_ids(row) for row in self.tokenize(beginnings)])
            self._registered_templates.add(key)

    def text_copy(self) -> TextEncoder:
        """A TextEncoder with its own copy of this CLIP's text tower and the same image tower (shared, not
        copied), with empty caches: what a text head's fine-tuned tower is loaded into while this encoder keeps
        the tower that matches its image tower."""
        visual = getattr(self.clip, "visual", None)
        clip = copy.deepcopy(self.clip, memo={id(visual): visual} if visual is not None else None)
        return type(self)(clip, self.tokenizer, model_name=self.model_name, pretrained=self.pretrained,
                          cache_size=self.cache_size)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._word_cache.clear()
        self._low_precision_caches.clear()

    def image_model(self, precision: str = "fp32") -> nn.Module:
        """What to run images through in ``precision``: the CLIP itself for ``fp32``; for ``bf16``/``fp16`` an
        :class:`ImageTower` holding a copy of the image tower in that precision (:func:`textsam.precision.reduced_copy`:
        172 MB for ViT-B/16; the fp32 tower is untouched); for ``int8`` one whose linear layers are int8
        (:mod:`textsam.quantize`; a CPU tower; inputs and outputs fp32)."""
        if precision == "fp32":
            return self.clip
        check_precision(precision, "image tower precision", int8=True)
        with self._cache_lock:
            return reduced_copy(self._image_towers, self.clip.visual, precision, ImageTower, prepare=fold_quick_gelu)

    def text_transformer(self, precision: str = "fp32") -> nn.Module:
        """The text tower's transformer in ``precision``: the CLIP's own for ``fp32``; for ``bf16``/``fp16`` a copy
        in that precision (:func:`textsam.precision.reduced_copy`: 76 MB for ViT-B/16's), run sequence-first
        (:func:`_sequence_first`). A copy, not autocast: autocast casts every weight on every call, which costs
        more than a short phrase's own text pass."""
        if precision == "fp32":
            return self.clip.transformer
        check_precision(precision, "text tower precision")
        with self._cache_lock:
            return reduced_copy(self._text_towers, self.clip.transformer, precision, _sequence_first,
                                prepare=fold_quick_gelu)

    def set_text_tower_trainable(self, trainable: bool) -> None:
        """Train (or freeze) the text tower only; the visual tower and the logit scale stay frozen."""
        self.clip.requires_grad_(False)
        for name, param in self.clip.named_parameters():
            param.requires_grad_(trainable and is_text_tower_key(name))
        self.clip.train(trainable)
        self.clip.visual.eval()
        self.clear_cache()


TOWER_PREFIX = "text_encoder.clip."  # TextSam state-dict keys of the CLIP model (the text tower, when trained)


def text_tower_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``text_encoder.clip.*`` tensors of a TextSam state dict, keys without that prefix (empty: none)."""
    return {k[len(TOWER_PREFIX):]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}


def is_text_tower_key(name: str) -> bool:
    """Whether an open_clip ``CLIP`` state-dict key (no prefix) belongs to the text tower."""
    return not name.startswith(("visual.", "logit_scale", "logit_bias"))


def load_text_tower(encoder: TextEncoder, tower: dict[str, Tensor], source: str) -> None:
    """Load CLIP text-tower tensors (state-dict keys without prefix) into ``encoder`` and clear its phrase
    cache; every text-tower key must be present (raises :class:`WeightsError` naming ``source``)."""
    own = {k for k in encoder.clip.state_dict() if is_text_tower_key(k)}
    unknown, missing = sorted(set(tower) - own), sorted(own - set(tower))
    if unknown or missing:
        raise WeightsError(f"{source}: the text-tower weights do not fit this CLIP model (unknown keys "
                           f"{unknown[:3]}, missing {missing[:3]}); use the CLIP the tower was trained from")
    encoder.clip.load_state_dict(tower, strict=False)
    encoder.clear_cache()
