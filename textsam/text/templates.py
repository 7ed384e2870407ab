"""Prompt templates for CLIP text-embedding ensembles.

A template is a sentence with exactly one ``{}`` placeholder that receives the phrase. Averaging the
(normalised) CLIP text embeddings of a phrase put into several templates, then normalising again,
gives a more robust embedding than the bare phrase ("prompt ensembling", CLIP paper section 3.1.4).

Named lists:

* ``"default"``: a short list for localisation (fast: one text-tower batch of 10).
* ``"imagenet80"``: the 80 ImageNet templates of OpenAI's CLIP prompt-engineering notebook.
* ``"single"``: just ``"a photo of a {}."``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from textsam.errors import InputError

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "a cropped photo of the {}.",
    "a good photo of the {}.",
)

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_TEMPLATES,
    "imagenet80": IMAGENET_TEMPLATES,
    "single": ("a photo of a {}.",),
}

_LEADING_ARTICLE = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)
_ARTICLE_BEFORE_SLOT = re.compile(r"(^|\s)(a|an|the|one|my|many)\s+\{\}", re.IGNORECASE)


def list_template_sets() -> list[str]:
    """Names accepted by :func:`get_templates` and :func:`expand`."""
    return list(TEMPLATE_SETS)


def get_templates(templates: str | Sequence[str] = "default") -> list[str]:
    """Resolve a template-set name (see :func:`list_template_sets`) or check a list of templates.

    Every template must contain exactly one ``{}``; raises :class:`InputError` otherwise.
    """
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise InputError(
                f"unknown template set {templates!r}; use one of {list_template_sets()} or pass a list of "
                "strings with one '{}' each"
            )
        return list(TEMPLATE_SETS[templates])
    resolved = list(templates)
    if not resolved:
        raise InputError("the template list is empty; pass at least one template such as 'a photo of a {}.'")
    for template in resolved:
        if template.count("{}") != 1:
            raise InputError(f"template {template!r} must contain exactly one '{{}}' placeholder")
    return resolved


def clean_phrase(phrase: object) -> str:
    """Strip and collapse whitespace; raise :class:`InputError` for a non-string or empty phrase."""
    if not isinstance(phrase, str):
        raise InputError(f"a text prompt must be a string, got {type(phrase).__name__}")
    cleaned = " ".join(phrase.split())
    if not cleaned:
        raise InputError("the text prompt is empty: type a phrase naming the object, e.g. 'the red car'")
    return cleaned


def _fill(template: str, phrase: str) -> str:
    """Put ``phrase`` into ``template``, dropping the phrase's own leading article when the template
    already has one right before the slot ("a photo of a {}" + "the dog" -> "a photo of a dog")."""
    if _ARTICLE_BEFORE_SLOT.search(template):
        bare = _LEADING_ARTICLE.sub("", phrase)
        phrase = bare or phrase
    return template.replace("{}", phrase)


def expand(phrase: str, templates: str | Sequence[str] = "default") -> list[str]:
    """The phrase put into every template, in template order.

    Args:
        phrase: free text, e.g. ``"red car"``; surrounding/multiple whitespace is collapsed.
        templates: a set name (``"default"``, ``"imagenet80"``, ``"single"``) or a list of templates.

    Returns:
        ``len(templates)`` sentences, e.g. ``["a photo of a red car.", ...]``.
    """
    cleaned = clean_phrase(phrase)
    return [_fill(template, cleaned) for template in get_templates(templates)]
