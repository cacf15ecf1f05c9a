"""Exact, faster attention for SAM's ViT image encoder: no work on window padding, fused kernels.

Why: segment-anything's windowed blocks zero-pad the token grid (after ``norm1``) up to a
multiple of the 14-token window, then run qkv, attention and proj on every padded window. At
256 input the 16 × 16 grid becomes 28 × 28: four windows of 196 tokens for 256 real ones, so the
attention of 8 of vit_b's 12 blocks does ~3.8× the necessary work (2.1× at 512, 1.3× at 1024).

The padded tokens cannot simply be dropped: they are not masked. Each one enters every
window's softmax as a key and a value. What they contribute is known in closed form, though:

* a padded token is ``0`` after padding, so (for a token-wise ``qkv``) its key and value are
  ``k_p = qkv(0)_k`` and ``v_p = qkv(0)_v`` (the biases for a plain Linear), the same for all;
* padded keys differ only by their relative-position bias. With SAM's decomposed bias, query
  ``i`` (window row/col ``qh, qw``) sees key ``(kh, kw)`` with logit
  ``s·q_i·k + q_i·Rh[qh, kh] + q_i·Rw[qw, kw] = s·q_i·k + h_i[kh] + w_i[kw]``.

The real tokens of a window form its top-left ``a × b`` rectangle (padding is at the bottom and
right of the grid), so the padded positions are ``{kh >= a} ∪ {kh < a, kw >= b}`` and their
softmax weights sum to::

    Σ_padded exp(s·q_i·k_p + h_i[kh] + w_i[kw])
        = exp(s·q_i·k_p) · (Σ_{kh>=a} e^{h_i[kh]} · Σ_{kw} e^{w_i[kw]}
                             + Σ_{kh<a} e^{h_i[kh]} · Σ_{kw>=b} e^{w_i[kw]})
        = exp(s·q_i·k_p + L_i)

with ``L_i = logaddexp(lse(h_i[a:]) + lse(w_i), lse(h_i[:a]) + lse(w_i[b:]))``. All padded
values being ``v_p``, the padded keys act exactly like ONE extra key ``(k_p, v_p)`` whose bias is
``L_i``. So each window attends over its ``a·b`` real tokens plus that one virtual key, and only
real tokens are queries; qkv and proj run on the ``H × W`` real tokens only. Windows are grouped
by shape (whole 14 × 14 windows, the right and bottom strips, the corner: at most four groups)
so each group is one batched attention call. No term is subtracted, so nothing cancels.

Attention itself runs in ``scaled_dot_product_attention``. For inference the relative-position
bias is its float ``attn_mask`` (CPU flash kernel: ~2.5× the explicit matmul-softmax-matmul).
For training the bias is folded into the dot product instead (:func:`_attend_augmented`: extra
query coordinates holding the position terms against one-hot key coordinates), so no
``tokens × tokens`` tensor is formed or kept for backward and the position tables still get
their exact gradients.

When ``attn.qkv`` (or ``attn.proj``) is not token-wise, e.g. Conv-LoRA's convolution experts,
which look across each padded window and see the zeros, padding changes real outputs and cannot
be skipped: such blocks keep SAM's padded windows (still with the fused kernel). Token-wise are
``nn.Linear`` and any module with a true ``medsaga_tokenwise`` attribute (:data:`TOKENWISE_ATTRIBUTE`):
a tuning method that replaces ``qkv`` or ``proj`` with a token-wise layer sets it on that layer
(LoRA's ``LoRAQKV``, SAM-PARSER's ``ParserLinear`` do), so nothing here names a method's classes.

Use :func:`speed_up_encoder` on a built encoder. It swaps the classes of SAM's ``Block`` and
``Attention`` instances for the subclasses below: no parameter, buffer or name changes, so state
dicts, checkpoints and trained states load as before, and wrapped layers (``attn.qkv``) are called
as modules, as SAM does.
"""

from __future__ import annotations

import importlib
import math
import torch
from torch import nn
from torch.nn import functional as F

