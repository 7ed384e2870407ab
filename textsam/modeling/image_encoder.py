"""SAM's ViT image encoder with the official attribute names (``image_encoder.*`` keys load strictly).

Arithmetic follows segment-anything's ``ImageEncoderViT``; the speed-ups keep the same numbers:
- attention runs through ``scaled_dot_product_attention`` with the decomposed relative-position
  bias as an additive mask, in query chunks for the global blocks so the 4096x4096 bias is never
  materialised whole (on a CPU in bf16/fp16, and in fp32 where the CPU has AVX-512: plain matmuls with the
  bias added in place, ``_attend_chunked``; in bf16 on a CPU with AMX the fused kernel, global attention with
  the bias folded into the products, ``_attend_folded``);
- in windowed blocks the qkv projection runs on the unpadded tokens and the padding rows get the qkv
  bias (what a zero token projects to), and the output projection runs after cropping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ViTEncoderConfig
from ..layers import MLPBlock, sam_neck

# Upper bound on elements of one attention-bias chunk in global blocks (64 MB in fp32; ViT-B at 1024: 5 image lines;
# on a 2-core CPU 16M elements measured 3% faster a ViT-B image than 32M or 8M).
_BIAS_CHUNK_ELEMENTS = 16 * 1024 * 1024


class PatchEmbed(nn.Module):
    """Image ``(B, 3, H, W)`` -> patch tokens ``(B, H/p, W/p, C)`` (channels last)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a permuted view keeps the convolution's (B, C, H, W) memory order, and every residual add
        # of the blocks then inherits it, reading the other operand with a stride of H*W (about 20x slower per
        # add on a CPU; the values are the same)
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings ``(q_size, k_size, C)`` gathered from a ``(L, C)`` table.

    The table is linearly resized when its length is not ``2 * max(q_size, k_size) - 1``.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


LOW_PRECISION_QUERIES = 128  # queries per chunk of the bf16/fp16 CPU attention (Attention._attend_chunked)
FP32_QUERIES = 32  # queries per chunk of the fp32 CPU global attention, where it is chunked (FP32_CHUNKED)
FP32_CHUNKED_MIN_TOKENS = 2048  # fp32 attention over fewer tokens (windows; a 32 x 32 map: shapes_tiny) keeps the fused kernel
# fp32 global attention runs chunked on a CPU with AVX-512, whose small products (64 queries x 64 channels x 4096
# keys) run near its GEMM rate: a ViT-B global block took 510 ms there against the fused kernel's 694 ms. On an
# AVX2 CPU the fused kernel with the bias made for a few image lines at a time wins: 0.47-0.54 s against
# 0.64-0.67 s (2-core AMD EPYC, torch 2.14).
FP32_CHUNKED = "AVX512" in torch.backends.cpu.get_cpu_capability()
# bf16 attention on a CPU with AMX tiles (``BF16_AMX``) runs in the fused kernel, whose bf16 products run on AMX
# there: global attention (at least ``FOLDED_MIN_TOKENS`` tokens) with the decomposed bias folded into the
# products and no mask (``Attention._attend_folded``), windows with the bias as a mask (made by one small matrix
# product, ``Attention._bias``). A ViT-B global block's attention took 127 ms folded against 180 ms for the fused
# kernel with a mask and 314 ms for the chunked matmuls (whose separate bf16 softmax dominates), a window block's
# 17 ms against 54 ms chunked (2-core Xeon with AMX, torch 2.14). Without AMX (AVX-512 BF16 only) the chunked
# matmuls win (4.6 s against 6.1 s for the masked kernel a ViT-B image).
BF16_AMX = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
FOLDED_MIN_TOKENS = 2048


