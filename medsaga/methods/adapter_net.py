"""The convolutional adapter and the encoder that runs it in parallel with SAM's frozen ViT.

Three pieces, each with one job:

* :func:`high_pass`: an ideal FFT high-pass filter (the edges and textures of an image).
* :class:`ConvAdapter`: a small CNN, image ``(B, 3, S, S)`` → ``(B, 256, g, g)`` in (-1, 1),
  the shape of the image embedding (``g = S/16`` for SAM's ViT, ``S/4`` for LiteMedSAM's TinyViT).
* :class:`ParallelAdaptedEncoder`: takes the place of ``sam.image_encoder``; runs the ViT under
  ``torch.no_grad()`` and adds ``scale * adapter(x)`` to its embedding. The ViT therefore never
  records an autograd graph (no activations kept for backward, no gradients), whatever the caller's
  grad mode and whatever ``requires_grad`` its parameters carry; only the adapter and what comes
  after it (the mask decoder) are differentiated.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from medsaga.model.build import PROMPT_EMBED_DIM


def high_pass(images: torch.Tensor, tau: float) -> torch.Tensor:
    """Ideal high-pass: ``(B, C, H, W)`` → ``(B, C, H, W)`` real, without the low frequencies.

    Per channel: 2-D FFT, zero the centred (after ``fftshift``) square of low frequencies whose side
    is about ``tau`` times the image side (``2 * round(tau * n / 2)`` per axis, at least 2, so the
    DC term is always removed when ``tau > 0``), inverse FFT, real part. ``tau = 0`` returns the
    images unchanged. A constant image maps to ~0; a pixel checkerboard (the Nyquist frequency)
    passes unchanged.
    """
    if tau <= 0:
        return images
    height, width = images.shape[-2:]
    # FFT in float32 at least: half-precision FFTs are restricted to power-of-two sizes on GPUs.
    spectrum = torch.fft.fftshift(torch.fft.fft2(images.float()), dim=(-2, -1))
    keep = torch.ones(height, width, device=images.device)
    half_h, half_w = max(1, round(tau * height / 2)), max(1, round(tau * width / 2))
    # fftshift puts the zero frequency at index n // 2 of each axis.
    keep[height // 2 - half_h:height // 2 + half_h, width // 2 - half_w:width // 2 + half_w] = 0
    filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum * keep, dim=(-2, -1)))
    return filtered.real.to(images.dtype)


class ConvBlock(nn.Module):
    """Residual block at constant width, then halved resolution: ``(B, W, h, w)`` → ``(B, W, h/2, w/2)``.

    ``x + LeakyReLU_0.1(BN(conv3x3_dilation2(x)))``, then 2 × 2 average pooling. The dilation
    widens the receptive field at no extra cost.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        # No bias: BatchNorm right after subtracts any constant per channel anyway.
        self.conv = nn.Conv2d(width, width, kernel_size=3, padding=2, dilation=2, bias=False)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor, conv_of_x: torch.Tensor | None = None) -> torch.Tensor:
        """``conv_of_x``: ``self.conv(x)`` when the caller has a cheaper way to compute it."""
        if conv_of_x is None:
            conv_of_x = self.conv(x)
        # In place: BatchNorm's backward needs its input, not its output, so the LeakyReLU may
        # overwrite the output and the block keeps one activation less for backward.
        residual = F.leaky_relu(self.norm(conv_of_x), negative_slope=0.1, inplace=True)
        return mean_pool(x + residual, 2)


