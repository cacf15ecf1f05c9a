"""``lora`` (SAMed): zero start, only A/B/decoder train, k never touched, counts, merge, save/reload."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from medsaga.errors import InputError
from medsaga.losses import segmentation_loss
from medsaga.methods import count_parameters, create_method, load_trained, save_trained
from medsaga.methods.lora import LoRAMethod, LoRAOptions, LoRAQKV, merge
from medsaga.model.build import build_sam
from medsaga.model.segmenter import SamSegmenter
from tests.method_helpers import synthetic_batch, tiny_segmenter, train_steps

LORA_SUFFIXES = (".lora_a", ".lora_b")


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _is_lora(name: str) -> bool:
    return name.endswith(LORA_SUFFIXES)


def _decoder_trainable(model: nn.Module) -> int:
    decoder = model.sam.mask_decoder
    return (sum(p.numel() for p in decoder.parameters())
            - sum(p.numel() for p in decoder.iou_prediction_head.parameters()))


@pytest.fixture(scope="module")
def trained() -> tuple[SamSegmenter, LoRAMethod, dict[str, torch.Tensor]]:
    """A tiny model trained 3 steps with default LoRA, and its state dict before training."""
    model = tiny_segmenter()
    method = LoRAMethod()
    method.prepare(model)
    before = _snapshot(model)
    train_steps(model, method, *synthetic_batch(), steps=3)
    model.eval()
    return model, method, before


def test_zero_init_leaves_the_model_unchanged() -> None:
    """B = 0 at step 0: logits bit-identical to the unwrapped model; A initialised as SAMed."""
    plain = tiny_segmenter()
    adapted = copy.deepcopy(plain)
    LoRAMethod().prepare(adapted)
    images, _ = synthetic_batch()
    with torch.no_grad():
        assert torch.equal(adapted(images), plain(images))
    width = plain.sam.image_encoder.blocks[0].attn.qkv.in_features
    for block in adapted.sam.image_encoder.blocks:
        qkv = block.attn.qkv
        assert isinstance(qkv, LoRAQKV)
        assert qkv.lora_a.shape == (2, 4, width) and qkv.lora_b.shape == (2, width, 4)
        assert torch.count_nonzero(qkv.lora_b) == 0
        # Kaiming-uniform with a = sqrt(5) on (r, C): U(-1/sqrt(C), 1/sqrt(C)), spread over it.
        bound = 1 / math.sqrt(width)
        assert qkv.lora_a.abs().max() <= bound and qkv.lora_a.abs().max() > 0.9 * bound


def test_only_lora_and_decoder_train_and_base_weights_stay_bit_identical(trained) -> None:
    model, method, before = trained
    after = model.state_dict()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora_names = {name for name in after if _is_lora(name)}
    decoder_names = {name for name in after
                     if name.startswith("sam.mask_decoder.") and ".iou_prediction_head." not in name}
    assert trainable == lora_names | decoder_names
    assert len(lora_names) == 2 * len(model.sam.image_encoder.blocks)
    changed = {name for name, value in after.items() if not torch.equal(value, before[name])}
    assert lora_names <= changed  # B left zero, A moves with it
    assert len(changed & decoder_names) > 10
    assert changed <= lora_names | decoder_names  # qkv weights, rest of encoder, prompt encoder: bit-identical
    for index in range(len(model.sam.image_encoder.blocks)):
        for tensor in ("weight", "bias"):
            name = f"sam.image_encoder.blocks.{index}.attn.qkv.{tensor}"
            assert torch.equal(after[name], before[name]), name
    assert not method.encoder_frozen  # gradients must flow through the encoder to reach A and B


def test_every_trainable_parameter_gets_a_gradient() -> None:
    model = tiny_segmenter()
    LoRAMethod().prepare(model)
    segmentation_loss(model(synthetic_batch()[0]), synthetic_batch()[1]).backward()
    starved = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert starved == []


@pytest.mark.parametrize("targets", [("q", "v"), ("k",), ("v", "q", "k")])
def test_untargeted_thirds_of_the_qkv_output_are_never_modified(targets: tuple[str, ...]) -> None:
    """With non-zero A and B, each targeted third moves and every other third is bit-identical."""
    torch.manual_seed(0)
    base = nn.Linear(12, 36)
    layer = LoRAQKV(base, rank=3, targets=targets)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(2, 5, 5, 12)  # channels-last tokens, as the encoder blocks pass them
    plain, adapted = base(x).unflatten(-1, (3, 12)), layer(x).unflatten(-1, (3, 12))
    for third, part in enumerate("qkv"):
        assert torch.equal(adapted[..., third, :], plain[..., third, :]) == (part not in targets), part


def test_trained_model_leaves_the_k_third_untouched(trained) -> None:
    model, _, _ = trained
    qkv = model.sam.image_encoder.blocks[0].attn.qkv
    assert torch.count_nonzero(qkv.lora_b) > 0
    x = torch.randn(1, 4, 4, qkv.in_features)
    with torch.no_grad():
        plain = nn.functional.linear(x, qkv.weight, qkv.bias).unflatten(-1, (3, -1))
        adapted = qkv(x).unflatten(-1, (3, -1))
    assert torch.equal(adapted[..., 1, :], plain[..., 1, :])
    assert not torch.equal(adapted[..., 0, :], plain[..., 0, :])
    assert not torch.equal(adapted[..., 2, :], plain[..., 2, :])


def test_update_is_b_a_x_scaled_by_alpha_over_rank() -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 24)
    layer = LoRAQKV(base, rank=2, targets=("q", "v"), scaling=LoRAOptions(rank=2, alpha=6).scaling)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 8)
    a_q, a_v = layer.lora_a
    b_q, b_v = layer.lora_b
    expected = base(x) + 3.0 * torch.cat([x @ a_q.T @ b_q.T, torch.zeros(3, 8), x @ a_v.T @ b_v.T], dim=-1)
    torch.testing.assert_close(layer(x), expected)


def test_trainable_count_is_depth_times_two_targets_times_2rc_plus_decoder() -> None:
    model = tiny_segmenter()
    LoRAMethod(LoRAOptions(rank=3)).prepare(model)
    encoder = model.sam.image_encoder
    depth, width = len(encoder.blocks), encoder.blocks[0].attn.qkv.in_features
    trainable, total = count_parameters(model)
    assert trainable == depth * 2 * 3 * 2 * width + _decoder_trainable(model)
    plain_total = count_parameters(tiny_segmenter())[1]
    assert total == plain_total + depth * 2 * 3 * 2 * width


def test_vit_b_count() -> None:
    """ViT-B at 1024, 3 classes (meta device: shapes only): 147,456 LoRA + the decoder."""
    model = SamSegmenter(build_sam("vit_b", num_classes=3, image_size=1024, device="meta"))
    plain_total = count_parameters(model)[1]
    LoRAMethod().prepare(model)
    trainable, total = count_parameters(model)
    assert trainable - _decoder_trainable(model) == 12 * 2 * 4 * 2 * 768 == 147_456
    assert (trainable, total, plain_total) == (4_073_184, 93_882_928, 93_735_472)


def test_blocks_option_adapts_only_those_blocks() -> None:
    model = tiny_segmenter()
    LoRAMethod(LoRAOptions(blocks=[1], targets=["v"])).prepare(model)
    blocks = model.sam.image_encoder.blocks
    assert isinstance(blocks[0].attn.qkv, nn.Linear) and not isinstance(blocks[0].attn.qkv, LoRAQKV)
    assert isinstance(blocks[1].attn.qkv, LoRAQKV) and blocks[1].attn.qkv.targets == ("v",)
    with pytest.raises(InputError, match=r"lora blocks \[5\] do not exist"):
        LoRAMethod(LoRAOptions(blocks=(0, 5))).prepare(tiny_segmenter())


def test_options_are_checked_and_canonical() -> None:
    assert LoRAOptions(targets=["v", "q"], blocks=[2, 0]) == LoRAOptions(targets=("q", "v"), blocks=(0, 2))
    assert LoRAOptions(targets="v", blocks=3) == LoRAOptions(targets=("v",), blocks=(3,))  # CLI single values
    assert LoRAOptions().scaling == 1.0 and LoRAOptions(rank=8).scaling == 1.0
    assert LoRAOptions(rank=8, alpha=16).scaling == 2.0
    for bad in ({"rank": 0}, {"alpha": 0}, {"targets": ("q", "x")}, {"targets": ()}, {"targets": "qv"},
                {"targets": ("q", "q")}, {"blocks": (-1,)}, {"blocks": (1, 1)}):
        with pytest.raises(ValueError):
            LoRAOptions(**bad)


def test_merge_gives_a_plain_sam_with_the_same_outputs(trained) -> None:
    model, _, _ = trained
    merged = copy.deepcopy(model)
    images, _ = synthetic_batch(seed=7)
    with torch.no_grad():
        expected = model(images)
        merge(merged)
        got = merged(images)
    assert (got - expected).abs().max() < 1e-5
    assert not any(isinstance(module, LoRAQKV) for module in merged.modules())
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert set(merged.state_dict()) == set(tiny_segmenter().state_dict())  # loadable as a SAM checkpoint
    qkv = merged.sam.image_encoder.blocks[0].attn.qkv
    assert type(qkv) is nn.Linear and not qkv.weight.requires_grad


@pytest.mark.parametrize("targets", [("q", "v"), ("k",)])
def test_merge_folds_the_scaled_update_of_any_targets(targets: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    layer = LoRAQKV(nn.Linear(8, 24), rank=2, targets=targets, scaling=2.5)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 8)
    merged = merge(layer)
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), layer(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("options", [None, {"rank": 2, "alpha": 8.0, "targets": ["k", "v"], "blocks": [1]}])
def test_saves_and_reloads_exactly_what_it_trained(options: dict | None, tmp_path: Path) -> None:
    model = tiny_segmenter()
    method = create_method("lora", options)
    method.prepare(model)
    train_steps(model, method, *synthetic_batch(), steps=2)
    description = save_trained(method, model, tmp_path)
    assert description["trainable_parameters"] == count_parameters(model)[0]

    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "trained.safetensors"))
    assert set(saved) == {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(".attn.qkv.weight" in name for name in saved)  # the frozen base is not saved
    fresh = tiny_segmenter(seed=0)
    torch.manual_seed(123)  # prepare draws a different A: reloading must overwrite it
    reloaded = load_trained(tmp_path, fresh)
    assert reloaded.name == "lora" and reloaded.options == method.options
    fresh_state = fresh.state_dict()
    assert set(fresh_state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh_state[key]), key


def test_preparing_twice_is_refused() -> None:
    model = tiny_segmenter()
    method = LoRAMethod()
    method.prepare(model)
    with pytest.raises(ValueError, match="already carries LoRA"):
        method.prepare(model)
