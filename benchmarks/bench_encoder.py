"""The image encoder against this CPU's matmul floor, fp32 and bf16, measured in the same run.

The floor is the encoder's own multiply-adds (counted by ``torch.utils.flop_counter.FlopCounterMode``: every
matmul, convolution and attention of one forward) divided by the rate of a plain GEMM of the encoder's
commonest shape (the MLP's ``(4096 x 768) @ (768 x 3072)`` for ViT-B at 1024, into a preallocated output), in
the same precision, best of 10. ``set_image`` is timed the same way (best of ``--repeats``, random weights: the values do not
change the time), and its ratio to the floor is printed; the issue's targets are 1.15x (fp32) and 1.3x (bf16).
``int8`` (the CPU fast path's encoder where bf16 is not native, :mod:`textsam.quantize`) is printed against the
fp32 floor and fp32's time in the same run (its linear layers no longer run at the fp32 GEMM rate). It is
timed twice, alternating: with freed memory kept in the process (:func:`textsam.allocator.keep_freed_memory`, what the
``textsam`` command does) and with glibc's own settings (each block over 32 MB a fresh ``mmap``, so every image's
activations are faulted in again); the minor page faults of one call are printed beside each.
Then a profile of one forward splits the time into the GEMM-like ops and the rest (attention's softmax and
bias, LayerNorm, GELU, layout copies, window partitioning), the rest by op.

With ``--bound``, the kernels outside the big matmuls are timed alone and the lower bound they set is printed
(:func:`bound`): global attention is bound by its exponentials, which the matmul floor does not price.

    python benchmarks/bench_encoder.py [--model sam_vit_b] [--repeats 3] [--profile] [--bound] [--precisions fp32,bf16,int8]
"""

from __future__ import annotations

import argparse
import ctypes
import resource

import numpy as np
import torch
from bench_bundled import best as bundled_best  # the benchmarks folder is on sys.path when run as a script
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import textsam
from textsam.allocator import _glibc, keep_freed_memory
from textsam.precision import native_bf16
from textsam.quantize import int8_supported

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
            "aten::_convolution", "aten::mkldnn_convolution", "aten::convolution",
            "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
            "aten::scaled_dot_product_attention")


GEMM_SHAPE = (4096, 768, 3072)  # ViT-B's MLP at 1024 x 1024: the encoder's commonest matmul


def best(fn, repeats: int) -> float:  # noqa: ANN001
    """Best time of ``fn()`` over ``repeats`` calls after a warm-up call (bench_bundled's timer)."""
    fn()
    return bundled_best(fn, repeats)


