"""The ``adapter`` method: a convolutional adapter in parallel with SAM's frozen, graph-free ViT."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from medsaga.losses import segmentation_loss
from medsaga.methods import count_parameters, load_trained, save_trained
from medsaga.methods.adapter import AdapterMethod, AdapterOptions
from medsaga.methods import adapter_net
from medsaga.methods.adapter_net import ConvAdapter, ParallelAdaptedEncoder, high_pass
from medsaga.model.backbone import TinyVitBackbone, VitBackbone
from tests.method_helpers import synthetic_batch, tiny_segmenter, train_steps

VIT_STRIDE = VitBackbone.embedding_stride  # 16: what the adapter is told by SAM's ViT's backbone


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _prepared(seed: int = 0, **options: float) -> tuple[torch.nn.Module, AdapterMethod]:
    """The tiny model with an adapter; 32 channels wide unless told (the default 256 costs ~10x more
    CPU time and changes nothing the tests check; the width-256 layout has its own test)."""
    model = tiny_segmenter(seed=seed)
    method = AdapterMethod(AdapterOptions(**{"width": 32, **options}))  # type: ignore[arg-type]
    method.prepare(model)
    return model, method


def _saved_tensor_owners(model: torch.nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """(tensors saved for backward during a forward of ``model``, how many of them inside the ViT)."""
    vit = model.sam.image_encoder.vit
    inside = [False]
    counts = [0, 0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        counts[0] += 1
        counts[1] += inside[0]
        return tensor

    def enter(*_: object) -> None:
        inside[0] = True

    def leave(*_: object) -> None:
        inside[0] = False

    handles = [vit.register_forward_pre_hook(enter), vit.register_forward_hook(leave)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return counts[0], counts[1]


def test_the_vit_stores_no_activations_even_if_its_weights_asked_for_gradients() -> None:
    """The no-grad region is inside the encoder: even with every ViT weight marked trainable (as a
    careless caller might), nothing inside the ViT is saved for backward, and the forward saves
    exactly what the adapter plus the decoder alone save."""
    model, method = _prepared()
    images, _ = synthetic_batch()
    for parameter in model.sam.image_encoder.vit.parameters():
        parameter.requires_grad_(True)
    total, in_vit = _saved_tensor_owners(model, images)
    assert total > 0 and in_vit == 0

    # The same forward without the ViT in the graph: its embedding as a constant.
    encoder: ParallelAdaptedEncoder = model.sam.image_encoder
    normalized = model.normalize(images)
    constant = encoder.vit(normalized).detach()
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.decode(constant + encoder.scale * encoder.adapter(normalized))
    assert saved[0] == total


def test_the_vit_gets_no_gradient_and_stays_frozen() -> None:
    model, method = _prepared()
    assert not method.encoder_frozen  # the loop must not run the adapter under no_grad
    images, labels = synthetic_batch()
    embedding = model.encode(images)
    assert embedding.requires_grad  # through the adapter only
    segmentation_loss(model.decode(embedding), labels).backward()
    vit = model.sam.image_encoder.vit
    assert all(p.grad is None and not p.requires_grad for p in vit.parameters())
    assert all(not p.requires_grad for p in model.sam.prompt_encoder.parameters())
    starved = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert starved == []
    adapter = sum(p.numel() for p in model.sam.image_encoder.adapter.parameters())
    decoder = sum(p.numel() for p in model.sam.mask_decoder.parameters())
    iou_head = sum(p.numel() for p in model.sam.mask_decoder.iou_prediction_head.parameters())
    assert count_parameters(model)[0] == adapter + decoder - iou_head


@pytest.mark.parametrize("size", [256, 512, 1024])
def test_adapter_output_has_the_embedding_shape(size: int) -> None:
    torch.manual_seed(0)
    adapter = ConvAdapter(width=8, embedding_stride=VIT_STRIDE)  # narrow: the shape does not depend on the width
    out = adapter(torch.rand(1, 3, size, size))
    assert out.shape == (1, 256, size // 16, size // 16)
    assert out.abs().max() < 1


def _adapter_output_grads_and_flops(adapter: ConvAdapter, images: torch.Tensor,
                                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    adapter.zero_grad()
    with FlopCounterMode(display=False) as counter:
        out = adapter(images)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in adapter.named_parameters()}
    return out.detach(), grads, counter.get_total_flops()


def test_the_composed_first_convolution_is_exact_and_cheaper(monkeypatch: pytest.MonkeyPatch) -> None:
    """conv(lift(x)) from the 6 input channels: same output and gradients (float64: no rounding
    to hide a wrong bias or border term), a fraction of the FLOPs."""
    torch.manual_seed(0)
    adapter = ConvAdapter(width=64, embedding_stride=VIT_STRIDE).double()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    composed = _adapter_output_grads_and_flops(adapter, images)
    monkeypatch.setattr(adapter_net, "conv_after_pointwise", lambda conv, lift, inputs: conv(lift(inputs)))
    direct = _adapter_output_grads_and_flops(adapter, images)
    assert torch.allclose(composed[0], direct[0], rtol=0, atol=1e-12)
    for name, grad in direct[1].items():
        assert torch.allclose(composed[1][name], grad, rtol=1e-10, atol=1e-12), name
    assert composed[2] < 0.5 * direct[2]


def test_default_adapter_is_the_reference_shape_on_the_tiny_model() -> None:
    model, _ = _prepared(width=256)
    adapter = model.sam.image_encoder.adapter
    assert isinstance(adapter.project, torch.nn.Identity) and len(adapter.blocks) == 3
    assert adapter.lift.in_channels == 6 and adapter.lift.out_channels == 256
    with torch.no_grad():
        assert adapter(torch.rand(2, 3, 64, 64)).shape == (2, 256, 4, 4)


def test_at_init_the_output_differs_from_the_frozen_model_only_by_the_adapter_term() -> None:
    images, _ = synthetic_batch()
    plain = tiny_segmenter(seed=0)
    plain_embedding = plain.encode(images).detach()
    silent, _ = _prepared(scale=0.0)
    assert torch.equal(silent(images), plain.decode(plain_embedding))

    model, _ = _prepared(scale=0.1)
    adapter_term = 0.1 * model.sam.image_encoder.adapter(model.normalize(images))
    assert adapter_term.abs().max() > 1e-3
    logits = model(images)
    torch.testing.assert_close(logits, plain.decode(plain_embedding + adapter_term), rtol=0, atol=1e-6)
    assert not torch.allclose(logits, plain.decode(plain_embedding))


def test_high_pass_removes_a_constant_and_low_frequencies_and_keeps_a_checkerboard() -> None:
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(48), indexing="ij")
    constant = torch.full((1, 3, 32, 48), 0.7)
    assert high_pass(constant, 0.25).abs().max() < 1e-6
    checkerboard = ((rows + cols) % 2 * 2.0 - 1.0).expand(1, 3, -1, -1)
    torch.testing.assert_close(high_pass(checkerboard, 0.25), checkerboard, rtol=0, atol=1e-5)
    slow = torch.cos(2 * math.pi * cols / 48).float().expand(1, 3, -1, -1)  # one period: low
    assert high_pass(slow, 0.25).abs().max() < 1e-5
    fast = torch.cos(2 * math.pi * 12 * rows / 32).float().expand(1, 3, -1, -1)  # 12 of 16: high
    torch.testing.assert_close(high_pass(fast, 0.25), fast, rtol=0, atol=1e-5)
    assert torch.equal(high_pass(slow, 0.0), slow)


def test_trains_adapter_and_decoder_and_leaves_the_vit_bit_identical() -> None:
    model, method = _prepared()
    encoder: ParallelAdaptedEncoder = model.sam.image_encoder
    vit_before, adapter_before = _snapshot(encoder.vit), _snapshot(encoder.adapter)
    decoder_before = _snapshot(model.sam.mask_decoder)
    losses = train_steps(model, method, *synthetic_batch(), steps=3)
    assert all(math.isfinite(loss) for loss in losses)
    for name, value in encoder.vit.state_dict().items():
        assert torch.equal(value, vit_before[name]), name
    adapter_changed = {n for n, v in encoder.adapter.state_dict().items() if not torch.equal(v, adapter_before[n])}
    assert adapter_changed == set(adapter_before)  # weights and BatchNorm statistics all moved
    assert int(encoder.adapter.blocks[0].norm.num_batches_tracked) == 3
    decoder_after = model.sam.mask_decoder.state_dict()
    assert sum(not torch.equal(v, decoder_after[n]) for n, v in decoder_before.items()) > 10


def test_eval_mode_uses_and_keeps_the_running_statistics() -> None:
    model, _ = _prepared()
    images, _ = synthetic_batch()
    model.eval()
    adapter = model.sam.image_encoder.adapter
    assert not adapter.training
    before = _snapshot(adapter)
    first, second = model(images[:1]), model(images)[:1]  # batch composition must not matter
    torch.testing.assert_close(first, second)
    assert all(torch.equal(v, before[n]) for n, v in adapter.state_dict().items())
    model.train()
    model(images)
    assert int(adapter.blocks[0].norm.num_batches_tracked) == 1


def test_saves_and_reloads_exactly_what_it_trained_including_batchnorm_statistics(tmp_path: Path) -> None:
    model, method = _prepared()
    train_steps(model, method, *synthetic_batch(), steps=2)
    description = save_trained(method, model, tmp_path / "run")
    assert description["trainable_parameters"] == count_parameters(model)[0]

    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "trained.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    statistics = {n for n in saved if n not in trainable}
    assert trainable < set(saved)
    assert statistics and all(n.startswith("sam.image_encoder.adapter.") for n in statistics)
    assert {n.rsplit(".", 1)[1] for n in statistics} == {"running_mean", "running_var", "num_batches_tracked"}
    assert not any(n.startswith("sam.image_encoder.vit.") for n in saved)

    fresh = tiny_segmenter(seed=0)
    reloaded = load_trained(tmp_path / "run", fresh)
    assert reloaded.name == "adapter" and reloaded.options == method.options
    fresh_state = fresh.state_dict()
    assert set(fresh_state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh_state[key]), key
    images, _ = synthetic_batch()
    model.eval()
    fresh.eval()
    assert torch.equal(model(images), fresh(images))


def test_options_are_checked_and_prepare_runs_once() -> None:
    for bad in ({"tau": 1.0}, {"num_blocks": 0}, {"downsample": 4, "num_blocks": 3}, {"scale": -0.1}):
        with pytest.raises(ValueError):
            AdapterOptions(**bad)  # type: ignore[arg-type]
    model, method = _prepared()
    with pytest.raises(ValueError, match="already"):
        method.prepare(model)
    encoder = model.sam.image_encoder
    assert model.image_size == 64 and encoder.wrapped_encoder is encoder.vit  # what the backbone protocol reads


def test_the_adapter_grid_is_the_backbones_embedding_stride() -> None:
    """The adapter is told the grid by the encoder's backbone (16 for SAM's ViT, 4 for TinyViT),
    and refuses sides that would not give every block a whole grid."""
    with pytest.raises(TypeError):
        ConvAdapter(width=8)  # type: ignore[call-arg]  # no default stride: the backbone must say
    torch.manual_seed(0)
    lite = ConvAdapter(width=8, embedding_stride=TinyVitBackbone.embedding_stride)
    assert lite(torch.rand(1, 3, 64, 64)).shape == (1, 256, 16, 16)
    with pytest.raises(ValueError, match="multiples of 16"):  # on TinyViT's grid, not the 3rd block's
        lite(torch.rand(1, 3, 72, 72))
    shallow = ConvAdapter(width=8, num_blocks=1, downsample=1, embedding_stride=TinyVitBackbone.embedding_stride)
    assert shallow(torch.rand(1, 3, 36, 36)).shape == (1, 256, 9, 9)
    model, _ = _prepared()
    assert model.sam.image_encoder.adapter.embedding_stride == VIT_STRIDE


def test_mean_pool_is_average_pooling_and_keeps_nothing_for_backward() -> None:
    """``avg_pool2d`` keeps its whole input for a backward that reads only its shape; ours keeps none."""
    x = torch.randn(2, 8, 32, 32, requires_grad=True)
    saved: list[torch.Size] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ours = adapter_net.mean_pool(x, 4)
    assert saved == []
    torch.testing.assert_close(ours, torch.nn.functional.avg_pool2d(x, 4))
    gradient = torch.randn(ours.shape)
    (ours_grad,) = torch.autograd.grad(ours, x, gradient)
    (reference_grad,) = torch.autograd.grad(torch.nn.functional.avg_pool2d(x, 4), x, gradient)
    torch.testing.assert_close(ours_grad, reference_grad)
    assert adapter_net.mean_pool(x, 1) is x
