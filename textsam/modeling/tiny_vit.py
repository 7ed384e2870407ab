"""MobileSAM's TinyViT image encoder, with MobileSAM's module and attribute names.

The names follow ``mobile_sam/modeling/tiny_vit_sam.py`` so that the encoder part of the released
``mobile_sam.pt`` (302 keys under ``image_encoder.``) loads with ``strict=True``.

Geometry for the default (MobileSAM) configuration and a ``1024 x 1024`` input::

    patch_embed   two 3x3/s2 Conv+BN (3 -> 32 -> 64), GELU between      -> (B,  64, 256, 256)
    layers.0      2 MBConv blocks, then PatchMerging (stride 2)         -> (B, 128, 128, 128)
    layers.1      2 TinyViT blocks (window 7), then PatchMerging (s 2)  -> (B, 160,  64,  64)
    layers.2      6 TinyViT blocks (window 14), then PatchMerging (s 1) -> (B, 320,  64,  64)
    layers.3      2 TinyViT blocks (window 7)                           -> (B, 320,  64,  64)
    neck          1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d          -> (B, 256,  64,  64)

``norm_head`` and ``head`` (ImageNet classifier) are kept only so that checkpoints load strictly;
``forward`` does not use them.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from textsam.config import TinyViTEncoderConfig
from textsam.layers import sam_neck

__all__ = [
    "Attention",
    "BasicLayer",
    "Conv2d_BN",
    "ConvLayer",
    "MBConv",
    "PatchEmbed",
    "PatchMerging",
    "TinyViT",
    "TinyViTBlock",
    "TinyViTMlp",
]


class Conv2d_BN(nn.Sequential):  # noqa: N801 - MobileSAM's class name
    """Bias-free ``Conv2d`` (attribute ``c``) followed by ``BatchNorm2d`` (attribute ``bn``).

    In eval mode the BatchNorm is folded into the convolution on the fly.

    Maps ``(B, in_chans, H, W)`` to ``(B, out_chans, H', W')`` with the usual convolution arithmetic.
    ``bn_weight_init`` is the initial BatchNorm scale (0 makes a residual branch start as identity).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return bn(self.c(x))
        # Eval mode: fold the BatchNorm affine map into the convolution (one pass over the map
        # instead of two; equal up to float rounding, and still differentiable).
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = self.c.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        c = self.c
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)


class PatchEmbed(nn.Module):
    """Stem: ``(B, in_chans, H, W)`` -> ``(B, embed_dim, H/4, W/4)`` via two stride-2 3x3 Conv+BN."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block ``(B, C, H, W) -> (B, C, H, W)``.

    1x1 expand -> GELU -> depthwise 3x3 -> GELU -> 1x1 project, add the input, then GELU.
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2d_BN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, dim, 1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages: ``(B, dim, H, W) -> (B, out_dim, H/stride, W/stride)``.

    1x1 Conv+BN -> GELU -> depthwise 3x3 Conv+BN (``stride``) -> GELU -> 1x1 Conv+BN.
    """

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = Conv2d_BN(dim, out_dim, 1)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class ConvLayer(nn.Module):
    """Stage 0: ``depth`` MBConv blocks, then an optional ``downsample``; NCHW in and out."""

    def __init__(
        self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


def _bias_index(window_size: int) -> tuple[int, torch.Tensor]:
    """Offset table for a ``window_size`` square window.

    Returns the number of distinct ``(|dy|, |dx|)`` offsets (``window_size ** 2``) and an
    ``(N, N)`` long tensor, ``N = window_size ** 2``, giving each query/key pair's offset index.
    Offsets are numbered in order of first appearance over row-major query/key pairs (MobileSAM's order).
    """
    points = list(itertools.product(range(window_size), range(window_size)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return len(offsets), torch.tensor(idxs, dtype=torch.long).view(n, n)


class Attention(nn.Module):
    """Multi-head self-attention inside one window, with a learned relative-offset bias.

    Input and output ``(B_windows, N, dim)`` with ``N = window_size ** 2``. Pre-LayerNorm ``norm``
    (eps 1e-5), fused ``qkv`` laid out per head as ``[q_h (key_dim), k_h (key_dim), v_h (attn_ratio*key_dim)]``,
    logits ``q.k * key_dim**-0.5 + attention_biases[h, idx(i, j)]``, softmax, ``proj``.

    ``fused_attn`` picks the kernel: ``None`` (default) uses ``F.scaled_dot_product_attention`` on
    accelerators and the explicit ``softmax(q @ k.T * scale + bias) @ v`` on CPU, where it is about twice
    as fast for these small windows; ``True``/``False`` force one or the other. Both agree to float32
    rounding (the explicit form is MobileSAM's own arithmetic).

    The gathered ``(num_heads, N, N)`` bias is cached in the non-persistent buffer ``ab`` when the
    module is in eval mode and autograd is off; the cache is dropped by ``train()`` and rebuilt whenever
    ``attention_biases`` changes (in-place update, ``load_state_dict``, device or dtype move).
    """

    def __init__(
        self, dim: int, key_dim: int, num_heads: int, attn_ratio: float = 1.0, window_size: int = 7
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.d))
        self.proj = nn.Linear(self.dh, dim)
        num_offsets, idxs = _bias_index(window_size)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)
        self.register_buffer("ab", None, persistent=False)
        self._ab_key: tuple[int, int] | None = None
        self.fused_attn: bool | None = None

    def train(self, mode: bool = True) -> Attention:
        self.ab = None
        self._ab_key = None
        return super().train(mode)

    def _bias(self) -> torch.Tensor:
        """The ``(num_heads, N, N)`` bias, gathered (and cached when that is safe)."""
        if self.training or torch.is_grad_enabled():
            return self.attention_biases[:, self.attention_bias_idxs]
        p = self.attention_biases
        try:
            key = (p._version, p.data_ptr())
        except RuntimeError:  # inference tensors have no version counter: gather every time
            return p[:, self.attention_bias_idxs]
        if self.ab is None or self._ab_key != key or self.ab.device != p.device or self.ab.dtype != p.dtype:
            self.ab = p[:, self.attention_bias_idxs]
            self._ab_key = key
        return self.ab

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        bias = self._bias().to(q.dtype)
        fused = self.fused_attn if self.fused_attn is not None else q.device.type != "cpu"
        if fused:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            x = (q @ k.transpose(-2, -1)).mul_(self.scale).add_(bias).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, self.dh))


