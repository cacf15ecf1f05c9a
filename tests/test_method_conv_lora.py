"""Conv-LoRA: exact start, one expert per map at its own scale, the balancing loss, training, saving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from medsaga.losses import segmentation_loss
from medsaga.methods import count_parameters, create_method, load_trained, save_trained
from medsaga.methods.conv_lora import (ConvLoRABranch, ConvLoRAMethod, ConvLoRAOptions, ConvLoRAQKV,
                                       conv_lora_layers)
from medsaga.methods.conv_lora_moe import MoEConv, NoisyTopKGate, cv_squared
from tests.method_helpers import synthetic_batch, tiny_segmenter, train_steps


def prepared(options: ConvLoRAOptions | None = None, seed: int = 0) -> tuple[nn.Module, ConvLoRAMethod]:
    model = tiny_segmenter(seed=seed)
    method = ConvLoRAMethod(options)
    method.prepare(model)
    return model, method


def gates_of(model: nn.Module) -> list[NoisyTopKGate]:
    return [module for module in model.modules() if isinstance(module, NoisyTopKGate)]


def randomise_lora_b(model: nn.Module, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ConvLoRABranch):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.1)


# --- the wrapped model starts as the pre-trained one -------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_zero_b_gives_the_unwrapped_outputs_bit_for_bit(mode: str) -> None:
    images, _ = synthetic_batch()
    reference = tiny_segmenter(seed=0)
    model, _ = prepared()
    getattr(reference, mode)()
    getattr(model, mode)()
    # Only the encoder is wrapped and both decoders come from the same seed: equal embeddings mean
    # equal logits.
    with torch.no_grad():
        assert torch.equal(model.encode(images), reference.encode(images))


def test_wraps_every_block_and_keeps_the_original_names() -> None:
    model, _ = prepared()
    reference = tiny_segmenter(seed=0)
    layers = conv_lora_layers(model)
    assert len(layers) == len(model.sam.image_encoder.blocks) == 2
    names = set(model.state_dict())
    assert set(reference.state_dict()) <= names  # …attn.qkv.weight / bias still there
    assert layers[0].weight is model.sam.image_encoder.blocks[0].attn.qkv.weight
    assert not layers[0].weight.requires_grad and not layers[0].bias.requires_grad
    with pytest.raises(ValueError, match="already has Conv-LoRA"):
        ConvLoRAMethod().prepare(model)


@pytest.mark.parametrize(("targets", "changed"), [(("q", "v"), (0, 2)), (("k",), (1,)), (("qkv",), (0, 1, 2))])
def test_branches_touch_only_their_thirds_of_qkv(targets: tuple[str, ...], changed: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 36)
    layer = ConvLoRAQKV(base, ConvLoRAOptions(targets=targets)).eval()
    randomise_lora_b(layer)
    b_shapes = {target: tuple(branch.lora_B.shape) for target, branch in layer.branches.items()}
    assert b_shapes == {target: (36, 3) if target == "qkv" else (12, 3) for target in targets}
    tokens = torch.randn(2, 5, 5, 12)
    with torch.no_grad():
        out, plain = layer(tokens).split(12, dim=-1), base(tokens).split(12, dim=-1)
    for third in range(3):
        assert torch.equal(out[third], plain[third]) is (third not in changed), third


def test_branch_is_scaled_b_of_bottleneck_plus_its_experts() -> None:
    """``s · B (z + MoE(z))`` with ``z = A x`` as an ``(r, h, w)`` map and ``s = alpha / r``."""
    torch.manual_seed(0)
    branch = ConvLoRABranch(12, 12, ConvLoRAOptions(rank=3, alpha=6)).eval()
    randomise_lora_b(branch)
    tokens = torch.randn(2, 5, 5, 12)
    with torch.no_grad():
        update, _ = branch(tokens)
        bottleneck = torch.einsum("nhwc,rc->nrhw", tokens, branch.lora_A)
        experts, _ = branch.moe(bottleneck)
        expected = torch.einsum("nrhw,or->nhwo", bottleneck + experts, branch.lora_B) * 2.0
    assert branch.scaling == 2.0
    assert experts.abs().sum() > 0
    assert torch.allclose(update, expected, atol=1e-6)


def test_token_maps_must_be_channels_last_grids() -> None:
    layer = ConvLoRAQKV(nn.Linear(12, 36), ConvLoRAOptions())
    with pytest.raises(ValueError, match=r"\(N, h, w, C\)"):
        layer(torch.randn(2, 25, 12))


# --- gating: exactly one expert per map ----------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_gate_picks_exactly_one_expert_per_sample(training: bool) -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(dim=3, experts=8).train(training)
    with torch.no_grad():
        gate.w_gate.normal_()
        gate.w_noise.normal_()
    gates, _ = gate(torch.randn(64, 3))
    assert gates.shape == (64, 8)
    assert torch.equal((gates != 0).sum(1), torch.ones(64, dtype=torch.long))
    assert torch.equal(gates.sum(1), torch.ones(64))  # softmax over the one kept logit
    assert len(set(gates.argmax(1).tolist())) > 1  # and not always the same one


def test_in_the_model_every_call_routes_each_map_to_one_expert() -> None:
    model, _ = prepared()
    captured: list[torch.Tensor] = []
    for gate in gates_of(model):
        gate.register_forward_hook(lambda _module, _inputs, output: captured.append(output[0].detach()))
    images, _ = synthetic_batch(batch=3)
    model.encode(images)
    assert len(captured) == 2 * 2  # 2 blocks × branches q and v
    for gates in captured:
        # 3 images: one 4×4 grid each (global block) or one padded 14×14 window each (windowed block)
        assert gates.shape == (3, 8)
        assert torch.equal((gates != 0).sum(1), torch.ones(3, dtype=torch.long))


# --- the experts: E of them, expert i at i× the grid ---------------------------------------------


def test_expert_count_and_scale_factors() -> None:
    model, _ = prepared()
    for layer in conv_lora_layers(model):
        for branch in layer.branches.values():
            assert [expert.scale for expert in branch.moe.experts] == list(range(1, 9))
    assert [e.scale for e in MoEConv(3, experts=5).experts] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("index", range(8))
def test_expert_i_convolves_at_i_times_the_grid(index: int) -> None:
    torch.manual_seed(0)
    moe = MoEConv(3, experts=8).eval()
    with torch.no_grad():
        moe.gate.w_gate[:, index] = 1.0  # positive maps: this expert's logit is the only positive one
    seen: dict[int, tuple[int, ...]] = {}
    for number, expert in enumerate(moe.experts):
        expert.conv.register_forward_hook(
            lambda _module, inputs, _output, number=number: seen.__setitem__(number, tuple(inputs[0].shape)))
    maps = torch.rand(2, 3, 5, 7) + 0.5
    out, _ = moe(maps)
    scale = index + 1
    assert seen == {index: (2, 3, 5 * scale, 7 * scale)}
    assert out.shape == maps.shape
    if scale == 1:  # no resampling at scale 1
        assert torch.equal(out, F.gelu(moe.experts[0].conv(maps)))


def test_outputs_go_back_to_their_own_samples() -> None:
    """Mixed routing: each map's output is what its own expert makes of it, in batch order."""
    torch.manual_seed(0)
    moe = MoEConv(3, experts=4).eval()
    maps = torch.randn(6, 3, 4, 4) + 3 * torch.randn(6, 3, 1, 1)  # pooled features far apart
    with torch.no_grad():
        moe.gate.w_gate.normal_()
    gates, _ = moe.gate(maps.mean(dim=(2, 3)))
    chosen = gates.argmax(1)
    assert len(set(chosen.tolist())) > 1
    out, _ = moe(maps)
    for sample in range(6):
        alone = moe.experts[int(chosen[sample])](maps[sample:sample + 1])
        assert torch.allclose(out[sample:sample + 1], alone, atol=1e-6), sample


