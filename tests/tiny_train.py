"""The small model the training tests train: 128 px input, patch 8 -> 16x16 embedding of width 64, 64x64
low-res masks, a decoder of width 64 (random weights; a few training steps take about a second on the CPU).

It is registered in ``textsam.config.MODEL_CONFIGS`` as ``tiny_train`` only while a test module that uses it
runs (fixture ``tiny_train_model``); a child process gets it through :func:`child_command`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from textsam.config import (
    MODEL_CONFIGS,
    SHAPES_TINY,
    MaskDecoderConfig,
    ModelConfig,
    PromptEncoderConfig,
    ViTEncoderConfig,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_MODEL = "tiny_train"
TRAIN_CONFIG = ModelConfig(
    name=TRAIN_MODEL,
    image_encoder=ViTEncoderConfig(img_size=128, patch_size=8, embed_dim=96, depth=4, num_heads=3, out_chans=64,
                                   window_size=0, global_attn_indexes=(0, 1, 2, 3)),
    prompt_encoder=PromptEncoderConfig(embed_dim=64, mask_in_chans=16),
    mask_decoder=MaskDecoderConfig(transformer_dim=64, depth=2, num_heads=4, mlp_dim=256, iou_head_hidden_dim=64),
    text=SHAPES_TINY.text,
)


def register() -> None:
    """Make ``tiny_train`` a model name (for ``create_model`` and training configs) in this process."""
    MODEL_CONFIGS[TRAIN_MODEL] = TRAIN_CONFIG


@contextmanager
def registered() -> Iterator[str]:
    had = TRAIN_MODEL in MODEL_CONFIGS
    register()
    try:
        yield TRAIN_MODEL
    finally:
        if not had:
            MODEL_CONFIGS.pop(TRAIN_MODEL, None)


@pytest.fixture(scope="module")
def tiny_train_model() -> Iterator[str]:
    """``tiny_train`` registered while the module's tests run."""
    with registered() as name:
        yield name


_CHILD = ("import sys; sys.path.insert(0, {repo!r}); from tests.tiny_train import register; register(); "
          "from textsam.cli import main; sys.exit(main(sys.argv[1:]))")


def child_command(*argv: object) -> list[str]:
    """``textsam ARGV`` in a child Python process, with ``tiny_train`` registered there."""
    return [sys.executable, "-c", _CHILD.format(repo=str(REPO)), *map(str, argv)]
