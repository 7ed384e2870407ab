"""Reduced precision where it is only an approximation's business: which devices run bf16 natively, and the
autocast context of a precision name.

SAM itself computes in fp32 by default (the image encoder and every decoder call that makes a returned mask:
SAM's exact numbers); ``TextSamPredictor(..., image_precision="bf16")`` opts the encoder into bf16, and the CPU
fast path (:meth:`TextSamPredictor.fast`) does so where bf16 is native. The text engine's approximate work (which
proposal answers a phrase: the proposal clicks, the CLIP towers) runs in bf16 by default where bf16 is native
(``EngineOptions(precision="bf16")``; ``"fp32"`` opts out). On a device without native bf16 arithmetic (a CPU
without AVX-512 BF16 or AMX) bf16 is emulated and slower than fp32, so fp32 is kept there, except on the fast
path: ``"int8"`` (the linear layers of SAM's ViT encoder and of the CLIP image tower in int8,
:mod:`textsam.quantize`) is what :meth:`TextSamPredictor.fast` and :meth:`TextOptions.fast` choose on an x86 CPU
without native bf16.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn

from .errors import InputError

Precision = Literal["fp32", "bf16", "fp16", "int8"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, what: str, *, int8: bool = False) -> None:
    """Raise :class:`InputError` unless ``precision`` is one of ``fp32``, ``bf16``, ``fp16`` (or ``int8`` where
    ``int8``: the linear layers of an image tower or encoder, :mod:`textsam.quantize`)."""
    names = ("fp32", *DTYPES) + (("int8",) if int8 else ())
    if precision not in names:
        listed = ", ".join(repr(n) for n in names[:-1]) + f" or {names[-1]!r}"
        raise InputError(f"{what} must be {listed}, not {precision!r}")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU of compute capability 8 or newer (Ampere, Hopper, ...),
    or a CPU with AVX-512 BF16 or AMX (where bf16 matrix products run at about twice fp32's rate)."""
    device = torch.device(device)
    if device.type == "cuda":
        # compute capability 8 (Ampere) or newer: older GPUs only emulate bf16, which
        # torch.cuda.is_bf16_supported() also counts; and the capability of this device, not the current one
        return bool(torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8)
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def autocast(device: torch.device | str, precision: str) -> Any:
    """A context running ``device``'s matrix products in ``precision`` (a no-op for ``fp32``, and for ``int8``,
    whose modules are copies, :func:`reduced_copy`)."""
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def weight_versions(weights: nn.Module | Iterable[torch.Tensor]) -> tuple[int, ...]:
    """What changes when the weights (a module's parameters, or the given tensors) change: each one's storage
    address (new storage: ``.to(device)``, a cast, ``load_state_dict(assign=True)``) and its version counter
    (bumped by every in-place change: an optimizer step, ``load_state_dict``); inference tensors (a model made
    under ``torch.inference_mode``) keep no counter, so only their storage counts."""
    tensors = weights.parameters() if isinstance(weights, nn.Module) else weights
    return tuple(v for p in tensors for v in (p.data_ptr(), -1 if p.is_inference() else p._version))


def reduced_copy(copies: dict, module: nn.Module, precision: str,
                 wrap: Callable[[nn.Module], nn.Module] | None = None,
                 prepare: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """``module`` in ``precision`` (bf16/fp16: its parameters cast; int8: its linear layers quantised,
    :func:`textsam.quantize.int8_copy`), a copy made on first use and kept in ``copies`` once per precision and
    device, outside any state dict (the fp32 module is untouched). The copy is made again when the module's
    weights have changed since (an optimizer step, ``load_state_dict``: every in-place change bumps a tensor's
    version counter; for a model made under ``torch.inference_mode``, which keeps none, only new weight storage is
    noticed). ``prepare``: an in-place rewrite of the fp32 copy (same function) before it is cast or quantised;
    ``wrap``: what is kept is ``wrap(copy)``."""
    device = next(module.parameters()).device
    key = (precision, str(device))
    versions = weight_versions(module)
    entry = copies.get(key)
    if entry is None or entry[0] != versions:
        low = copy.deepcopy(module)
        if prepare is not None:
            with torch.no_grad():
                prepare(low)
        if precision == "int8":
            from .quantize import int8_copy

            low = int8_copy(low)
        else:
            low = low.to(DTYPES[precision]).eval()
        entry = copies[key] = (versions, wrap(low) if wrap else low)
    return entry[1]