# --- the balancing loss --------------------------------------------------------------------------


def test_balancing_loss_is_zero_for_perfectly_balanced_routing() -> None:
    gate = NoisyTopKGate(dim=4, experts=4, loss_coef=1e-2)
    pooled = torch.eye(4)  # sample i prefers expert i by a margin of 10
    with torch.no_grad():
        gate.w_gate.copy_(10 * torch.eye(4))
        gate.w_noise.fill_(-40.0)  # noise std ≈ 1e-2: the routing cannot flip
    for training in (False, True):
        gates, loss = gate.train(training)(pooled)
        assert torch.equal(gates.argmax(1), torch.arange(4))
        assert loss.item() == 0.0, training


def test_balancing_loss_of_all_on_one_expert_is_the_cv_squared_sum() -> None:
    gate = NoisyTopKGate(dim=4, experts=4, loss_coef=1e-2).eval()
    with torch.no_grad():
        gate.w_gate[:, 0] = 1.0
    _, loss = gate(torch.ones(4, 4))
    # importance = load = (4, 0, 0, 0): mean 1, unbiased variance 4 → cv² 4 each
    assert cv_squared(torch.tensor([4.0, 0.0, 0.0, 0.0])).item() == 4.0
    assert loss.item() == pytest.approx(1e-2 * (4 + 4))


