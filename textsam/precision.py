"""Reduced precision where it is only an approximation's business: which devices run bf16 natively, and the
autocast context of a precision name.

SAM itself computes in fp32 by default (the image encoder and every decoder call that makes a returned mask:
SAM's exact numbers); ``TextSamPredictor(..., image_precision="bf16")`` opts the encoder into bf16, and the CPU
fast path (:meth:`TextSamPredictor.fast`) does so where bf16 is native. The text engine's approximate work (which
proposal answers a phrase: the proposal clicks, the CLIP towers) runs in bf16 by default where bf16 is native
(``EngineOptions(precision="bf16")``; ``"fp32"`` opts out). On a device without native bf16 arithmetic (a CPU
without AVX-512 BF16 or AMX) bf16 is emulated and slower than fp32, so fp32 is kept there.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch

from .errors import InputError

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, what: str) -> None:
    """Raise :class:`InputError` unless ``precision`` is one of ``fp32``, ``bf16``, ``fp16``."""
    if precision not in ("fp32", *DTYPES):
        raise InputError(f"{what} must be 'fp32', 'bf16' or 'fp16', not {precision!r}")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX
    (where bf16 matrix products run at about twice fp32's rate)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def autocast(device: torch.device | str, precision: str) -> Any:
    """A context running ``device``'s matrix products in ``precision`` (a no-op for ``fp32``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])
