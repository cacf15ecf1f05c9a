"""Conv-LoRA's mixture of convolution experts: noisy top-1 gating, multi-scale conv experts.

Conv-LoRA (Zhong et al., ICLR 2024) puts this inside the ``r``-dimensional bottleneck of a LoRA
branch. The bottleneck tokens ``A·x`` of one attention call are a map ``(N, r, h, w)``; each of the
``N`` maps ("samples": images for SAM's global-attention blocks, windows for its windowed blocks)
is sent to exactly one expert:

* :class:`NoisyTopKGate` pools the map over space to ``(N, r)`` and scores the experts with the
  noisy top-k gating of Shazeer et al. 2017 ("Outrageously large neural networks"), ``k = 1``;
  it also returns the load-balancing loss of that paper.
* :class:`ConvExpert` ``i`` (scale ``i = 1..E``) upsamples the map ``i``-fold, applies a 3×3
  convolution ``r → r`` and GELU, and resizes back to ``(h, w)``: a local prior at a scale chosen
  per sample.
* :class:`MoEConv` routes each sample to its expert and puts the outputs back in batch order,
  weighted by the gate value.

Choices follow the authors' code in AutoGluon (``models/conv_lora/moe_conv.py`` and
``adaptation_layers.py``), re-written here: gate weights start at zero; the noise scale is
``softplus(W_noise · pooled) + 1e-2``; noise only in training; bicubic resampling both ways
(none for scale 1); expert conv bias zero-initialised; ``cv²(importance) + cv²(load)`` times a
coefficient (1e-2), where the load is the differentiable probability of being in the top k when
the gating is noisy and training, else the hard count. With ``k = 1`` the softmax over the single
kept logit is exactly 1, so weighting by the gate (as here) or not (as AutoGluon's
``multiply_by_gates=False``) gives the same output; the gate weights then learn only through the
balancing loss, as in the reference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NOISE_EPSILON = 1e-2  # floor of the noise standard deviation (reference value)
INTERPOLATION = "bicubic"  # up- and down-sampling of the expert maps (reference value)


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var / mean²`` of a 1-D tensor (0 for one element).

    The unbiased variance, as ``torch.var`` and the reference; ``1e-10`` keeps an all-zero input finite.
    """
    if values.numel() < 2:
        return values.new_zeros(())
    values = values.float()
    return values.var() / (values.mean() ** 2 + 1e-10)


class NoisyTopKGate(nn.Module):
    """Noisy top-k gating over ``experts`` from pooled features ``(N, dim)``.

    Returns ``gates (N, E)`` — one non-zero per row for ``k = 1`` (the softmax over the kept logits,
    scattered into place) — and the load-balancing loss, a scalar tensor.
    """

    def __init__(self, dim: int, experts: int, k: int = 1, noisy: bool = True, loss_coef: float = 1e-2,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 1 <= k <= experts:
            raise ValueError(f"k must be in 1..{experts}, got {k}")
        self.experts, self.k, self.noisy, self.loss_coef = experts, k, noisy, loss_coef
        # Zero start (reference): every expert equally likely, routing driven by the noise at first.
        self.w_gate = nn.Parameter(torch.zeros(dim, experts, device=device, dtype=dtype))
        # Without noise there is nothing for W_noise to do: not created, so never counted or saved.
        self.w_noise = nn.Parameter(torch.zeros(dim, experts, device=device, dtype=dtype)) if noisy else None

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pooled (N, dim)`` → ``(gates (N, E), balancing loss ())``."""
        clean = pooled @ self.w_gate
        noisy_now = self.noisy and self.training
        if noisy_now:
            assert self.w_noise is not None
            noise_std = F.softplus(pooled @ self.w_noise) + NOISE_EPSILON
            # torch's global RNG: a seeded run routes identically.
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        top_values, top_indices = logits.topk(min(self.k + 1, self.experts), dim=1)
        kept = torch.softmax(top_values[:, :self.k], dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_indices[:, :self.k], kept)

        importance = gates.sum(0)
        if noisy_now and self.k < self.experts:
            load = self._probability_in_top_k(clean, logits, noise_std, top_values).sum(0)
        else:
            load = (gates > 0).sum(0).to(gates.dtype)
        loss = self.loss_coef * (cv_squared(importance) + cv_squared(load))
        return gates, loss

    def _probability_in_top_k(self, clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor,
                              top_values: torch.Tensor) -> torch.Tensor:
        """``P(expert e is in the top k | the other experts' noisy logits)``, ``(N, E)``, differentiable.

        An expert now in the top k stays there while its logit beats the (k+1)-th noisy value; one
        outside enters when it beats the k-th (Shazeer et al. 2017, appendix A).
        """
        threshold_if_in = top_values[:, self.k:self.k + 1]
        threshold_if_out = top_values[:, self.k - 1:self.k]
        is_in = noisy > threshold_if_in
        probability_if_in = torch.special.ndtr((clean - threshold_if_in) / noise_std)
        probability_if_out = torch.special.ndtr((clean - threshold_if_out) / noise_std)
        return torch.where(is_in, probability_if_in, probability_if_out)


class ConvExpert(nn.Module):
    """``(n, r, h, w)`` → upsample ×``scale`` → 3×3 conv ``r → r`` → GELU → resize to ``(h, w)``."""

    def __init__(self, channels: int, scale: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, device=device, dtype=dtype)
        nn.init.zeros_(self.conv.bias)  # reference: weights default-initialised, bias zero

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        size = maps.shape[-2:]
        if self.scale != 1:
            maps = F.interpolate(maps, scale_factor=self.scale, mode=INTERPOLATION)
        maps = F.gelu(self.conv(maps))
        if self.scale != 1:
            maps = F.interpolate(maps, size=size, mode=INTERPOLATION)
        return maps


class MoEConv(nn.Module):
    """Route each map ``(r, h, w)`` of a batch to one :class:`ConvExpert`, by :class:`NoisyTopKGate`.

    Expert ``i`` (0-based) works at scale ``i + 1``. ``forward`` returns the experts' outputs in
    batch order, ``(N, r, h, w)``, and the balancing loss of this call.
    """

    def __init__(self, channels: int, experts: int = 8, noisy: bool = True, loss_coef: float = 1e-2,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.gate = NoisyTopKGate(channels, experts, k=1, noisy=noisy, loss_coef=loss_coef,
                                  device=device, dtype=dtype)
        self.experts = nn.ModuleList(ConvExpert(channels, scale, device=device, dtype=dtype)
                                     for scale in range(1, experts + 1))

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``maps (N, r, h, w)`` → ``(expert outputs (N, r, h, w), balancing loss ())``."""
        gates, loss = self.gate(maps.mean(dim=(2, 3)))
        if maps.shape[0] == 0:
            return torch.zeros_like(maps), loss
        chosen = gates.argmax(dim=1)  # the one non-zero gate of each row (k = 1)
        weight = gates.gather(1, chosen[:, None]).squeeze(1)
        order, outputs = [], []
        # One call per expert used: the experts work at different resolutions, so they cannot be
        # batched together; unused experts cost nothing.
        for index, expert in enumerate(self.experts):
            samples = (chosen == index).nonzero().squeeze(1)
            if samples.numel():
                order.append(samples)
                outputs.append(expert(maps[samples]))
        order_all = torch.cat(order)
        combined = torch.cat(outputs)[torch.argsort(order_all)]
        return combined * weight[:, None, None, None].to(combined.dtype), loss