def test_noisy_balancing_loss_has_a_gradient_to_the_gate_weights() -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(dim=3, experts=8).train()
    _, loss = gate(torch.randn(16, 3))
    loss.backward()
    assert gate.w_gate.grad is not None and gate.w_gate.grad.abs().sum() > 0
    assert gate.w_noise.grad is not None and gate.w_noise.grad.abs().sum() > 0


def test_auxiliary_loss_after_a_training_forward() -> None:
    model, method = prepared()
    model.train()
    torch.manual_seed(3)
    model.encode(synthetic_batch()[0])
    loss = method.auxiliary_loss(model)
    assert loss is not None and loss.dim() == 0
    assert torch.isfinite(loss) and loss.item() >= 0 and loss.requires_grad
    loss.backward()
    for gate in gates_of(model):
        assert gate.w_gate.grad is not None and gate.w_gate.grad.abs().sum() > 0
        assert gate.w_noise.grad is not None and gate.w_noise.grad.abs().sum() > 0
    assert method.auxiliary_loss(model) is None  # handed out once, then reset


def test_auxiliary_loss_is_from_the_current_forward_only() -> None:
    images, _ = synthetic_batch(batch=1)
    model, method = prepared()
    randomise_lora_b(model)

    def forward_with_seed(seed: int) -> None:
        torch.manual_seed(seed)
        model.encode(images)

    forward_with_seed(1)
    first = method.auxiliary_loss(model)
    forward_with_seed(2)
    second = method.auxiliary_loss(model)
    assert first is not None and second is not None and first.item() != second.item()
    forward_with_seed(1)
    forward_with_seed(2)  # no collection in between: the first forward's loss must be gone
    assert method.auxiliary_loss(model).item() == second.item()
    forward_with_seed(1)
    with torch.no_grad():
        model.encode(images)  # a forward without gradients replaces it with nothing
    assert method.auxiliary_loss(model) is None
    model.eval()
    model.encode(images)
    assert method.auxiliary_loss(model) is None