from medsaga.model.activation_checkpointing import checkpoint_modules
from medsaga.model.sam_import import sam_modeling

sam_modeling()  # registers the bare segment_anything package (no torchvision)
_sam_vit = importlib.import_module("segment_anything.modeling.image_encoder")
SamBlock: type[nn.Module] = _sam_vit.Block
SamAttention: type[nn.Module] = _sam_vit.Attention

TOKENWISE_ATTRIBUTE = "medsaga_tokenwise"
"""A module whose attribute of this name is true declares itself token-wise (:func:`is_tokenwise`)."""


def is_tokenwise(module: nn.Module) -> bool:
    """Whether ``module`` maps each token on its own (``f(x)[..., t, :]`` depends on token ``t`` only).

    Only then may padded tokens be skipped: their ``qkv`` is ``module(0)``, whatever the window.
    A plain ``nn.Linear`` is; any other module is when it says so with a true
    :data:`TOKENWISE_ATTRIBUTE` (an ``nn.Linear`` may also say it is not).
    """
    flag = getattr(module, TOKENWISE_ATTRIBUTE, None)
    if flag is not None:
        return bool(flag)
    return type(module) is nn.Linear


def window_segments(length: int, window: int) -> list[tuple[int, int, int]]:
    """Runs of windows along one axis of ``length`` tokens: ``(start, count, size)``.

    First ``length // window`` whole windows, then (if any tokens remain) one window holding
    the ``length % window`` real tokens of the last, padded window. ``window_segments(32, 14)``
    is ``[(0, 2, 14), (28, 1, 4)]``.
    """
    whole, rest = divmod(length, window)
    segments = [(0, whole, window)] if whole else []
    if rest:
        segments.append((whole * window, 1, rest))
    return segments


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, a: int, b: int,
           h_term: torch.Tensor | None = None, w_term: torch.Tensor | None = None,
           padded_kv: torch.Tensor | None = None, pad_log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of an ``a × b`` grid of queries over its ``a·b`` keys (plus one merged padded key).

    ``q, k, v (N, heads, a·b, d)``; ``h_term (N, heads, a, b, >=a)`` and ``w_term (N, heads, a, b,
    >=b)`` the decomposed position terms (logit of query ``i`` and key ``(kh, kw)`` gets
    ``h[i, kh] + w[i, kw]``), or ``None`` for no position bias; ``padded_kv (2, heads, 1, d)`` and
    ``pad_log_weight (N, heads, a·b, 1)``: the virtual key of a window's padding and its bias.
    Returns ``softmax(scale·q·kᵀ + bias) v`` as ``(N, heads, a·b, d)``.

    Inference (no gradient wanted) uses ``scaled_dot_product_attention`` with the bias as its
    float mask. Training uses :func:`_attend_augmented`, which never forms the ``(a·b) × (a·b)``
    bias, nor keeps it for backward.
    """
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, h_term, w_term, padded_kv, pad_log_weight))
    if wants_grad:
        return _attend_augmented(q, k, v, scale, a, b, h_term, w_term, padded_kv, pad_log_weight)
    n, heads, tokens, _ = q.shape
    bias = _position_bias(h_term, w_term, a, b, q.dtype) if h_term is not None and w_term is not None else None
    if padded_kv is not None and pad_log_weight is not None:
        if bias is None:
            bias = q.new_zeros(n, heads, tokens, tokens)
        k = torch.cat([k, padded_kv[0].expand(n, heads, 1, -1)], dim=2)
        v = torch.cat([v, padded_kv[1].expand(n, heads, 1, -1)], dim=2)
        bias = torch.cat([bias, pad_log_weight.to(bias.dtype)], dim=-1)
    if bias is not None:
        bias = bias.to(q.dtype)  # under autocast q is bf16 while parts of the bias may be fp32
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def _attend_augmented(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, a: int, b: int,
                      h_term: torch.Tensor | None, w_term: torch.Tensor | None, padded_kv: torch.Tensor | None,
                      pad_log_weight: torch.Tensor | None) -> torch.Tensor:
    """:func:`attend` with the position bias folded into the dot product, for training.

    Why: a float mask is a ``(N, heads, a·b, keys)`` tensor that autograd keeps for backward, and
    the CPU flash kernel has no gradient for it, so a trainable bias would need the explicit
    softmax (three such tensors). At 512 px, batch 4, one global block's attention matrix is
    192 MiB in fp32. Instead each query and key gets extra coordinates whose dot product *is*
    the bias::

        q̃_i = [scale·q_i, h[i, 0..a-1], w[i, 0..b-1], L_i]
        k̃_j = [k_j,       onehot(kh_j), onehot(kw_j), 0]     (the a·b real keys)
        k̃_p = [k_p,       0 ... 0,      0 ... 0,      1]     (the merged padded key)

    so ``q̃_i·k̃_j = scale·q_i·k_j + h[i, kh_j] + w[i, kw_j]`` and ``q̃_i·k̃_p = scale·q_i·k_p + L_i``:
    the same logits, exactly (the one-hot products add zeros). Plain fused attention on ``q̃, k̃``
    (values zero-padded to the same width, as the CPU flash kernel wants equal head sizes) then
    trains ``q``, ``k``, ``v`` and, through ``h``, ``w`` and ``L``, the relative-position tables,
    keeping only ``O(tokens)`` memory. The price is a wider head: ``d + a + b (+1)`` instead of
    ``d``, rounded up to a multiple of 8 (96 for a 14 × 14 window, 128 for 512's global 32 × 32 grid).
    """
    n, heads, tokens, dim = q.shape
    dtype = q.dtype
    queries = [q * scale]
    keys = [k]
    if h_term is not None and w_term is not None:
        queries += [h_term[..., :a].reshape(n, heads, tokens, a).to(dtype),
                    w_term[..., :b].reshape(n, heads, tokens, b).to(dtype)]
        positions = torch.arange(tokens, device=q.device)
        keys += [F.one_hot(positions // b, a).to(dtype).expand(n, heads, tokens, a),
                 F.one_hot(positions % b, b).to(dtype).expand(n, heads, tokens, b)]
    if padded_kv is not None and pad_log_weight is not None:
        queries.append(pad_log_weight.to(dtype))
        keys.append(q.new_zeros(n, heads, tokens, 1))
    q_wide = torch.cat(queries, dim=-1)
    k_wide = torch.cat(keys, dim=-1)
    if padded_kv is not None and pad_log_weight is not None:
        width = q_wide.shape[-1]
        padded_key = torch.cat([padded_kv[0].to(dtype), q.new_zeros(heads, 1, width - dim - 1),
                                q.new_ones(heads, 1, 1)], dim=-1)
        k_wide = torch.cat([k_wide, padded_key.expand(n, heads, 1, width)], dim=2)
        v = torch.cat([v, padded_kv[1].to(v.dtype).expand(n, heads, 1, dim)], dim=2)
    # Zero columns up to a multiple of 8 add nothing to any dot product; CUDA's fused kernels
    # want head sizes in multiples of 8 and would otherwise fall back to forming the maps.
    width = -(-q_wide.shape[-1] // 8) * 8
    q_wide = F.pad(q_wide, (0, width - q_wide.shape[-1]))
    k_wide = F.pad(k_wide, (0, width - k_wide.shape[-1]))
    v_wide = F.pad(v, (0, width - dim))
    return F.scaled_dot_product_attention(q_wide, k_wide, v_wide, scale=1.0)[..., :dim]


class FastAttention(SamAttention):
    """SAM's ``Attention`` (same parameters) taking the unpadded grid and the window size.

    ``forward(x (B, H, W, C), window_size)`` → ``(B, H, W, C)``. With ``window_size == 0`` it is
    global attention over the grid: what SAM's ``Attention`` computes on any input, so an
    unswapped ``Block`` passing padded windows still gets the right answer.
    """

    def forward(self, x: torch.Tensor, window_size: int = 0) -> torch.Tensor:
        if window_size == 0:
            return self.proj(self._grid_attention(self.qkv(x)))
        if not (is_tokenwise(self.qkv) and is_tokenwise(self.proj)):
            # qkv sees across the window (Conv-LoRA): padding matters, keep SAM's padded windows.
            height, width = x.shape[1:3]
            windows, padded = _sam_vit.window_partition(x, window_size)
            out = self.proj(self._grid_attention(self.qkv(windows)))
            return _sam_vit.window_unpartition(out, window_size, padded, (height, width))
        return self.proj(self._window_attention(x, window_size))

    def _split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(N, a, b, 3C)`` → q, k, v each ``(N, heads, a·b, d)`` (SAM's channel order: part, head, d)."""
        n, a, b, _ = qkv.shape
        return qkv.reshape(n, a * b, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def _grid_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """Every token of each ``(N, a, b)`` grid attends to all of it: ``(N, a, b, 3C)`` → ``(N, a, b, C)``."""
        n, a, b, _ = qkv.shape
        q, k, v = self._split_heads(qkv)
        h_term = w_term = None
        if self.use_rel_pos:
            rel_h = _sam_vit.get_rel_pos(a, a, self.rel_pos_h)  # (a, a, d)
            rel_w = _sam_vit.get_rel_pos(b, b, self.rel_pos_w)
            h_term, w_term = _rel_terms(q, rel_h, rel_w, a, b)
        return _merge_heads(attend(q, k, v, self.scale, a, b, h_term, w_term), a, b)

    def _window_attention(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """Windowed attention of SAM's zero-padded grid, from real tokens only: ``(B, H, W, C)`` in and out."""
        batch, height, width, channels = x.shape
        qkv, padded_kv = self._real_and_padded_qkv(x)
        rel_h = _sam_vit.get_rel_pos(window, window, self.rel_pos_h) if self.use_rel_pos else None
        rel_w = _sam_vit.get_rel_pos(window, window, self.rel_pos_w) if self.use_rel_pos else None
        rows = []
        for row0, row_count, a in window_segments(height, window):
            columns = []
            for col0, col_count, b in window_segments(width, window):
                part = qkv[:, row0:row0 + row_count * a, col0:col0 + col_count * b]
                # (B, R, a, K, b, 3C) → (B·R·K, a, b, 3C): one batch entry per window of this shape.
                part = part.reshape(batch, row_count, a, col_count, b, -1).transpose(2, 3)
                q, k, v = self._split_heads(part.reshape(-1, a, b, part.shape[-1]))
                out = self._shaped_windows(q, k, v, padded_kv, rel_h, rel_w, a, b, window)
                out = _merge_heads(out, a, b).reshape(batch, row_count, col_count, a, b, channels)
                columns.append(out.transpose(2, 3).reshape(batch, row_count * a, col_count * b, channels))
            rows.append(torch.cat(columns, dim=2))
        return torch.cat(rows, dim=1)

    def _real_and_padded_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``qkv`` of the real tokens ``(B, H, W, 3C)``, and the key and value of every padded token
        ``(2, heads, 1, d)``.

        A padded token is the zero vector, so (``qkv`` being token-wise) it becomes ``qkv(0)``: the
        biases for a Linear, the layer's own answer for a wrapped one. One zero token rides along
        with the real ones so that the layer runs once per forward, as in SAM: a second call would
        rebuild SAM-PARSER's weight again (``2·3C·C·k`` FLOPs, three times the qkv product itself
        at 256 input) and show forward hooks a call SAM never makes. The price is one copy of
        ``x``. The layer sees ``(1, 1, B·H·W + 1, C)``: token-wise layers take any leading shape.
        """
        batch, height, width, channels = x.shape
        tokens = torch.cat([x.reshape(1, 1, -1, channels), x.new_zeros(1, 1, 1, channels)], dim=2)
        out = self.qkv(tokens)[0, 0]  # (B·H·W + 1, 3C)
        return out[:-1].reshape(batch, height, width, -1), out[-1].reshape(3, self.num_heads, 1, -1)[1:]

    def _shaped_windows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padded_kv: torch.Tensor,
                        rel_h: torch.Tensor | None, rel_w: torch.Tensor | None, a: int, b: int,
                        window: int) -> torch.Tensor:
        """Windows with ``a × b`` real tokens (top-left) of a padded ``window × window``.

        ``q, k, v (N, heads, a·b, d)``, ``padded_kv (2, heads, 1, d)``, ``rel_h, rel_w (window,
        window, d)`` or ``None`` → ``(N, heads, a·b, d)``.
        """
        n, heads, tokens, _ = q.shape
        pad_count = window * window - tokens
        h_term = w_term = pad_log_weight = None
        if rel_h is not None and rel_w is not None:
            # Bias terms towards every key row/column of the window, padded ones included.
            h_term, w_term = _rel_terms(q, rel_h[:a], rel_w[:b], a, b)  # (N, heads, a, b, window)
            if pad_count:
                pad_log_weight = _padded_log_weight(h_term, w_term, a, b).reshape(n, heads, tokens, 1)
        elif pad_count:
            # No position bias: the padded keys only count, log(how many) for the merged key.
            pad_log_weight = q.new_full((n, heads, tokens, 1), math.log(pad_count))
        return attend(q, k, v, self.scale, a, b, h_term, w_term,
                      padded_kv if pad_count else None, pad_log_weight)


def _rel_terms(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, a: int,
               b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed position terms: ``q (N, heads, a·b, d)``, ``rel_h (a, Kh, d)``, ``rel_w (b, Kw, d)``
    → ``q·rel_h (N, heads, a, b, Kh)`` and ``q·rel_w (N, heads, a, b, Kw)`` (unscaled q, as SAM).

    Always in float32: these are small products (``d`` multiply-adds per term), and CPUs without
    native bf16 run bf16 batched matmuls of these shapes ~100x slower than fp32 (7.6 s of a 17 s
    vit_b forward at 256 under autocast, measured); float32 is also the more accurate.
    """
    grid = q.reshape(*q.shape[:2], a, b, q.shape[-1]).float()
    with torch.autocast(q.device.type, enabled=False):
        # einsum hands back a permuted view (its batch axis first); the broadcast sum built from
        # it would inherit that layout and cost a full copy when flattened: make them contiguous.
        return (torch.einsum("nhabc,akc->nhabk", grid, rel_h.float()).contiguous(),
                torch.einsum("nhabc,bkc->nhabk", grid, rel_w.float()).contiguous())


def _position_bias(h_term: torch.Tensor, w_term: torch.Tensor, a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
    """Bias of every (query, key) pair of an ``a × b`` grid: ``h[..., kh] + w[..., kw]``.

    ``h_term (N, heads, a, b, >=a)``, ``w_term (N, heads, a, b, >=b)`` → ``(N, heads, a·b, a·b)`` in
    ``dtype`` (the queries' dtype, as SAM adds the terms to its logits in that dtype).
    """
    n, heads = h_term.shape[:2]
    h_term, w_term = h_term[..., :a].to(dtype), w_term[..., :b].to(dtype)
    return (h_term[..., :, None] + w_term[..., None, :]).reshape(n, heads, a * b, a * b)


def _padded_log_weight(h_term: torch.Tensor, w_term: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """``log Σ_padded exp(h[kh] + w[kw])`` over the padded keys ``{kh >= a} ∪ {kh < a, kw >= b}``.

    ``h_term, w_term (..., window)`` float32 (see :func:`_rel_terms`) → ``(...)`` float32: bf16
    would round the merged key's weight more than SAM rounds any single padded key's.
    """
    window = h_term.shape[-1]
    parts = []
    if a < window:  # whole padded rows, every column
        parts.append(torch.logsumexp(h_term[..., a:], -1) + torch.logsumexp(w_term, -1))
    if b < window:  # the padded columns of the real rows
        parts.append(torch.logsumexp(h_term[..., :a], -1) + torch.logsumexp(w_term[..., b:], -1))
    return parts[0] if len(parts) == 1 else torch.logaddexp(parts[0], parts[1])


def _merge_heads(out: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """``(N, heads, a·b, d)`` → ``(N, a, b, heads·d)`` (head-major channels, as SAM)."""
    n, heads, _, dim = out.shape
    return out.transpose(1, 2).reshape(n, a, b, heads * dim)


class FastBlock(SamBlock):
    """SAM's ``Block`` (same parameters) handing the unpadded grid to :class:`FastAttention`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.attn, FastAttention):  # attention replaced by someone else: SAM's route
            return SamBlock.forward(self, x)
        # The first block gets the patch embedding's (B, C, H, W) memory permuted to (B, H, W, C):
        # made contiguous once here, the residual stream stays so, instead of every LayerNorm
        # and Linear copying it again (SAM keeps the permuted layout through all blocks).
        x = x.contiguous()
        x = x + self.attn(self.norm1(x), window_size=self.window_size)
        return x + self.mlp(self.norm2(x))


_FAST = {SamBlock: FastBlock, SamAttention: FastAttention}
_ORIGINAL = {fast: original for original, fast in _FAST.items()}


def speed_up_encoder(image_encoder: nn.Module) -> int:
    """Swap every SAM ``Block``/``Attention`` inside ``image_encoder`` for the exact fast version.

    In place and idempotent; parameters, buffers and state-dict keys are untouched. Works with
    any wrapper holding the encoder (the adapter's ``ParallelAdaptedEncoder``) and with wrapped
    ``attn.qkv``/``proj`` layers; gradients are exact (training may use it). Blocks already
    wrapped by :func:`~medsaga.model.activation_checkpointing.checkpoint_encoder_blocks` are
    re-wrapped so that checkpointing runs the fast forward. Only modules whose type is exactly
    SAM's are swapped (a subclass may have its own forward).

    Returns:
        The number of blocks swapped by this call (0 when already done).

    Raises:
        ValueError: a block's ``forward`` is replaced on the instance by something other than
            activation checkpointing (nothing is swapped then).
    """
    return _swap_classes(image_encoder, _FAST)


def restore_encoder(image_encoder: nn.Module) -> int:
    """Undo :func:`speed_up_encoder`: SAM's own classes again (checkpointed blocks re-wrapped so
    that they run SAM's forward). Returns the number of blocks restored.

    Raises:
        ValueError: as :func:`speed_up_encoder`.
    """
    return _swap_classes(image_encoder, _ORIGINAL)


def _swap_classes(image_encoder: nn.Module, classes: dict[type[nn.Module], type[nn.Module]]) -> int:
    """Set ``module.__class__ = classes[type(module)]`` for every matching module; returns the blocks swapped.

    An instance-level ``forward`` (activation checkpointing's wrapper) captured the old class's
    bound ``forward``: swapping the class would not reach it, so such blocks are unwrapped and
    wrapped again afterwards. Anything else wrapping a block's forward is refused before any
    change, so a failed call leaves the encoder as it was.
    """
    modules = [module for module in image_encoder.modules() if type(module) in classes]
    blocks = [module for module in modules if isinstance(module, SamBlock)]
    wrapped = [block for block in blocks if "forward" in vars(block)]
    if not all(getattr(block, "_medsaga_checkpointed", False) for block in wrapped):
        raise ValueError("a Block's forward is wrapped on the instance by something unknown; "
                         "speed up (or restore) the encoder before wrapping it")
    for block in wrapped:
        del block.forward
        block._medsaga_checkpointed = False
    for module in modules:
        module.__class__ = classes[type(module)]
    if wrapped:
        checkpoint_modules(wrapped)
    return len(blocks)


def is_sped_up(image_encoder: nn.Module) -> bool:
    """Whether ``image_encoder`` holds SAM blocks and all of them run the fast forward."""
    blocks = [m for m in image_encoder.modules() if isinstance(m, SamBlock)]
    return bool(blocks) and all(type(m) is FastBlock and type(m.attn) is FastAttention for m in blocks)
