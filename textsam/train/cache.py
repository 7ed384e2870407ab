"""Embeddings of the frozen encoders, computed once and kept on disk (or in memory for phrases).

Image embeddings when the image encoder is frozen, CLIP text embeddings of every phrase when the text tower is
frozen, and for ``clip_crops`` the CLIP image embeddings of each target's crop variants. File names carry a
fingerprint of the encoder weights and of the settings that shape the inputs, so stale files are never reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .recipes import Recipe

__all__ = ["EmbeddingCache", "fingerprint", "warm_cache", "text_table"]


class EmbeddingCache:
    """On-disk embeddings of frozen encoders under ``root`` (written by :func:`warm_cache`).

    ``images/<fingerprint>/<split>/<image_id>.pt`` ``(C, h, w)``; ``crops/<fingerprint>/<split>/<key>.pt``
    ``(V, D)`` (one row per crop variant); ``text/<fingerprint>.pt`` ``{phrase: (D,)}``. Fingerprints hash
    the encoder weights and the settings that shape the inputs, so stale files are never reused.
    """

    def __init__(self, root: str | Path | None, image_fp: str | None = None, clip_fp: str | None = None,
                 text_fp: str | None = None, text_table: dict[str, torch.Tensor] | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.image_fp, self.clip_fp, self.text_fp = image_fp, clip_fp, text_fp
        self._text = text_table  # in memory (no root), or loaded from text_path() on first use

    @classmethod
    def in_memory(cls, text_table: dict[str, torch.Tensor]) -> EmbeddingCache:
        """No files: only a phrase -> embedding table."""
        return cls(None, text_fp="memory", text_table=text_table)

    def image_path(self, split: str, image_id: int) -> Path:
        return Path(str(self.root)) / "images" / str(self.image_fp) / split / f"{image_id}.pt"

    def crop_path(self, split: str, key: str) -> Path:
        return Path(str(self.root)) / "crops" / str(self.clip_fp) / split / f"{key}.pt"

    def text_path(self) -> Path:
        return Path(str(self.root)) / "text" / f"{self.text_fp}.pt"

    def image(self, split: str, image_id: int) -> torch.Tensor:
        return torch.load(self.image_path(split, image_id), map_location="cpu", weights_only=True)

    def crops(self, split: str, key: str) -> torch.Tensor:
        return torch.load(self.crop_path(split, key), map_location="cpu", weights_only=True)

    def text(self, phrase: str) -> torch.Tensor:
        if self._text is None:
            self._text = torch.load(self.text_path(), map_location="cpu", weights_only=True)
        return self._text[phrase]


def fingerprint(module: nn.Module, *extra: object) -> str:
    """16 hex digits of sha256 over a module's state (names, shapes, bytes) and ``extra``."""
    h = hashlib.sha256(repr(extra).encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def warm_cache(recipe: Recipe, datasets: Sequence[Any], root: str | Path, *, write: bool = True,
               batch_size: int = 8) -> EmbeddingCache:
    """Compute (``write``) and describe the on-disk embeddings of the frozen encoders for ``datasets``.

    Image embeddings when the image encoder is frozen; text embeddings of every phrase for text
    recipes; for ``clip_crops`` the CLIP embeddings of ``crop_variants`` crops per training target.
    Existing files are reused; they are stored as ``[cache] dtype``. Call with ``write=False`` on ranks other
    than 0 (after a barrier).
    """
    cfg, model, aug = recipe.config, recipe.model, recipe.config.augment
    cache = EmbeddingCache(root)
    dtype = getattr(torch, cfg.cache.dtype)
    stored = () if dtype == torch.float32 else (cfg.cache.dtype,)  # float32 files keep their earlier names
    if cfg.freeze.image_encoder:
        cache.image_fp = fingerprint(model.image_encoder, model.img_size, tuple(model.pixel_mean.flatten().tolist()),
                                     *stored)
    if recipe.text_encoder is not None and recipe.module.text_encoder is None:  # frozen text tower
        clip = recipe.text_encoder.clip
        cache.text_fp = fingerprint(clip, "text", recipe.text_encoder.model_name, *stored)
        if recipe.name == "clip_crops":
            cache.clip_fp = fingerprint(clip.visual, cfg.seed, aug.crop_variants, aug.crop_enlarge,
                                        aug.crop_grey_prob, *stored)
    if not write:
        return cache
    device = model.pixel_mean.device
    for ds in datasets if cache.image_fp else ():
        todo = sorted({e.image_id for e in ds.entries if not cache.image_path(ds.split, e.image_id).exists()})
        cache.image_path(ds.split, 0).parent.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(todo), batch_size):
            ids = todo[i : i + batch_size]
            imgs = torch.stack([ds.input_image(ds.coco.load_image(j)) for j in ids]).to(device)
            for j, e in zip(ids, recipe.image_embeddings(imgs)):
                _atomic_save(e.to("cpu", dtype).clone(), cache.image_path(ds.split, j))
    if cache.text_fp:
        table = torch.load(cache.text_path(), weights_only=True) if cache.text_path().exists() else {}
        missing = text_table(recipe, [e.phrase for ds in datasets for e in ds.entries], skip=table)
        if missing:
            table.update({k: v.to(dtype) for k, v in missing.items()})
            cache.text_path().parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(table, cache.text_path())
    for ds in datasets[:1] if cache.clip_fp else ():
        cache.crop_path(ds.split, "x").parent.mkdir(parents=True, exist_ok=True)
        for e in ds.entries:
            if cache.crop_path(ds.split, e.key).exists():
                continue
            image, mask = ds.coco.load_image(e.image_id), ds.target_mask(e)
            crops = torch.stack([ds.make_crop(image, mask, e.key, v) for v in range(aug.crop_variants)])
            _atomic_save(recipe.crop_embeddings(crops).to("cpu", dtype).clone(), cache.crop_path(ds.split, e.key))
    return cache


@torch.no_grad()
def text_table(recipe: Recipe, phrases: Sequence[str], skip: Any = (), chunk: int = 256) -> dict[str, Tensor]:
    """CLIP text embeddings of the distinct ``phrases`` (minus ``skip``), encoded in sorted chunks.

    ``TextEncoder`` trims each batch to its longest phrase, so an embedding's rounding depends on its
    batch; a table fixed up front keeps training bit-reproducible across resumes and world sizes.
    """
    todo = sorted({p for p in phrases if p not in skip})
    table: dict[str, Tensor] = {}
    for i in range(0, len(todo), chunk):
        part = todo[i : i + chunk]
        table.update({p: e.cpu().clone() for p, e in zip(part, recipe.text_embeddings(part))})
    return table


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