def test_seeded_training_forwards_route_identically() -> None:
    images, _ = synthetic_batch(batch=1)
    model, method = prepared()
    randomise_lora_b(model)
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        results.append((model.encode(images).detach(), method.auxiliary_loss(model).detach()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# --- training, what trains, saving ---------------------------------------------------------------


def test_every_trainable_parameter_gets_a_gradient_but_the_unchosen_experts() -> None:
    """Sparse routing, as in the reference: an expert that no map chose in this forward gets no
    gradient (AdamW then leaves it alone); everything else that is marked trainable does."""
    model, method = prepared()
    chosen: dict[str, set[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, MoEConv):
            module.gate.register_forward_hook(lambda _m, _i, output, name=name: chosen.setdefault(
                name, set()).update(output[0].argmax(1).tolist()))
    images, labels = synthetic_batch()
    torch.manual_seed(0)
    loss = segmentation_loss(model(images), labels) + method.auxiliary_loss(model)
    loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    unchosen = {f"{moe}.experts.{index}.conv.{kind}" for moe, used in chosen.items()
                for index in range(8) if index not in used for kind in ("weight", "bias")}
    assert len(chosen) == 4 and 0 < len(unchosen) < 4 * 8 * 2
    assert {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None} == unchosen
    encoder = [n for n in trainable if n.startswith("sam.image_encoder.")]
    assert encoder and all(".attn.qkv.branches." in n for n in encoder)
    assert not any(n.startswith("sam.prompt_encoder.") for n in trainable)
    assert {n for n in trainable if n.startswith("sam.mask_decoder.")} == {
        n for n, _ in model.sam.mask_decoder.named_parameters(prefix="sam.mask_decoder")
        if ".iou_prediction_head." not in n}


def test_parameter_count_matches_the_formula() -> None:
    model, _ = prepared()
    trainable, _ = count_parameters(model)
    decoder = sum(p.numel() for n, p in model.sam.mask_decoder.named_parameters()
                  if "iou_prediction_head" not in n)
    width, rank, experts = 96, 3, 8
    per_branch = rank * width + width * rank + experts * (9 * rank * rank + rank) + 2 * rank * experts
    assert trainable - decoder == 2 * 2 * per_branch  # 2 blocks × (q, v)


def test_trains_and_leaves_the_pretrained_weights_bit_identical(tmp_path: Path) -> None:
    model, method = prepared()
    before = {n: v.clone() for n, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    losses = train_steps(model, method, *synthetic_batch(batch=1), steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = model.state_dict()
    frozen_changed = [n for n in before if n not in trainable and not torch.equal(before[n], after[n])]
    assert frozen_changed == []
    for index, block in enumerate(model.sam.image_encoder.blocks):  # the qkv weights, explicitly
        prefix = f"sam.image_encoder.blocks.{index}.attn.qkv."
        assert torch.equal(block.attn.qkv.weight, before[prefix + "weight"])
        assert torch.equal(block.attn.qkv.bias, before[prefix + "bias"])
    b_weights = [n for n in trainable if n.endswith("lora_B")]
    assert all(after[n].abs().sum() > 0 for n in b_weights)  # B has left zero: the branches train

    description = save_trained(method, model, tmp_path / "run")
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "run" / "trained.safetensors"))) == trainable
    assert description["trainable_parameters"] == count_parameters(model)[0]
    fresh = tiny_segmenter(seed=0)
    reloaded = load_trained(tmp_path / "run", fresh)
    assert reloaded.name == "conv-lora" and reloaded.options == method.options
    fresh_state = fresh.state_dict()
    assert set(fresh_state) == set(after)
    for name, value in after.items():
        assert torch.equal(value, fresh_state[name]), name


# --- options -------------------------------------------------------------------------------------


def test_options_defaults_json_round_trip_and_validation() -> None:
    options = ConvLoRAOptions()
    assert (options.rank, options.alpha, options.experts, options.balance_loss_coef, options.targets,
            options.noisy_gating) == (3, 32.0, 8, 1e-2, ("q", "v"), True)
    assert ConvLoRAMethod.default_lr == 1e-4
    custom = ConvLoRAOptions(rank=4, alpha=8, experts=4, targets=["qkv"], noisy_gating=False)
    assert custom.targets == ("qkv",) and custom.alpha == 8.0
    method = create_method("conv-lora", json.loads(json.dumps(custom.to_json())))
    assert method.options == custom
    for bad in ({"rank": 0}, {"experts": 0}, {"alpha": 0}, {"balance_loss_coef": -1}, {"targets": []},
                {"targets": ["q", "q"]}, {"targets": ["qkv", "q"]}, {"targets": ["proj"]},
                {"noisy_gating": "yes"}):
        with pytest.raises(ValueError):
            ConvLoRAOptions(**bad)


def test_without_noisy_gating_training_adds_a_constant_balancing_term() -> None:
    model, method = prepared(ConvLoRAOptions(noisy_gating=False, experts=3))
    model.encode(synthetic_batch(batch=1)[0])
    loss = method.auxiliary_loss(model)
    assert loss is not None and torch.isfinite(loss) and loss.item() >= 0
    loss.backward()  # hard counts and a softmax over one logit: no gradient reaches the gate
    for gate in gates_of(model):
        assert gate.w_noise is None  # not created: it would never train
        assert gate.w_gate.grad is not None and not gate.w_gate.grad.any()
