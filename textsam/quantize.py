"""Int8 linear layers for x86 CPUs without native bf16: the CPU fast path's image encoder and CLIP image tower.

On an x86 CPU without AVX-512 BF16 or AMX, bf16 is emulated (slower than fp32), but int8 matrix products run
natively (AVX2 ``vpmaddubsw``/``vpmaddwd``, AVX-512 VNNI) through PyTorch's x86/fbgemm quantized engine.
:func:`int8_copy` copies a module and replaces every ``nn.Linear`` with :class:`Int8Linear`: weights int8 per
output channel, activations quantised per call from their own range (dynamic quantisation), int32
accumulation, fp32 out. Everything else (attention's products, convolutions, LayerNorm) stays fp32.

Measured on a 2-core AMD EPYC (AVX2), random weights: SAM ViT-B's encoder 1.21-1.36x faster at 1024 px
(``benchmarks/bench_encoder.py``: 10.39 -> 8.62 s in one run; 7.5-8.8 -> 5.9-6.4 s in others), binary masks of
clicks against fp32's IoU 0.97 min; on the synthetic proxy (shapes_tiny, encoder and CLIP image tower int8) text
mIoU 83.80 -> 83.81 with the learned head (100 test images), 70.95 -> 70.61 through the fast engine (200).
MobileSAM's TinyViT ran 1.6x faster but its random-weight masks agreed with fp32's at IoU 0.77-0.95 min, so
the fast path keeps it fp32 (``ImageEncoderViT.int8_fast_path``).

PyTorch marks its eager quantisation API as deprecated in favour of torchao (whose CPU int8 products run
through ``torch._int_mm``, about 50x slower than fbgemm on such a CPU), so :func:`int8_supported` checks that
the quantised engine is there and callers fall back to fp32 where it is not.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["Int8Linear", "int8_copy", "int8_supported"]


@functools.lru_cache(maxsize=1)
def _engine_ok() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic  # noqa: F401
        engines = torch.backends.quantized.supported_engines
        if not any(e in engines for e in ("x86", "fbgemm")):
            return False
        Int8Linear(nn.Linear(8, 8))(torch.zeros(2, 8))  # the engine's kernels are there and run
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: no int8 here
        logger.info("int8 linear layers unavailable (%s): fp32 is used", err)
        return False


def int8_supported(device: torch.device | str) -> bool:
    """Whether ``device`` runs :class:`Int8Linear` natively: a CPU with PyTorch's x86/fbgemm quantized engine."""
    return torch.device(device).type == "cpu" and _engine_ok()


class Int8Linear(nn.Module):
    """A dynamically quantised copy of ``linear``: ``(..., in_features)`` fp32 -> ``(..., out_features)`` fp32,
    int8 weights (one scale per output channel), activations quantised per call. Keeps ``bias`` (fp32) and the
    feature counts as attributes, as ``nn.Linear`` has them (SAM's windowed attention pads with the qkv bias)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the eager API's deprecation notice (see the module docstring)
            self.inner = quantize_dynamic(nn.Sequential(copy.deepcopy(linear).float().cpu().eval()),
                                          {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().cpu().clone(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.float())


def int8_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (on the CPU, eval mode) with every plain ``nn.Linear`` an :class:`Int8Linear`;
    ``module`` itself is untouched. Subclasses of ``nn.Linear`` (e.g. ``nn.MultiheadAttention``'s output
    projection, whose weight the fused attention reads directly) stay fp32."""
    out = copy.deepcopy(module).cpu().eval()
    _swap(out)
    return out


def _swap(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear(child))
        else:
            _swap(child)