def glibc_steady_state() -> None:
    """glibc's malloc as it settles with its own defaults after the first large free: blocks over 32 MB are
    ``mmap``-ed (and unmapped when freed), a free heap top over 64 MB is returned to the kernel."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(32 << 20))  # M_MMAP_THRESHOLD
        libc.mallopt(ctypes.c_int(-4), ctypes.c_int(65536))  # M_MMAP_MAX
        libc.mallopt(ctypes.c_int(-1), ctypes.c_int(64 << 20))  # M_TRIM_THRESHOLD


def alternating(fn, repeats: int) -> dict[str, tuple[float, int]]:  # noqa: ANN001
    """Best time and the minor page faults of that call, of ``fn()`` under each malloc setting, alternating."""
    settings = {"freed memory kept": keep_freed_memory, "glibc settings": glibc_steady_state}
    results: dict[str, tuple[float, int]] = {}
    for _ in range(repeats):
        for name, apply in settings.items():
            apply()
            fn()  # warm-up under this setting
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            secs = bundled_best(fn, 1)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            if name not in results or secs < results[name][0]:
                results[name] = (secs, faults)
    keep_freed_memory()
    return results


def gemm_rate(dtype: torch.dtype, m: int, k: int, n: int, repeats: int) -> float:
    """FLOP/s of ``(m x k) @ (k x n)`` in ``dtype``, into a preallocated output: the GEMM's own rate (a fresh
    48 MB fp32 output costs about 13% more in page faults, which counts as the encoder's overhead, not the
    floor's)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    return 2 * m * k * n / best(lambda: torch.mm(a, b, out=out), max(repeats, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam_vit_b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also split one forward's time by op")
    parser.add_argument("--bound", action="store_true",
                        help="also time the kernels outside the big matmuls alone and print the lower bound they set")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated, of fp32,bf16,int8 (default: fp32, bf16 on a CPU with native bf16 "
                             "(emulated bf16 takes tens of minutes and says nothing about the floor), int8 where "
                             "the CPU has the x86 quantized engine)")
    args = parser.parse_args()
    default = ["fp32"] + (["bf16"] if native_bf16("cpu") else []) + (["int8"] if int8_supported("cpu") else [])
    precisions = args.precisions.split(",") if args.precisions else default
    if not precisions or set(precisions) - {"fp32", "bf16", "int8"} or "fp32" not in precisions:
        parser.error(f"--precisions takes fp32 and any of bf16, int8, not {args.precisions!r}")
    if args.precisions is None and "bf16" not in precisions:
        print("bf16 skipped: this CPU has no native bf16 (AVX-512 BF16 or AMX); --precisions fp32,bf16 forces it")
    torch.manual_seed(0)
    model = textsam.create_model(args.model, pretrained=False)
    image = np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8)
    enc = model.image_encoder
    x = torch.randn(1, 3, model.img_size, model.img_size)
    # the math backend spells attention as matmuls, which the counter counts (the fused CPU kernel it misses)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        enc(x)
    flops = counter.get_total_flops()
    m, k, n = GEMM_SHAPE
    print(f"{args.model} encoder: {flops / 1e9:.0f} GFLOP per image, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if precision not in precisions:
            continue
        predictor = textsam.TextSamPredictor(model, image_precision=precision)
        timed = alternating(lambda p=predictor: p.set_image(image), args.repeats)
        rate = gemm_rate(dtype, m, k, n, args.repeats)
        floor = flops / rate
        target = 1.15 if precision == "fp32" else 1.3
        print(f"  {precision}: matmul floor {floor:5.2f} s ({rate / 1e9:5.0f} GFLOP/s, {m}x{k}x{n}); target <= {target}x")
        for name, (secs, faults) in timed.items():
            print(f"    set_image, {name:18s} {secs:6.2f} s   ratio {secs / floor:4.2f}x   "
                  f"{faults} minor page faults", flush=True)
        if args.profile:
            profile(enc, x, dtype)
        if args.bound:
            bound(enc, dtype, rate, floor, args.repeats)
        if precision == "fp32":
            fp32_floor, fp32_secs = floor, timed["freed memory kept"][0]
    if "int8" in precisions:
        predictor = textsam.TextSamPredictor(model, image_precision="int8")
        secs = alternating(lambda p=predictor: p.set_image(image), args.repeats)["freed memory kept"][0]
        print(f"  int8 (linear layers): set_image, freed memory kept {secs:6.2f} s   {secs / fp32_floor:4.2f}x the fp32 "
              f"floor, {fp32_secs / secs:4.2f}x faster than fp32", flush=True)


def bound(enc: torch.nn.Module, dtype: torch.dtype, rate: float, floor: float, repeats: int) -> None:
    """A lower bound on ``set_image`` from PyTorch's own kernels, each timed alone (best of ``max(repeats, 5)``):
    the linear layers at the GEMM rate, plus global attention as the fused kernel **without** the relative-position
    bias (the fastest kernel PyTorch has for it: bound by its exponentials, not its products), the windowed blocks'
    fused attention, GELU and LayerNorm. The encoder's own global attention with the bias (``Attention.attend``) is
    timed too: the bound with it in place of the bias-free kernel is the second figure."""
    import torch.nn.functional as F

    from textsam.modeling.image_encoder import Block

    blocks = [b for b in enc.modules() if isinstance(b, Block)]
    glob = [b for b in blocks if b.window_size == 0]
    windowed = [b for b in blocks if b.window_size > 0]
    h = w = enc.img_size // enc.patch_embed.proj.stride[0]  # the token map
    c, heads = blocks[0].norm1.normalized_shape[0], blocks[0].attn.num_heads
    d, hidden, n = c // heads, blocks[0].mlp.lin1.out_features, h * w
    ws = windowed[0].window_size if windowed else 0
    windows = (-(-h // ws)) * (-(-w // ws)) if ws else 0
    r = max(repeats, 5)

    def timed(fn) -> float:  # noqa: ANN001
        with torch.inference_mode():
            return best(fn, r)

    q = torch.randn(1, heads, n, d, dtype=dtype)
    t_global = timed(lambda: F.scaled_dot_product_attention(q, q, q))
    qw = torch.randn(max(windows, 1), heads, ws * ws or 1, d, dtype=dtype)
    t_window = timed(lambda: F.scaled_dot_product_attention(qw, qw, qw)) if windowed else 0.0
    g, tokens = torch.randn(1, h, w, hidden, dtype=dtype), torch.randn(1, h, w, c, dtype=dtype)
    t_gelu = timed(lambda: F.gelu(g))
    t_norm = timed(lambda: F.layer_norm(tokens, (c,)))
    qkv = torch.randn(1, n, 3 * c)
    attn = glob[0].attn
    ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    with ctx:
        t_biased = timed(lambda: attn.attend(qkv.to(dtype), (h, w)))
    # the linear layers' multiply-adds: qkv, proj, and the MLP's two, per token, every block
    linear = 2 * n * len(blocks) * (4 * c * c + 2 * c * hidden)
    t_linear = linear / rate
    rest = len(windowed) * t_window + len(blocks) * t_gelu + 2 * len(blocks) * t_norm
    low = t_linear + len(glob) * t_global + rest
    with_bias = t_linear + len(glob) * t_biased + rest
    print(f"    bound: linear layers at the GEMM rate {t_linear:.2f} s; global attention without its bias "
          f"{t_global * 1e3:.0f} ms a block (the encoder's, with it: {t_biased * 1e3:.0f} ms); windowed attention "
          f"{t_window * 1e3:.1f} ms a block; GELU {t_gelu * 1e3:.1f} ms; LayerNorm {t_norm * 1e3:.1f} ms")
    print(f"    bound: {low:.2f} s = {low / floor:.2f}x the floor (global attention without its bias); "
          f"{with_bias:.2f} s = {with_bias / floor:.2f}x with the encoder's own global attention", flush=True)


def profile(enc: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> None:
    from torch.profiler import profile as torch_profile

    ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), ctx:
        enc(x)
        with torch_profile() as prof:
            enc(x)
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows)
    gemm = sum(t for k, t in rows if k in GEMM_OPS)
    print(f"    profile: {total / 1e6:.2f} s of op time, GEMM-like {gemm / total:.0%}; the rest:")
    for key, t in sorted(((k, t) for k, t in rows if k not in GEMM_OPS), key=lambda r: -r[1])[:8]:
        print(f"      {key:48s} {t / 1e3:8.0f} ms  {t / total:5.1%}")


if __name__ == "__main__":
    main()