class TinyViTMlp(nn.Module):
    """Pre-norm feed-forward ``fc2(GELU(fc1(norm(x))))`` on ``(..., dim)`` (MobileSAM's ``Mlp``)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention + residual, depthwise ``local_conv``, MLP + residual on ``(B, H, W, dim)``.

    The map is zero-padded at the bottom/right to a multiple of ``window_size`` *before* the
    attention's LayerNorm (as in MobileSAM: padded tokens take part as keys), split into windows,
    and cropped back afterwards. ``key_dim = dim // num_heads``, value dim = ``key_dim``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, attn_ratio=1.0, window_size=window_size)
        self.mlp = TinyViTMlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(x, (0, 0, 0, pad_r, 0, pad_b)) if pad_b or pad_r else x
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        y = y.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        y = self.attn(y)
        y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            y = y[:, :h, :w]
        x = x + y
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Stages 1..3: TinyViT blocks on ``(B, dim, H, W)`` (run channels-last), then optional ``downsample``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = blk(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's TinyViT image encoder: ``(B, in_chans, S, S)`` -> ``(B, out_chans, S/16, S/16)``.

    ``S`` is normally ``img_size`` (1024 for MobileSAM; the input is SAM-normalised, padded RGB). Any
    size divisible by 16 works: the attention biases are per window, not per image. Four stages are
    required. Stage ``i < 3`` ends with a PatchMerging to ``embed_dims[i + 1]``; the last one
    (into stage 3) has stride 1 so that the total stride is 16. MobileSAM writes that rule as
    "stride 1 when out_dim is 320, 448 or 576", which selects the same merge for all its configs.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] | list[int] = (64, 128, 160, 320),
        depths: tuple[int, ...] | list[int] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] | list[int] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] | list[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        num_classes: int = 1000,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        lengths = {len(embed_dims), len(depths), len(num_heads), len(window_sizes)}
        if lengths != {4}:
            raise ValueError(
                "TinyViT needs exactly 4 stages: embed_dims, depths, num_heads and window_sizes must "
                f"each have 4 entries, got {list(embed_dims)}, {list(depths)}, {list(num_heads)}, "
                f"{list(window_sizes)}"
            )
        for i in range(1, 4):
            if embed_dims[i] % num_heads[i]:
                raise ValueError(
                    f"embed_dims[{i}]={embed_dims[i]} must be divisible by num_heads[{i}]={num_heads[i]}"
                )
        self.img_size = img_size
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.out_chans = out_chans

        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        layers: list[nn.Module] = []
        for i in range(4):
            downsample = None
            if i < 3:
                downsample = PatchMerging(embed_dims[i], embed_dims[i + 1], stride=1 if i == 2 else 2)
            if i == 0:
                layers.append(ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, downsample))
            else:
                layers.append(
                    BasicLayer(
                        embed_dims[i],
                        depths[i],
                        num_heads[i],
                        window_sizes[i],
                        mlp_ratio,
                        local_conv_size,
                        downsample,
                    )
                )
        self.layers = nn.ModuleList(layers)
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self.neck = sam_neck(embed_dims[-1], out_chans)

    @classmethod
    def from_config(cls, cfg: TinyViTEncoderConfig) -> TinyViT:
        """Build the encoder described by ``cfg``."""
        return cls(
            img_size=cfg.img_size,
            in_chans=cfg.in_chans,
            embed_dims=cfg.embed_dims,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            window_sizes=cfg.window_sizes,
            mlp_ratio=cfg.mlp_ratio,
            mbconv_expand_ratio=cfg.mbconv_expand_ratio,
            local_conv_size=cfg.local_conv_size,
            num_classes=cfg.num_classes,
            out_chans=cfg.out_chans,
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, in_chans, H, W)`` normalised images into ``(B, out_chans, H/16, W/16)``."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"TinyViT expects a (B, {self.in_chans}, H, W) image tensor, got shape {tuple(x.shape)}"
            )
        # channels-last: the convolution stage at 1/4 resolution (a 256 x 256 map of 64-256 channels at 1024 px)
        # runs its depthwise and 1x1 convolutions about twice as fast in oneDNN's NHWC kernels; same values
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
