"""The method interface and the methods of this issue: galore (MedSAGa), decoder, full.

Invariants every method must keep are checked for every registered method (:func:`method_names`)
on every backbone (a small model of each: SAM's ViT, LiteMedSAM's TinyViT), so a new method or a
new backbone is tested without editing a list here.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product
from pathlib import Path

import pytest
import torch

from medsaga.errors import InputError
from medsaga.methods import count_parameters, create_method, load_trained, method_names, save_trained
from medsaga.methods.galore import GaLoreMethod, GaLoreOptions
from medsaga.model.segmenter import SamSegmenter
from tests.method_helpers import lite_segmenter, synthetic_batch, tiny_segmenter, train_steps

SEGMENTERS: dict[str, Callable[..., SamSegmenter]] = {"vit": tiny_segmenter, "tiny_vit": lite_segmenter}
"""A small random model of each backbone, by the backbone's name (both at 64 px, seed 0 by default)."""
EVERY_METHOD_ON_EVERY_BACKBONE = list(product(method_names(), SEGMENTERS))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def test_registry_lists_the_methods_and_refuses_unknown_ones() -> None:
    # the order --method lists them in
    assert method_names() == ["galore", "adapter", "parser", "lora", "conv-lora", "decoder", "full"]
    with pytest.raises(InputError, match="unknown method 'lora2'; choose one of: .*galore"):
        create_method("lora2")
    with pytest.raises(InputError, match="bad options for method 'galore'"):
        create_method("galore", {"rnak": 4})


@pytest.mark.parametrize(("name", "backbone"), EVERY_METHOD_ON_EVERY_BACKBONE)
def test_every_trainable_parameter_gets_a_gradient(name: str, backbone: str) -> None:
    """Nothing is counted (or saved) as trained that the prompt-free head cannot train.

    Conv-LoRA routes each map to one of its experts: the experts no sample chose in this forward
    rightly get no gradient (its own tests check exactly which).
    """
    from medsaga.losses import segmentation_loss

    images, labels = synthetic_batch()
    model = SEGMENTERS[backbone]()
    method = create_method(name)
    method.prepare(model)
    model.train()
    loss = segmentation_loss(model(images), labels)
    auxiliary = method.auxiliary_loss(model)
    (loss if auxiliary is None else loss + auxiliary).backward()
    starved = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
               and not (name == "conv-lora" and ".experts." in n)]
    assert starved == []
    assert any(p.requires_grad for p in model.parameters())


def test_decoder_leaves_the_encoder_bit_identical() -> None:
    model = tiny_segmenter()
    method = create_method("decoder")
    method.prepare(model)
    encoder_before, decoder_before = _snapshot(model.sam.image_encoder), _snapshot(model.sam.mask_decoder)
    images, labels = synthetic_batch()
    train_steps(model, method, images, labels, steps=3)
    for name, value in model.sam.image_encoder.state_dict().items():
        assert torch.equal(value, encoder_before[name]), name
    changed = [n for n, v in model.sam.mask_decoder.state_dict().items() if not torch.equal(v, decoder_before[n])]
    assert len(changed) > 10
    assert method.encoder_frozen
    assert all(not p.requires_grad for p in model.sam.image_encoder.parameters())
    assert all(not p.requires_grad for p in model.sam.prompt_encoder.parameters())


def test_full_trains_encoder_and_decoder_but_not_the_prompt_encoder() -> None:
    model = tiny_segmenter()
    method = create_method("full")
    method.prepare(model)
    trainable, total = count_parameters(model)
    encoder = sum(p.numel() for p in model.sam.image_encoder.parameters())
    decoder = sum(p.numel() for p in model.sam.mask_decoder.parameters())
    iou_head = sum(p.numel() for p in model.sam.mask_decoder.iou_prediction_head.parameters())
    assert trainable == encoder + decoder - iou_head < total
    before = _snapshot(model.sam.image_encoder)
    train_steps(model, method, *synthetic_batch(), steps=2)
    assert not torch.equal(model.sam.image_encoder.blocks[0].attn.qkv.weight, before["blocks.0.attn.qkv.weight"])


def test_galore_projects_exactly_the_block_linear_weights() -> None:
    model = tiny_segmenter()
    method = GaLoreMethod(GaLoreOptions(rank=4, update_proj_gap=5))
    method.prepare(model)
    names = [name for name, _ in method.projected_weights(model)]
    depth = len(model.sam.image_encoder.blocks)
    expected = [f"sam.image_encoder.blocks.{b}.{layer}.weight" for b in range(depth)
                for layer in ("attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2")]
    assert names == expected
    groups = method.param_groups(model, 1e-3, 0.1)
    assert groups[0]["rank"] == 4 and "rank" not in groups[1]
    other_names = {name for name, _ in groups[1]["params"]}
    assert "sam.image_encoder.patch_embed.proj.weight" in other_names  # conv: AdamW, not GaLore
    assert "sam.image_encoder.neck.0.weight" in other_names
    assert "sam.image_encoder.blocks.1.attn.rel_pos_h" in other_names
    assert any(name.startswith("sam.mask_decoder.") for name in other_names)


