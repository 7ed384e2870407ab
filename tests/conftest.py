"""Shared fixtures: paths to ../shared/data and small random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TEXTSAM_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever writes to (or reads weights from) the user's real cache, or touches the network."""
    monkeypatch.setenv("TEXTSAM_HOME", str(tmp_path_factory.getbasetemp() / "textsam_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``local-dir:`` spec of a tiny random CLIP (tests.tiny.TINY_CLIP_CFG) written once per session."""
    from textsam.train.clip_pretrain import build_clip, save_local_dir

    from .tiny import TINY_CLIP_CFG

    torch.manual_seed(0)
    path = save_local_dir(build_clip(TINY_CLIP_CFG), TINY_CLIP_CFG, tmp_path_factory.mktemp("clip") / "tiny_clip")
    return f"local-dir:{path}"
