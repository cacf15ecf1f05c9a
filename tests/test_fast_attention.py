"""The fast encoder attention is exact: outputs and gradients equal SAM's own, names unchanged.

Every comparison is against segment-anything's own ``Block``/``ImageEncoderViT`` (a deep copy,
before the swap), in fp32, max abs difference below 1e-4, outputs and the gradients of every
parameter and of the input (train mode). SAM's default initialisation zeroes the relative-position
tables, which would hide any error in the padded keys' position terms: every model here gets
random tables, and random biases, so the padded tokens' keys and values are not zero either.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medsaga.methods import create_method
from medsaga.model import fast_attention
from medsaga.model.activation_checkpointing import checkpoint_encoder_blocks
from medsaga.model.build import build_sam
from medsaga.model.fast_attention import (FastAttention, FastBlock, SamAttention, SamBlock, is_sped_up, is_tokenwise,
                                          restore_encoder, speed_up_encoder, window_segments)
from medsaga.model.sam_import import sam_modeling
from medsaga.model.segmenter import SamSegmenter

TOLERANCE = 1e-4
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "sample_data" / "imagesTr" / "phantom_001_0000.nii.gz"


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random biases, LayerNorm affines and relative-position tables (weights keep their init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith(("rel_pos_h", "rel_pos_w", "bias")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            elif name.endswith("pos_embed") or (name.endswith("weight") and parameter.dim() == 1):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module


def sped_up_copy(module: nn.Module) -> nn.Module:
    fast = copy.deepcopy(module)
    speed_up_encoder(fast)
    return fast


def outputs_and_grads(model: nn.Module, x: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    """Output, and the gradients of every parameter and of ``x`` for a random linear loss of it."""
    x = x.clone().requires_grad_(True)
    output = model(x)
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed)) / output[0].numel() ** 0.5
    (output * weights).sum().backward()
    result = {"output": output.detach(), "input": x.grad}
    result.update({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    return result


def assert_same(expected: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == ours.keys()
    for name, value in expected.items():
        assert (value - ours[name]).abs().max().item() < TOLERANCE, name


def assert_same_training(original: nn.Module, x: torch.Tensor) -> None:
    """The sped-up copy of ``original`` gives the same outputs and gradients (train mode)."""
    fast = sped_up_copy(original)
    original.train(), fast.train()
    expected, ours = outputs_and_grads(original, x), outputs_and_grads(fast, x)
    assert len(ours) == len(list(fast.parameters())) + 2  # every parameter got a gradient
    assert_same(expected, ours)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ------------------------------------------------------------------ single blocks, every geometry


def sam_block(window: int, input_size: int, *, use_rel_pos: bool = True, seed: int = 0) -> nn.Module:
    """A SAM ``Block`` of width 96, 3 heads (``input_size``: the global block's grid for its tables)."""
    torch.manual_seed(seed)
    block = sam_modeling().image_encoder.Block(dim=96, num_heads=3, use_rel_pos=use_rel_pos, window_size=window,
                                               input_size=(input_size, input_size))
    return randomise(block, seed)


@pytest.mark.parametrize(("height", "width"), [
    (16, 16),   # 256 input: padded to 28 x 28, four window shapes (14x14, 14x2, 2x14, 2x2)
    (32, 32),   # 512 input: padded to 42 x 42
    (20, 20),   # 320 input: 14 + 6
    (28, 28),   # 448 input: no padding at all
    (8, 8),     # smaller than one window: only the corner shape
    (16, 30),   # not square
])
def test_windowed_block_outputs_and_gradients_equal_sams(height: int, width: int) -> None:
    assert_same_training(sam_block(14, 14), torch.randn(2, height, width, 96))


def test_windowed_block_without_position_bias_equals_sams() -> None:
    """Without relative positions the padded keys weigh equally: the merged key's bias is log(count)."""
    assert_same_training(sam_block(14, 14, use_rel_pos=False), torch.randn(2, 16, 30, 96))


@pytest.mark.parametrize("grid", [16, 20])
def test_global_block_outputs_and_gradients_equal_sams(grid: int) -> None:
    assert_same_training(sam_block(0, grid), torch.randn(2, grid, grid, 96))


def test_fast_block_in_eval_equals_sams() -> None:
    """No gradients: the fused kernel path (bias as the SDPA mask), batch of windows per shape."""
    block = sam_block(14, 14).eval()
    x = torch.randn(3, 20, 34, 96)
    with torch.no_grad():
        assert max_diff(block(x), sped_up_copy(block)(x)) < TOLERANCE


def test_padded_keys_matter_so_the_test_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping the padded keys (what masking them would do) is visibly wrong: the check is sharp."""
    block = sam_block(14, 14).eval()
    fast = sped_up_copy(block)
    x = torch.randn(1, 16, 16, 96)
    monkeypatch.setattr(fast_attention, "_padded_log_weight",
                        lambda h_term, *_: torch.full(h_term.shape[:-1], -torch.inf))
    with torch.no_grad():
        assert max_diff(block(x), fast(x)) > 1e-2


def test_padded_keys_matter_in_training_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training path (bias folded into the dot product) also reads the merged padded key."""
    block = sam_block(14, 14).train()
    fast = sped_up_copy(block)
    x = torch.randn(1, 16, 16, 96, requires_grad=True)
    # -1e4, not -inf: the bias is a coordinate here, and -inf * 0 on the real keys would be NaN.
    monkeypatch.setattr(fast_attention, "_padded_log_weight", lambda h_term, *_: torch.full(h_term.shape[:-1], -1e4))
    assert max_diff(block(x), fast(x)) > 1e-2


def _largest_saved_tensor(module: nn.Module, x: torch.Tensor) -> int:
    """Elements of the largest tensor autograd saves for backward in one forward of ``module``."""
    largest = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        largest = max(largest, tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(x)
    return largest


@pytest.mark.parametrize("window", [0, 14])
def test_training_keeps_no_token_by_token_tensor_for_backward(window: int) -> None:
    """SAM keeps ``(B·heads, n, n)`` attention maps for backward; ours keeps ``O(n)`` per head.

    A global block on a 32 × 32 grid (512 px input: n = 1024) and a windowed one (n = 196 per window).
    """
    block = sam_block(window, 32).train()
    x = torch.randn(2, 32, 32, 96, requires_grad=True)
    tokens = 32 * 32 if window == 0 else 14 * 14
    windows = 1 if window == 0 else 9
    attention_map = 2 * windows * 3 * tokens * tokens
    mlp_hidden = 2 * 32 * 32 * 4 * 96  # the MLP's hidden activations of the real tokens
    assert _largest_saved_tensor(block, x) >= attention_map > mlp_hidden  # SAM's
    assert _largest_saved_tensor(sped_up_copy(block), x) <= mlp_hidden  # nothing token by token


def test_window_segments() -> None:
    assert window_segments(32, 14) == [(0, 2, 14), (28, 1, 4)]
    assert window_segments(28, 14) == [(0, 2, 14)]
    assert window_segments(8, 14) == [(0, 1, 8)]


# ------------------------------------------------------------------ whole encoders


def vit_b_like(image_size: int) -> nn.Module:
    """vit_b's width, heads, window and neck, but two blocks (one windowed, one global): cheap."""
    torch.manual_seed(0)
    encoder = sam_modeling().ImageEncoderViT(
        img_size=image_size, patch_size=16, embed_dim=768, depth=2, num_heads=12, mlp_ratio=4, out_chans=256,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=14,
        global_attn_indexes=(1,))
    return randomise(encoder)


@pytest.mark.parametrize("image_size", [256, 512, 320])  # grids 16, 32, 20 (none a multiple of 14)
def test_tiny_encoder_outputs_and_gradients_equal_sams(image_size: int) -> None:
    encoder = randomise(build_sam("tiny", num_classes=2, image_size=image_size).image_encoder)
    assert_same_training(encoder, torch.randn(2, 3, image_size, image_size))


@pytest.mark.parametrize("image_size", [256, 320])
def test_vit_b_like_encoder_outputs_and_gradients_equal_sams(image_size: int) -> None:
    assert_same_training(vit_b_like(image_size), torch.randn(1, 3, image_size, image_size))


def test_vit_b_like_encoder_at_512_equals_sams() -> None:
    original = vit_b_like(512).eval()
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        assert max_diff(original(x), sped_up_copy(original)(x)) < TOLERANCE


def phantom_images(image_size: int, batch: int = 1) -> torch.Tensor:
    """Real-looking input: axial slices of a CT phantom (abdominal window), SAM-normalised."""
    nibabel = pytest.importorskip("nibabel")
    volume = np.asarray(nibabel.load(SAMPLE_IMAGE).dataobj, dtype=np.float32)
    slices = torch.from_numpy(volume[:, :, 8:8 + batch]).permute(2, 0, 1)[:, None]  # (B, 1, i, j)
    images = ((slices + 160.0) / 400.0).clamp(0, 1)  # window W400 / L40, to [0, 1]
    images = nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear").expand(-1, 3, -1, -1)
    sam = build_sam("tiny", num_classes=2, image_size=image_size)
    return SamSegmenter(sam).normalize(images.contiguous())


def test_tiny_encoder_on_real_slices_equals_sams() -> None:
    original = randomise(build_sam("tiny", num_classes=2, image_size=256).image_encoder).eval()
    x = phantom_images(256, batch=2)
    with torch.no_grad():
        assert max_diff(original(x), sped_up_copy(original)(x)) < TOLERANCE


def test_bf16_autocast_runs_and_stays_close() -> None:
    original = randomise(build_sam("tiny", num_classes=2, image_size=256).image_encoder).eval()
    fast = sped_up_copy(original)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        reference = original(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = fast(x)
    error = max_diff(ours.float(), reference)
    # bf16 keeps 8 bits of mantissa: ~1% of the output's range after 2 blocks and the neck (SAM's
    # own bf16 run is as far off); 0 would mean autocast did not reach the blocks.
    assert 0 < error < 0.05 * reference.abs().max().item()


# ------------------------------------------------------------------ the swap itself


def test_state_dict_unchanged_idempotent_and_restorable() -> None:
    original = randomise(build_sam("tiny", num_classes=2, image_size=256).image_encoder).eval()
    fast = copy.deepcopy(original)
    assert speed_up_encoder(fast) == len(original.blocks)
    assert list(fast.state_dict()) == list(original.state_dict())
    assert all(torch.equal(fast.state_dict()[k], v) for k, v in original.state_dict().items())
    assert is_sped_up(fast) and not is_sped_up(original)
    assert speed_up_encoder(fast) == 0  # idempotent
    fast.load_state_dict(original.state_dict())  # strict: same keys both ways
    original.load_state_dict(fast.state_dict())
    assert type(fast.blocks[0]) is FastBlock and type(fast.blocks[0].attn) is FastAttention
    assert restore_encoder(fast) == len(fast.blocks) and restore_encoder(fast) == 0
    assert type(fast.blocks[0]) is SamBlock and type(fast.blocks[0].attn) is SamAttention
    assert not is_sped_up(fast)


def test_qkv_runs_once_per_forward_as_in_sam() -> None:
    """The padded tokens' key and value come from the same call (a zero token rides along)."""
    block = sam_block(14, 14).eval()
    fast = sped_up_copy(block)
    calls = {"sam": 0, "fast": 0}
    for name, model in (("sam", block), ("fast", fast)):
        model.attn.qkv.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        with torch.no_grad():
            model(torch.randn(1, 16, 16, 96))
    assert calls == {"sam": 1, "fast": 1}


def test_unknown_forward_wrapper_is_refused_and_nothing_changes() -> None:
    encoder = build_sam("tiny", num_classes=2, image_size=64).image_encoder
    encoder.blocks[1].forward = lambda x, _forward=encoder.blocks[1].forward: _forward(x)
    with pytest.raises(ValueError, match="wrapped on the instance"):
        speed_up_encoder(encoder)
    assert all(type(block) is SamBlock and type(block.attn) is SamAttention for block in encoder.blocks)


def test_checkpointed_blocks_run_the_chosen_forward_either_order() -> None:
    original = randomise(build_sam("tiny", num_classes=2, image_size=128).image_encoder)  # 8 x 8: one padded window
    checkpointed_first = copy.deepcopy(original)
    checkpoint_encoder_blocks(checkpointed_first)
    assert speed_up_encoder(checkpointed_first) == 2
    sped_up_first = sped_up_copy(original)
    checkpoint_encoder_blocks(sped_up_first)
    for encoder in (checkpointed_first, sped_up_first):
        assert all(block.forward.__wrapped__.__func__ is FastBlock.forward for block in encoder.blocks)
    x = torch.randn(1, 3, 128, 128)
    original.train(), checkpointed_first.train()
    assert_same(outputs_and_grads(original, x), outputs_and_grads(checkpointed_first, x))
    # Restoring re-wraps too: checkpointing then runs SAM's own forward again.
    assert restore_encoder(sped_up_first) == 2
    assert all(block.forward.__wrapped__.__func__ is SamBlock.forward for block in sped_up_first.blocks)


# ------------------------------------------------------------------ tuning methods' layers


def prepared(method: str, image_size: int = 256) -> SamSegmenter:
    """A tiny random SAM prepared by ``method``, with its zero-initialised updates made to count."""
    torch.manual_seed(0)
    segmenter = SamSegmenter(randomise(build_sam("tiny", num_classes=2, image_size=image_size)))
    create_method(method).prepare(segmenter)
    with torch.no_grad():
        for name, parameter in segmenter.named_parameters():
            if name.endswith(("lora_b", "lora_B")):
                parameter.normal_(0, 0.1)
    return segmenter


def test_lora_outputs_and_gradients_equal_sams() -> None:
    segmenter = prepared("lora")
    assert is_tokenwise(segmenter.sam.image_encoder.blocks[0].attn.qkv)
    encoder = segmenter.sam.image_encoder
    x = segmenter.normalize(torch.rand(1, 3, 256, 256))
    fast = sped_up_copy(encoder)
    assert list(fast.state_dict()) == list(encoder.state_dict())
    expected, ours = outputs_and_grads(encoder, x), outputs_and_grads(fast, x)
    assert len([name for name in ours if "lora" in name]) == 4  # frozen SAM weights: only LoRA's grads
    assert_same(expected, ours)


def test_parser_layers_are_tokenwise_and_exact() -> None:
    segmenter = prepared("parser").eval()
    encoder = segmenter.sam.image_encoder
    assert is_tokenwise(encoder.blocks[0].attn.qkv) and is_tokenwise(encoder.blocks[0].attn.proj)
    x = segmenter.normalize(torch.rand(1, 3, 256, 256))
    with torch.no_grad():
        assert max_diff(encoder(x), sped_up_copy(encoder)(x)) < TOLERANCE


def test_conv_lora_keeps_padded_windows_and_stays_exact() -> None:
    """Conv-LoRA's experts convolve across each padded window: the padding must stay, exactly."""
    segmenter = prepared("conv-lora").eval()  # eval: no gating noise, two runs are comparable
    encoder = segmenter.sam.image_encoder
    assert not is_tokenwise(encoder.blocks[0].attn.qkv)
    x = segmenter.normalize(torch.rand(1, 3, 256, 256))
    with torch.no_grad():
        assert max_diff(encoder(x), sped_up_copy(encoder)(x)) < TOLERANCE


class WindowMixingQKV(nn.Module):
    """A qkv that adds each window's mean token first: not token-wise, padding changes its output."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, h, w, C) -> (N, h, w, 3C)
        return self.linear(x + x.mean(dim=(1, 2), keepdim=True))


def test_unknown_qkv_falls_back_to_padded_windows_and_the_flag_is_read() -> None:
    block = sam_block(14, 14)
    block.attn.qkv = WindowMixingQKV(block.attn.qkv)
    assert not is_tokenwise(block.attn.qkv)
    assert_same_training(block, torch.randn(1, 16, 16, 96))
    # Declared token-wise (wrongly), the padding is skipped and the output changes: the flag counts.
    block.eval()
    fast = sped_up_copy(block)
    fast.attn.qkv.medsaga_tokenwise = True
    x = torch.randn(1, 16, 16, 96)
    with torch.no_grad():
        assert max_diff(block(x), fast(x)) > 1e-2


def test_methods_declare_their_tokenwise_layers_and_no_method_is_named_here() -> None:
    """LoRA's and SAM-PARSER's replacements set the flag themselves; this module names no method."""
    from medsaga.methods.lora import LoRAQKV
    from medsaga.methods.parser import ParserConv2d, ParserLinear

    code = Path(fast_attention.__file__).read_text().split('"""', 2)[2]  # past the module docstring
    assert "medsaga.methods" not in code and not hasattr(fast_attention, "TOKENWISE_TYPES")
    linear = nn.Linear(8, 24)
    for layer in (LoRAQKV(linear, rank=2), ParserLinear(linear, rank_fraction=1.0)):
        assert getattr(layer, fast_attention.TOKENWISE_ATTRIBUTE) is True and is_tokenwise(layer)
    assert not is_tokenwise(ParserConv2d(nn.Conv2d(8, 8, 3), rank_fraction=1.0))  # never a qkv: not declared


def test_adapter_wrapped_encoder_is_found() -> None:
    segmenter = SamSegmenter(build_sam("tiny", num_classes=2, image_size=256))
    create_method("adapter").prepare(segmenter)
    assert speed_up_encoder(segmenter.sam.image_encoder) == 2
    assert is_sped_up(segmenter.sam.image_encoder)