def _inference_on_cpu(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and not torch.jit.is_tracing() and not torch.is_grad_enabled()


def _folds_bias(q: torch.Tensor) -> bool:
    """Whether attention over ``q (B, heads, N, d)`` runs :meth:`Attention._attend_folded`: bf16 inference on a
    CPU with AMX over at least ``FOLDED_MIN_TOKENS`` tokens (global attention; see ``BF16_AMX``)."""
    return (BF16_AMX and q.dtype == torch.bfloat16 and q.shape[2] >= FOLDED_MIN_TOKENS and _inference_on_cpu(q)
            and not torch.compiler.is_compiling())


def _chunk_queries(q: torch.Tensor) -> int:
    """Queries per chunk of :meth:`Attention._attend_chunked` for ``q (B, heads, N, d)``, or 0 for the fused
    ``scaled_dot_product_attention`` with the bias as a mask (made a few image lines at a time,
    ``_BIAS_CHUNK_ELEMENTS``). The chunked path is for inference on a CPU (not traced, no autograd): in fp16, and
    in bf16 on a CPU without AMX (the fused kernel with a bias mask runs at a quarter of the GEMM rate there;
    ``BF16_AMX``), in fp32 for global attention on an AVX-512 CPU (``FP32_CHUNKED``)."""
    if not _inference_on_cpu(q):
        return 0
    if q.dtype == torch.bfloat16 and BF16_AMX:
        return 0
    if q.dtype in (torch.bfloat16, torch.float16):
        return LOW_PRECISION_QUERIES
    chunked = FP32_CHUNKED and q.dtype == torch.float32 and q.shape[2] >= FP32_CHUNKED_MIN_TOKENS
    return FP32_QUERIES if chunked else 0


class Attention(nn.Module):
    """Multi-head attention over a ``(B, H, W, C)`` token map with decomposed relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is needed when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def attend(self, qkv: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Attention from projected ``qkv (B, H*W, 3*C)`` -> ``(B, H*W, C)`` (before ``proj``)."""
        b, n, _ = qkv.shape
        h, w = hw
        qkv = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            rh = get_rel_pos(h, h, self.rel_pos_h)
            rw = get_rel_pos(w, w, self.rel_pos_w)
            if _folds_bias(q):
                return self._attend_folded(q, k, v, rh, rw, h, w).transpose(1, 2).reshape(b, n, -1)
            queries = _chunk_queries(q)
            if queries:
                return self._attend_chunked(q, k, v, rh, rw, h, w, queries).transpose(1, 2).reshape(b, n, -1)
            # Rows of whole image lines per chunk, so the bias chunk stays bounded.
            rows = max(1, min(h, _BIAS_CHUNK_ELEMENTS // max(1, b * self.num_heads * w * n)))
            if rows >= h:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._bias(q, rh, rw, h, w))
            else:
                out = torch.empty_like(q)
                for r0 in range(0, h, rows):
                    r1 = min(h, r0 + rows)
                    qc = q[:, :, r0 * w : r1 * w]
                    bias = self._bias(qc, rh[r0:r1], rw, r1 - r0, w)
                    out[:, :, r0 * w : r1 * w] = F.scaled_dot_product_attention(qc, k, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(b, n, -1)

    def _attend_chunked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor,
                        h: int, w: int, queries: int) -> torch.Tensor:
        """``softmax(q k^T scale + bias) v`` with plain matrix products, about ``queries`` queries at a time
        (whole image lines): ``q, k, v (B, heads, N, d)`` -> ``(B, heads, N, d)``. On a CPU (see
        :func:`_chunk_queries`): the logits of a chunk stay in cache, and the decomposed bias is added to them in
        place instead of being materialised."""
        b, nh, _, d = q.shape
        kh, kw = rh.shape[1], rw.shape[1]
        kt = (k.transpose(-1, -2) * self.scale).contiguous()  # once: each chunk's matmul would copy a view
        v = v.contiguous()
        out = torch.empty_like(q)
        rows = max(1, queries // w)
        # one logits buffer for every chunk, the softmax in place: no fresh allocation per chunk (a ViT-B global
        # block's attention 304 -> 294 ms, best of 6 alternating, fp32 on the 2-core AVX-512 CPU; the same values)
        buffer = q.new_empty(b, nh, rows * w, kh * kw)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            qc = q[:, :, r0 * w : r1 * w]
            r_q = qc.reshape(b, nh, r1 - r0, w, d)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh[r0:r1])
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
            logits = buffer[:, :, : (r1 - r0) * w]
            torch.matmul(qc, kt, out=logits)
            grid = logits.view(b, nh, r1 - r0, w, kh, kw)
            grid += rel_h[..., :, None]
            grid += rel_w[..., None, :]
            torch.softmax(logits, -1, out=logits)
            out[:, :, r0 * w : r1 * w] = logits @ v
        return out

    def _attend_folded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor,
                       h: int, w: int) -> torch.Tensor:
        """``softmax(q k^T scale + bias) v`` in one call of the fused kernel without a mask: ``q, k, v (B, heads,
        N, d)`` -> ``(B, heads, N, d)``, ``N = h * w`` (self-attention over the token map). The decomposed bias is
        folded into the products: each query gains its ``rel_h (kh)`` and ``rel_w (kw)`` terms as channels, each
        key the one-hot channels of its row and column, each value zeros there, so ``q' . k'`` is ``q . k scale +
        rel_h[key row] + rel_w[key column]`` summed in the kernel's fp32 accumulator (no rounded bf16 bias). The
        channels are padded to a multiple of 32. For bf16 on a CPU with AMX (:func:`_folds_bias`)."""
        b, nh, n, d = q.shape
        kh, kw = rh.shape[1], rw.shape[1]
        e = -(-(d + kh + kw) // 32) * 32
        r_q = q.reshape(b, nh, h, w, d)
        qf = q.new_zeros(b, nh, n, e)
        torch.mul(q, self.scale, out=qf[..., :d])
        qf[..., d : d + kh] = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).reshape(b, nh, n, kh)
        qf[..., d + kh : d + kh + kw] = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).reshape(b, nh, n, kw)
        kf = k.new_zeros(b, nh, n, e)
        kf[..., :d] = k
        keys = torch.arange(n, device=k.device)
        kf[..., keys, d + keys // kw] = 1
        kf[..., keys, d + kh + keys % kw] = 1
        vf = v.new_zeros(b, nh, n, e)
        vf[..., :d] = v
        return F.scaled_dot_product_attention(qf, kf, vf, scale=1.0)[..., :d]

    @staticmethod
    def _bias(q: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor, qh: int, w: int) -> torch.Tensor:
        """Decomposed rel-pos bias ``(B, heads, qh*w, Hk*Wk)`` for query rows ``qh`` (unscaled q)."""
        b, nh, _, d = q.shape
        r_q = q.reshape(b, nh, qh, w, d)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
        kh, kw = rh.shape[1], rw.shape[1]
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or (torch.is_grad_enabled() and (q.requires_grad or rh.requires_grad or rw.requires_grad)):
            # training, an ONNX export or torch.compile (their tracers have no out= form)
            return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, nh, qh * w, kh * kw)
        bias = q.new_empty((b, nh, qh, w, kh, kw))  # contiguous, so SDPA takes it without a copy
        if q.dtype in (torch.bfloat16, torch.float16):
            # rel_h + rel_w as one product with a 0/1 expansion (kh + kw, kh * kw): the same sums (one fp32 add,
            # rounded once), about 10x faster than bf16's broadcast add over a window's small last dimensions
            expand = torch.cat([torch.eye(kh, dtype=q.dtype, device=q.device).repeat_interleave(kw, 1),
                                torch.eye(kw, dtype=q.dtype, device=q.device).repeat(1, kh)])
            torch.mm(torch.cat([rel_h, rel_w], -1).view(-1, kh + kw), expand, out=bias.view(-1, kh * kw))
        else:
            torch.add(rel_h.unsqueeze(-1), rel_w.unsqueeze(-2), out=bias)
        return bias.view(b, nh, qh * w, kh * kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        b, h, w, c = x.shape
        out = self.attend(self.qkv(x).reshape(b, h * w, -1), (h, w))
        return self.proj(out.reshape(b, h, w, c))


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        attended = self._windowed_attention(self.norm1(x)) if self.window_size > 0 else self.attn(self.norm1(x))
        # under autocast the branches come back in bf16/fp16 and the residual stays fp32: converting first is
        # about 3x faster on a CPU than the mixed-dtype add (same values)
        x = x + attended.to(x.dtype)
        return x + self.mlp(self.norm2(x)).to(x.dtype)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        qkv = self.attn.qkv(x)  # (B, H, W, 3C) on real tokens only
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_h or pad_w:
            # A zero (padding) token projects to the qkv bias.
            fill = self.attn.qkv.bias if self.attn.qkv.bias is not None else qkv.new_zeros(3 * c)
            padded = fill.to(qkv.dtype).expand(b, h + pad_h, w + pad_w, 3 * c).clone()
            padded[:, :h, :w] = qkv
            qkv = padded
        hp, wp = h + pad_h, w + pad_w
        windows = (
            qkv.view(b, hp // ws, ws, wp // ws, ws, 3 * c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, 3 * c)
        )
        out = self.attn.attend(windows, (ws, ws))  # (B*nW, ws*ws, C)
        out = out.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        # contiguous: torch.matmul cannot fold the cropped view into one GEMM and would broadcast the weight to a
        # batched product instead (a 64 x 768 x 768 copy of it for ViT-B in bf16: 30 ms against 1 ms for this copy)
        return self.attn.proj(out[:, :h, :w].contiguous())


class ImageEncoderViT(nn.Module):
    """SAM ViT: image ``(B, 3, S, S)`` normalised -> embedding ``(B, out_chans, S/16, S/16)``."""

    # the CPU fast path may run this encoder's linear layers in int8 (textsam.quantize): masks of clicks with
    # random ViT-B weights agreed with fp32's at binary IoU 0.97 min; TinyViT (mobile_sam) does not say so
    int8_fast_path = True

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=window_size if i not in global_attn_indexes else 0,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = sam_neck(embed_dim, out_chans)

    @classmethod
    def from_config(cls, cfg: ViTEncoderConfig) -> ImageEncoderViT:
        return cls(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.out_chans,
            qkv_bias=cfg.qkv_bias,
            use_abs_pos=cfg.use_abs_pos,
            use_rel_pos=cfg.use_rel_pos,
            window_size=cfg.window_size,
            global_attn_indexes=tuple(cfg.global_attn_indexes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2).contiguous())