def test_galore_adam_moments_have_rank_r_shape() -> None:
    """MedSAGa's own code never reaches GaLore (flat parameter list); ours must really project."""
    model = tiny_segmenter()
    method = GaLoreMethod(GaLoreOptions(rank=4, svd="full"))
    method.prepare(model)
    images, labels = synthetic_batch()
    optimizer = method.build_optimizer(model, 1e-3, 0.1)
    from medsaga.losses import segmentation_loss

    segmentation_loss(model(images), labels).backward()
    optimizer.step()
    qkv = model.sam.image_encoder.blocks[0].attn.qkv.weight  # (288, 96)
    state = optimizer.state[qkv]
    assert qkv.shape == (288, 96)
    assert state["exp_avg"].shape in {(288, 4), (4, 96)}
    assert state["exp_avg_sq"].shape == state["exp_avg"].shape
    decoder_weight = model.sam.mask_decoder.output_upscaling[0].weight
    assert optimizer.state[decoder_weight]["exp_avg"].shape == decoder_weight.shape


@pytest.mark.parametrize(("name", "backbone"), EVERY_METHOD_ON_EVERY_BACKBONE)
def test_saves_and_reloads_exactly_what_it_trained(name: str, backbone: str, tmp_path: Path) -> None:
    """What a method saves is exactly what it trained, and a reload is bit-exact: the same state,
    the same outputs (on TinyViT with its frozen BatchNorm statistics too)."""
    segmenter = SEGMENTERS[backbone]
    images, labels = synthetic_batch()
    model = segmenter()
    method = create_method(name, {"update_proj_gap": 2} if name == "galore" else None)
    method.prepare(model)
    model.train()
    train_steps(model, method, images, labels, steps=3)
    description = save_trained(method, model, tmp_path / "run")
    trained = method.trained_state(model)
    assert description["saved_tensors"] == len(trained)
    assert description["trainable_parameters"] == count_parameters(model)[0]

    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "trained.safetensors"))
    assert set(saved) == set(trained)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(saved)  # and buffers the method trains (the adapter's BatchNorm statistics)
    assert all(".running_" in n or "num_batches_tracked" in n for n in set(saved) - trainable)
    fresh = segmenter(seed=0)
    reloaded = load_trained(tmp_path / "run", fresh)
    assert reloaded.name == name and reloaded.options == method.options
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    state, again = method.trained_state(model), reloaded.trained_state(fresh)
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(images), fresh(images))


def test_decoder_run_is_small(tmp_path: Path) -> None:
    model = tiny_segmenter()
    method = create_method("decoder")
    method.prepare(model)
    save_trained(method, model, tmp_path)
    decoder_bytes = sum(p.numel() * p.element_size() for p in model.sam.mask_decoder.parameters())
    assert (tmp_path / "trained.safetensors").stat().st_size < decoder_bytes + 64_000


def test_loading_into_a_different_model_is_a_clear_error(tmp_path: Path) -> None:
    model = tiny_segmenter(num_classes=3)
    method = create_method("decoder")
    method.prepare(model)
    save_trained(method, model, tmp_path)
    with pytest.raises(InputError, match="does not fit the model"):
        load_trained(tmp_path, tiny_segmenter(num_classes=2))


def test_the_default_optimizer_is_fused_adamw_for_float_parameters() -> None:
    model = tiny_segmenter()
    method = create_method("lora")
    method.prepare(model)
    optimizer = method.build_optimizer(model, 1e-3, 0.1)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    model.double()  # float64 is fused too
    assert method.build_optimizer(model, 1e-3, 0.1).defaults["fused"] is True


@pytest.mark.parametrize(("name", "backbone"), EVERY_METHOD_ON_EVERY_BACKBONE)
def test_the_decoder_can_train_at_its_own_learning_rate(name: str, backbone: str) -> None:
    """``decoder_lr`` moves exactly the mask decoder's trainable parameters into a last group."""
    model = SEGMENTERS[backbone]()
    method = create_method(name)
    method.prepare(model)
    optimizer = method.build_optimizer(model, 1e-4, 0.1, decoder_lr=1e-3)
    groups = optimizer.param_groups
    decoder = {id(p) for p in model.sam.mask_decoder.parameters() if p.requires_grad}
    ids = [id(p[1] if isinstance(p, tuple) else p) for p in groups[-1]["params"]]
    assert set(ids) == decoder and groups[-1]["lr"] == 1e-3 and groups[-1]["weight_decay"] == 0.1
    everything = [id(p[1] if isinstance(p, tuple) else p) for group in groups for p in group["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert all(group["lr"] == 1e-4 for group in groups[:-1])
    plain = method.build_optimizer(model, 1e-4, 0.1)  # without: the method's own groups, all at lr
    assert all(group["lr"] == 1e-4 for group in plain.param_groups)
    assert len(groups) - len(plain.param_groups) in (0, 1)  # a group of the decoder alone is just re-rated