def mean_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average of each ``factor × factor`` tile: ``(B, C, h, w)`` → ``(B, C, h/factor, w/factor)``.

    ``avg_pool2d``'s value, but autograd keeps nothing for its backward (``avg_pool2d`` keeps its
    whole input, of which backward reads only the shape): one full-size map less per block.
    """
    if factor == 1:
        return x
    batch, channels, height, width = x.shape
    return x.reshape(batch, channels, height // factor, factor, width // factor, factor).mean(dim=(3, 5))


def conv_after_pointwise(block_conv: nn.Conv2d, lift: nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
    """``block_conv(lift(inputs))`` computed from the few input channels: ``(B, c, h, w)`` → ``(B, W, h, w)``.

    ``lift`` is a 1 × 1 convolution ``c → W`` (weight ``L``, bias ``b``), ``block_conv`` a bias-free
    ``W → W`` convolution (weight ``K``) with zero padding. Both are linear, so their composition
    is one convolution of the ``c`` input channels plus a ones channel:

    * weights ``Σ_m K[o, m] L[m, c]`` for the inputs;
    * weights ``Σ_m K[o, m] b[m]`` for the ones channel. Zero padding pads ``lift``'s output,
      including its bias, with zeros: the zero-padded ones channel reproduces exactly that.

    Same result up to float rounding, and autograd differentiates the composed weights, so ``K``,
    ``L`` and ``b`` get their exact gradients. Why: with ``c = 6`` and ``W = 256`` the block's
    3 × 3 convolution, the adapter's largest (it runs at the highest resolution), costs 7/256 of
    the direct one, and what it keeps for backward is the 7-channel input instead of the
    256-channel map.
    """
    pointwise = lift.weight[:, :, 0, 0]  # (W, c)
    composed = torch.einsum("omhw,mc->ochw", block_conv.weight, pointwise)
    channels = [inputs]
    if lift.bias is not None:
        bias_weight = torch.einsum("omhw,m->ohw", block_conv.weight, lift.bias).unsqueeze(1)
        composed = torch.cat([composed, bias_weight], dim=1)
        channels.append(inputs.new_ones(inputs.shape[0], 1, *inputs.shape[2:]))
    return F.conv2d(torch.cat(channels, dim=1), composed, padding=block_conv.padding,
                    dilation=block_conv.dilation, stride=block_conv.stride)


class ConvAdapter(nn.Module):
    """Image ``(B, 3, S, S)`` → additive embedding correction ``(B, 256, g, g)`` in (-1, 1), ``g = S/stride``.

    ``embedding_stride``: input pixels per cell of the encoder's embedding, as the encoder's
    backbone says (:attr:`Backbone.embedding_stride <medsaga.model.backbone.Backbone.embedding_stride>`).
    ``S`` must be a multiple of it and of ``downsample * 2**num_blocks``.

    1. Average-pool the image by ``downsample`` (2: the adapter sees a 512-pixel image beside the
       1024-pixel ViT, as in the reference code) and append its :func:`high_pass` → 6 channels.
    2. 1 × 1 convolution to ``width`` channels, then ``num_blocks`` residual :class:`ConvBlock` layers,
       each halving the resolution.
    3. Each block's output brought onto the embedding grid ``g`` — average-pooled where it is finer,
       bilinearly upsampled where it is coarser; their sum, projected to 256 channels by a 1 × 1
       convolution only when ``width != 256``; tanh.

    With the defaults the blocks' convolutions run at S/2, S/4 and S/8 and their outputs land at
    S/4, S/8 and S/16: for SAM's ViT (``embedding_stride`` 16) the last one is on the grid and
    the others are pooled onto it; for LiteMedSAM's TinyViT (stride 4) the first one is on the grid
    and the others are upsampled to it. The first block's convolution is computed from the 6 input
    channels through :func:`conv_after_pointwise` (exact, ~1/37 of its direct cost).
    """

    def __init__(self, *, embedding_stride: int, width: int = 256, num_blocks: int = 3, tau: float = 0.25,
                 downsample: int = 2, out_channels: int = PROMPT_EMBED_DIM) -> None:
        super().__init__()
        self.tau = tau
        self.downsample = downsample
        self.embedding_stride = embedding_stride
        # Image sides must give whole grids: the embedding's and every block's (each halves).
        self.size_multiple = math.lcm(embedding_stride, downsample * 2 ** num_blocks)
        self.lift = nn.Conv2d(6, width, kernel_size=1)
        self.blocks = nn.ModuleList(ConvBlock(width) for _ in range(num_blocks))
        self.project = nn.Conv2d(width, out_channels, kernel_size=1) if width != out_channels else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-2:]
        if size[0] % self.size_multiple or size[1] % self.size_multiple:
            raise ValueError(f"image sides must be multiples of {self.size_multiple}, got {tuple(size)}")
        grid = (size[0] // self.embedding_stride, size[1] // self.embedding_stride)
        x = mean_pool(images, self.downsample)
        inputs = torch.cat([x, high_pass(x, self.tau)], dim=1)
        x = self.lift(inputs)  # still needed: the first block's residual path adds it
        pooled = []
        for index, block in enumerate(self.blocks):
            conv_of_x = conv_after_pointwise(block.conv, self.lift, inputs) if index == 0 else None
            x = block(x, conv_of_x)
            pooled.append(_onto_grid(x, grid))
        return torch.tanh(self.project(sum(pooled)))


def _onto_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, C, h, w)`` → ``(B, C, *grid)``: mean of tiles where finer (integer ratios), bilinear where coarser."""
    if x.shape[-2] >= grid[0]:
        return mean_pool(x, x.shape[-2] // grid[0])
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


class ParallelAdaptedEncoder(nn.Module):
    """``sam.image_encoder`` replaced: frozen encoder (``vit``: no graph) + ``scale`` × :class:`ConvAdapter`.

    Input ``(B, 3, S, S)`` is what SAM's image encoder receives: the *normalised* image
    (:meth:`~medsaga.model.segmenter.SamSegmenter.normalize`), which the adapter reads too.
    Output ``(B, 256, g, g)``: ``vit(x) + scale * adapter(x)``. ``vit`` is whichever pretrained
    encoder the model has (SAM's ViT, or TinyViT; the name is kept so that runs saved before
    LiteMedSAM keep their tensor names).

    The two halves are also reachable apart, for the embedding cache: the ViT's output depends on
    the image alone and can be computed once per training image (``self.vit``, the adapter
    method's ``frozen_encoder``), then :meth:`adapt` finishes the encoder from it each step.
    :meth:`forward` is :meth:`adapt` on a fresh ViT output, so the two paths cannot drift apart.
    """

    def __init__(self, vit: nn.Module, adapter: ConvAdapter, scale: float) -> None:
        super().__init__()
        self.vit = vit
        self.adapter = adapter
        self.scale = scale
        # SamSegmenter.image_size (and SAM's own code) read img_size off the image encoder.
        self.img_size: int = vit.img_size

    @property
    def wrapped_encoder(self) -> nn.Module:
        """The pretrained encoder (what :func:`medsaga.model.backbone.base_encoder` looks for)."""
        return self.vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The whole point of the method: the ViT's activations are never saved for backward.
        with torch.no_grad():
            embedding = self.vit(x)
        return self.adapt(embedding, x)

    def adapt(self, vit_embedding: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``vit_embedding + scale * adapter(x)``: the encoder's output from the ViT's (a constant,
        computed now or cached) and the normalised image ``x`` it came from."""
        return vit_embedding + self.scale * self.adapter(x)
