"""LiteMedSAM's image encoder: the TinyViT that MobileSAM distilled from SAM, as LiteMedSAM changed it.

Written from the architecture's description (TinyViT, Wu et al. 2022; MobileSAM; LiteMedSAM); the
module names and parameter shapes are those of the published LiteMedSAM state dict, so
``lite_medsam.pth`` loads strictly. What LiteMedSAM changed from MobileSAM:

* the patch embedding is two 1 × 1 Conv-BN at stride 1, so stage 0 runs at the full input size;
* the last patch merging (to 320 channels) keeps the resolution (stride 1);
* the neck (1 × 1 conv 320 → 256, LayerNorm2d, 3 × 3 conv, LayerNorm2d) gives the image embedding
  ``(B, 256, S/4, S/4)``: 64 × 64 at the 256-pixel input it was trained at.

Stages, at input ``S`` (the defaults are LiteMedSAM's)::

    patch_embed   (B, 3, S, S)        → (B, 64, S, S)          Conv-BN 1×1, GELU, Conv-BN 1×1
    layers.0      2 × MBConv at S      → merge to 128, stride 2  (B, 64, S, S) → (B, S/2, S/2, 128)
    layers.1      2 × block, window 7  → merge to 160, stride 2  (B, S/2, S/2, 128) → (B, S/4, S/4, 160)
    layers.2      6 × block, window 14 → merge to 320, stride 1  → (B, S/4, S/4, 320)
    layers.3      2 × block, window 7                            → (B, S/4, S/4, 320)
    neck                                                         → (B, 256, S/4, S/4)

Stage 0 works on ``(B, C, H, W)`` maps; the attention stages on channels-last maps ``(B, H, W, C)``
(the reference flattens them to ``(B, H·W, C)``; the values are the same). Each attention block::

    x = x + attn(x)                 windows of w × w tokens, the grid zero-padded at the bottom and
                                    right to a multiple of w; LayerNorm, qkv and proj inside attn
    x = local_conv(x)               depth-wise 3 × 3 Conv-BN over the (B, C, H, W) map
    x = x + mlp(x)                  LayerNorm, fc1, GELU, fc2

The attention's position bias is learned per head and per window offset ``(|Δrow|, |Δcol|)``
(``attention_biases (heads, w·w)``), not per query, so it does not depend on the image size. Its
``qkv`` output is *head-major*: per head, ``d`` query, ``d`` key and ``d`` value channels
(:meth:`WindowAttention.qkv_rows` says where each part lies), whereas SAM's ViT puts all queries
first. ``qkv`` is called on ``(windows, w, w, C)`` maps, as SAM's windowed blocks call theirs, so a
layer that looks across the window (Conv-LoRA's experts) sees the window's token grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from medsaga.model.sam_import import sam_modeling


class Conv2dBN(nn.Sequential):
    """A bias-free convolution ``c`` followed by BatchNorm ``bn``: ``(B, in, H, W) → (B, out, H', W')``.

    With the BatchNorm in eval mode (its running statistics: how medsaga always runs the encoder,
    see :mod:`medsaga.model.backbone`) the two are one convolution with the BatchNorm folded into
    its weight and bias, computed from the current parameters at each call (a few thousand
    numbers) and differentiable, so the conv weight and the BatchNorm's affine still get their
    exact gradients. Same values up to float rounding; one pass over the output less.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                       bias=False))
        norm = nn.BatchNorm2d(out_channels)
        nn.init.constant_(norm.weight, bn_weight_init)
        nn.init.zeros_(norm.bias)
        self.add_module("bn", norm)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(out, in/groups, k, k)`` and bias ``(out,)`` of the conv with the eval-mode
        BatchNorm folded in."""
        norm = self.bn
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        return self.c.weight * scale[:, None, None, None], norm.bias - norm.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training:  # batch statistics: BatchNorm on the conv's whole output
            return self.bn(self.c(x))
        return self.conv(x, self.c.padding)

    def conv(self, x: torch.Tensor, padding: tuple[int, int] | int) -> torch.Tensor:
        """The folded convolution (eval-mode BatchNorm) with the given zero padding."""
        weight, bias = self.folded()
        return F.conv2d(x, weight, bias, self.c.stride, padding, self.c.dilation, self.c.groups)


class PatchEmbed(nn.Module):
    """``(B, 3, S, S) → (B, dim, S, S)``: two 1 × 1 Conv-BN with a GELU between (stride 1: LiteMedSAM)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(in_channels, dim // 2), nn.GELU(), Conv2dBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: ``(B, C, H, W) → (B, C, H, W)``.

    1 × 1 expansion to ``expand · C``, GELU, depth-wise 3 × 3, GELU, 1 × 1 projection (its BatchNorm
    starts at zero, so a fresh block is the identity before the last GELU), residual, GELU.
    With eval-mode BatchNorms and no autograd graph to record it runs in row strips
    (:func:`depthwise_in_strips`).
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _batch_statistics(self) or _records_graph(self, x):
            out = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
            return self.act3(out + x)
        def finish(hidden: torch.Tensor, image: int, first: int, last: int) -> torch.Tensor:
            return self.act3(self.conv3(self.act2(hidden)) + x[image:image + 1, :, first:last])

        return depthwise_in_strips(x, lambda rows: self.act1(self.conv1(rows)), self.conv2, finish)


class PatchMerging(nn.Module):
    """``(B, C, H, W)`` or channels-last ``(B, H, W, C)`` → ``(B, H/s, W/s, out)`` channels-last.

    1 × 1 Conv-BN to ``out``, GELU, depth-wise 3 × 3 Conv-BN at stride ``s``, GELU, 1 × 1 Conv-BN.
    """

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.dim = dim
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=stride, padding=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        if _batch_statistics(self) or _records_graph(self, x):
            x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        else:
            x = depthwise_in_strips(x, lambda rows: self.act(self.conv1(rows)), self.conv2,
                                    lambda hidden, image, first, last: self.conv3(self.act(hidden)))
        return x.permute(0, 2, 3, 1).contiguous()


# A stage-0 map at 256 px after the MBConv expansion is 256 channels x 256 x 256 floats (64 MiB).
# Elementwise passes over tensors that size run at memory speed (a GELU over it: ~19 ms on our
# 2-core CPU); the same arithmetic on strips of rows that stay in the cache gives the same values,
# bit for bit, 2.7x faster (one MBConv at 256 px: 0.101 -> 0.037 s). Only without an autograd
# graph: in training, autograd keeps every strip's tensors anyway and the many small backward
# steps cost more than they save (one MBConv step at batch 2: 0.45 s whole, 0.60 s in strips).
STRIP_BYTES = 8 * 2**20


def depthwise_in_strips(x: torch.Tensor, pointwise: Callable[[torch.Tensor], torch.Tensor], depthwise: Conv2dBN,
                        finish: Callable[[torch.Tensor, int, int, int], torch.Tensor]) -> torch.Tensor:
    """``finish(depthwise(pointwise(x)))`` computed image by image on strips of output rows.

    ``x (B, C, H, W)``; ``pointwise`` maps every pixel on its own (``(1, C, h, W) → (1, C', h, W)``),
    ``depthwise`` is an eval-mode Conv-BN with a square kernel, zero padding and a stride, and
    ``finish(hidden, image, first, last)`` maps the strip of depth-wise output rows
    ``first:last`` of image ``image`` (``(1, C', last − first, W')``) to the result's rows. Each strip
    reads the input rows its kernel covers (the halo) and zero rows beyond the image, as the
    convolution's own padding would. Returns the strips reassembled, ``(B, C'', H', W')``.
    """
    batch, _, height, width = x.shape
    conv = depthwise.c
    kernel, pad, stride = conv.kernel_size[0], conv.padding[0], conv.stride[0]
    out_height = (height + 2 * pad - kernel) // stride + 1
    rows = max(1, STRIP_BYTES // (width * conv.out_channels * x.element_size() * stride))
    images = []
    for image in range(batch):
        sample = x[image:image + 1]
        strips = []
        for first in range(0, out_height, rows):
            last = min(first + rows, out_height)
            top, bottom = first * stride - pad, (last - 1) * stride - pad + kernel  # input rows top:bottom
            low, high = max(top, 0), min(bottom, height)
            hidden = F.pad(pointwise(sample[:, :, low:high]), (0, 0, low - top, bottom - high))
            strips.append(finish(depthwise.conv(hidden, (0, conv.padding[1])), image, first, last))
        images.append(torch.cat(strips, dim=2) if len(strips) > 1 else strips[0])
    return torch.cat(images, dim=0) if batch > 1 else images[0]


def _records_graph(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether autograd would record ``module``'s forward on ``x`` (something in it needs a gradient)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _batch_statistics(module: nn.Module) -> bool:
    """Whether any BatchNorm in ``module`` normalises with batch statistics (train mode)."""
    return any(isinstance(m, nn.BatchNorm2d) and m.training for m in module.modules())


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks at the input resolution, then a patch merging.

    ``(B, C, H, W) → (B, H', W', out)`` channels-last (or ``(B, C, H, W)`` without a merging).
    """

    def __init__(self, dim: int, depth: int, expand_ratio: float, out_dim: int | None, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


def offset_index(window: int) -> torch.Tensor:
    """``(w·w, w·w)`` int64: which learned bias each (query, key) pair of a window uses.

    Tokens are numbered row-major; the pair ``(i, j)`` uses offset ``|row_i − row_j| · w + |col_i − col_j|``
    (the order in which TinyViT enumerates the offsets, which its ``attention_biases`` follow).
    """
    # On the CPU even inside a ``torch.device("meta")`` context: a model built on "meta" and then
    # handed a checkpoint's tensors keeps its non-persistent buffers as they were built.
    rows = torch.arange(window, device="cpu").repeat_interleave(window)
    cols = torch.arange(window, device="cpu").repeat(window)
    return (rows[:, None] - rows[None, :]).abs() * window + (cols[:, None] - cols[None, :]).abs()


class WindowAttention(nn.Module):
    """Multi-head attention within windows: ``(N, w, w, C) → (N, w, w, C)``, N windows.

    LayerNorm, fused ``qkv`` (``C → 3C``, head-major: per head ``[q, k, v]`` of ``d = C / heads``
    channels each), softmax attention with the learned offset bias, output projection.

    Tensors:
        attention_biases ``(heads, w·w)``: one learned bias per head and window offset.
        attention_bias_idxs ``(w·w, w·w)``: non-persistent, :func:`offset_index`.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.scale = self.head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", offset_index(window), persistent=False)

    def qkv_rows(self, part: str) -> torch.Tensor:
        """Rows of the ``qkv`` output (``(C,)`` int64) holding ``part`` (``"q"``, ``"k"`` or ``"v"``),
        in head order: head ``h``'s part occupies ``h·3d + p·d … + d``."""
        index = "qkv".index(part)
        heads = torch.arange(self.num_heads)[:, None] * 3 * self.head_dim
        return (heads + index * self.head_dim + torch.arange(self.head_dim)[None, :]).reshape(-1)

    def position_bias(self) -> torch.Tensor:
        """``(heads, w·w, w·w)``: the bias each head adds to the logit of every (query, key) pair."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        n, a, b, channels = windows.shape
        if (a, b) != (self.window, self.window):
            raise ValueError(f"expected windows of {self.window} x {self.window} tokens, got {a} x {b}")
        qkv = self.qkv(self.norm(windows))  # (N, w, w, 3C)
        q, k, v = qkv.reshape(n, a * b, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4).unbind(0)
        # (1, heads, T, T): with a leading batch axis the CPU's fused kernel takes the float mask
        # (3x faster than the (heads, T, T) form, which falls back to the explicit softmax).
        bias = self.position_bias().to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)  # (N, heads, T, d)
        return self.proj(out.transpose(1, 2).reshape(n, a, b, channels))


class Mlp(nn.Module):
    """``(..., C) → (..., C)``: LayerNorm, ``fc1`` to ``hidden``, GELU, ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        # Token by token, so in chunks whose hidden activations stay in the cache (see STRIP_BYTES).
        chunk = max(1, STRIP_BYTES // (self.hidden * x.element_size()))
        if tokens.shape[0] <= chunk:
            return self.fc2(self.act(self.fc1(self.norm(x))))
        parts = [self.fc2(self.act(self.fc1(self.norm(part)))) for part in tokens.split(chunk)]
        return torch.cat(parts).reshape(x.shape)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` → windows ``(B·nH·nW, w, w, C)`` of the grid zero-padded to multiples of ``w``,
    and the padded size ``(H', W')``."""
    batch, height, width, channels = x.shape
    pad_bottom, pad_right = -height % window, -width % window
    if pad_bottom or pad_right:
        x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    padded = (height + pad_bottom, width + pad_right)
    x = x.reshape(batch, padded[0] // window, window, padded[1] // window, window, channels)
    return x.transpose(2, 3).reshape(-1, window, window, channels), padded


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B·nH·nW, w, w, C)`` → ``(B, H, W, C)``, padding dropped."""
    rows, cols = padded[0] // window, padded[1] // window
    channels = windows.shape[-1]
    x = windows.reshape(-1, rows, cols, window, window, channels).transpose(2, 3)
    x = x.reshape(-1, padded[0], padded[1], channels)
    if padded != size:
        x = x[:, :size[0], :size[1]]
    return x


class TinyViTBlock(nn.Module):
    """``(B, H, W, C) → (B, H, W, C)``: windowed attention, depth-wise local conv, MLP (module docstring)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int = 3) -> None:
        super().__init__()
        self.window_size = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, padding=local_conv_size // 2, groups=dim)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch alone: zero-pad, partition, attend, unpartition: ``(B, H, W, C)`` in and out."""
        windows, padded = window_partition(x, self.window_size)
        return window_unpartition(self.attn(windows), self.window_size, padded, tuple(x.shape[1:3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attend(x)
        # The channels-last map viewed as (B, C, H, W) in channels_last memory: no copy for the conv.
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks, then an optional patch merging; channels-last in and out."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 out_dim: int | None, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, mlp_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x, channels_last=True) if self.downsample is not None else x


class TinyViT(nn.Module):
    """The image encoder: ``(B, 3, S, S)`` → ``(B, out_chans, S/4, S/4)`` (the module docstring).

    Args:
        img_size: the square input size ``S`` (any multiple of 4; LiteMedSAM was trained at 256).
        embed_dims, depths, num_heads, window_sizes: per stage (stage 0 is convolutional and
            ignores its heads and window).
        merge_strides: stride of the patch merging after stages 0, 1, 2.
        mlp_ratio: MLP width over the block width; mbconv_expand_ratio: MBConv expansion.
        out_chans: channels of the neck's output (the prompt embedding width, 256).
    """

    def __init__(self, img_size: int = 256, in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), merge_strides: Sequence[int] = (2, 2, 1),
                 mlp_ratio: float = 4.0, mbconv_expand_ratio: float = 4.0, out_chans: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self.embed_dims = tuple(embed_dims)
        self.embedding_stride = 1  # input pixels per embedding cell: 4
        for stride in merge_strides:
            self.embedding_stride *= stride
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        stages: list[nn.Module] = [ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, embed_dims[1],
                                             merge_strides[0])]
        for index in range(1, len(embed_dims)):
            last = index == len(embed_dims) - 1
            stages.append(AttentionStage(embed_dims[index], depths[index], num_heads[index], window_sizes[index],
                                         mlp_ratio, None if last else embed_dims[index + 1],
                                         1 if last else merge_strides[index]))
        self.layers = nn.ModuleList(stages)
        layer_norm_2d = sam_modeling().common.LayerNorm2d
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            layer_norm_2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            layer_norm_2d(out_chans),
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.neck(x.permute(0, 3, 1, 2))


def _init_weights(module: nn.Module) -> None:
    """TinyViT's initialisation of the linear layers (truncated normal, std 0.02) and LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
