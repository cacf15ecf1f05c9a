"""The embedding cache: the frozen encoder part once per fixed view, training on its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsaga.losses import segmentation_loss
from medsaga.methods import create_method
from medsaga.train.augment import AugmentSettings, Augmenter
from medsaga.train.data import CaseStack, TrainingSlices
from medsaga.train.embedding_cache import build_cache, use_cache, view_schedule
from medsaga.train.loop import LoopSettings, SilentObserver, train
from tests.method_helpers import tiny_segmenter
from tests.train_helpers import SIZE, cache_slices, prepared

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["decoder", "adapter"])
def test_forward_from_the_frozen_output_is_the_uncached_forward(name: str) -> None:
    """Logits and gradients from (frozen part's output, image) equal those of ``model(image)``."""
    model, method = prepared(name)
    images, labels = cache_slices().batch([0, 3])
    with torch.inference_mode():
        frozen = method.frozen_encoder(model)(model.normalize(images))
    frozen = frozen.clone()  # an ordinary tensor, as the cache hands out
    cached = method.forward_from_frozen(model, frozen, images if method.cache_needs_images else None)
    segmentation_loss(cached, labels).backward()
    cached_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    logits = model(images)
    segmentation_loss(logits, labels).backward()
    assert torch.equal(cached, logits)
    assert cached_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for parameter_name, grad in cached_grads.items():
        assert torch.equal(grad, dict(model.named_parameters())[parameter_name].grad), parameter_name
    if name == "adapter":
        assert method.frozen_encoder(model) is model.sam.image_encoder.vit
        assert any(".adapter." in n for n in cached_grads)  # the adapter trains from the cached path


def test_only_decoder_and_adapter_declare_a_cacheable_part() -> None:
    from medsaga.methods.registry import method_classes

    assert [m.name for m in method_classes() if m.encoder_cacheable] == ["adapter", "decoder"]
    model = tiny_segmenter(image_size=SIZE)
    lora = create_method("lora")
    lora.prepare(model)
    assert lora.frozen_encoder(model) is None
    with pytest.raises(TypeError, match="no cacheable"):
        lora.forward_from_frozen(model, torch.zeros(1, 256, 4, 4), None)
    decoder = create_method("decoder")
    # auto: on for a cacheable method once the run trains on as many slices as the cache holds views.
    assert use_cache("auto", decoder, samples=400, entries=400)
    assert not use_cache("auto", decoder, samples=8, entries=400)
    assert not use_cache("auto", lora, samples=10**6, entries=1)
    assert not use_cache("off", decoder, samples=10**6, entries=1) and use_cache("on", decoder, samples=1, entries=9)
    # auto never builds a cache larger than the memory budget; on is what the user asked for.
    assert not use_cache("auto", decoder, samples=400, entries=400, cache_bytes=2**31, memory_budget=2**30)
    assert use_cache("auto", decoder, samples=400, entries=400, cache_bytes=2**29, memory_budget=2**30)
    assert use_cache("on", decoder, samples=1, entries=9, cache_bytes=2**40, memory_budget=1)
    with pytest.raises(ValueError, match="trains its image encoder"):
        use_cache("on", lora, samples=1, entries=1)


def test_cache_holds_fixed_seeded_views_and_their_embeddings() -> None:
    data = cache_slices()
    model, method = prepared("decoder")
    augmenter = Augmenter(AugmentSettings(prob=1.0), seed=3)
    cache = build_cache(model, method, data, augmenter, views=3, batch_size=2, device=CPU)
    assert cache.frozen is not None and cache.frozen.shape == (15, 256, 4, 4) and cache.images is None
    assert cache.labels.shape == (15, SIZE, SIZE) and cache.labels.dtype == torch.uint8
    assert cache.frozen_module == "sam.image_encoder" and cache.build_seconds > 0
    plain_images, plain_labels = data.batch(range(5))
    with torch.no_grad():
        plain_embeddings = model.encode(plain_images)
    frozen, images, labels = cache.batch([(i, 0) for i in range(5)])
    assert images is None and torch.equal(labels, plain_labels)  # view 0: the slice as it is
    torch.testing.assert_close(frozen, plain_embeddings, rtol=1e-5, atol=1e-5)
    for view in (1, 2):  # the other views are augmented: labels move with the images
        assert not torch.equal(cache.batch([(i, view) for i in range(5)])[2], plain_labels)
    again = build_cache(model, method, data, Augmenter(AugmentSettings(prob=1.0), seed=3), views=3, batch_size=4,
                        device=CPU)
    assert torch.equal(again.labels, cache.labels)  # seeded per (seed, slice, view), not per batch
    torch.testing.assert_close(again.frozen, cache.frozen, rtol=1e-5, atol=1e-5)
    assert cache.nbytes == 15 * 256 * 16 * 4 + 15 * SIZE * SIZE
    described = cache.describe()
    assert (described["views"], described["entries"], described["bytes"]) == (3, 15, cache.nbytes)

    adapter_model, adapter = prepared("adapter")
    half = build_cache(adapter_model, adapter, data, augmenter, views=2, batch_size=3, device=CPU, dtype="fp16")
    assert half.frozen is not None and half.frozen.dtype == torch.float16 and half.images is not None
    assert half.frozen_module == "sam.image_encoder.vit" and half.images.shape == (10, 3, SIZE, SIZE)
    _, images, _ = half.batch([(1, 0)])
    assert images is not None and images.dtype == torch.float32
    torch.testing.assert_close(images, plain_images[1:2], rtol=0, atol=5e-4)


def test_images_of_one_repeated_modality_are_kept_as_one_channel() -> None:
    model, adapter = prepared("adapter")
    augmenter = Augmenter(AugmentSettings(prob=1.0), seed=3)
    slices = cache_slices()
    mono = TrainingSlices([CaseStack(s.case_id, s.images[:, :1].expand(-1, 3, -1, -1).contiguous(), s.labels)
                           for s in slices.stacks], SIZE)
    cache = build_cache(model, adapter, mono, augmenter, views=2, batch_size=2, device=CPU, encode=False)
    assert cache.images is not None and cache.images.shape == (10, 1, SIZE, SIZE)
    _, images, _ = cache.batch([(4, 0), (2, 0)])
    assert images is not None and torch.equal(images, mono.batch([4, 2])[0])
    # Three different channels in the second batch only: the store widens, the first batch kept.
    mixed = TrainingSlices([mono.stacks[0], slices.stacks[1]], SIZE)
    cache = build_cache(model, adapter, mixed, augmenter, views=2, batch_size=3, device=CPU, encode=False)
    assert cache.images is not None and cache.images.shape[1] == 3
    _, images, _ = cache.batch([(0, 0), (4, 0)])
    assert images is not None and torch.equal(images, mixed.batch([0, 4])[0])


def test_view_schedule_shows_every_view_once_per_cycle() -> None:
    count, views = 7, 3
    for cycle in (0, 1):
        seen = np.stack([view_schedule(count, views, 5, cycle * views + turn) for turn in range(views)])
        assert all(sorted(seen[:, position]) == [0, 1, 2] for position in range(count))
    assert np.array_equal(view_schedule(count, views, 5, 4), view_schedule(count, views, 5, 4))
    orders = {tuple(view_schedule(count, views, seed, 0)) for seed in range(6)}
    assert len(orders) > 1  # drawn from the seed, not a fixed rotation


@pytest.mark.parametrize("name", ["decoder", "adapter"])
def test_cached_training_equals_training_on_the_same_views_without_the_cache(name: str, tmp_path: Path) -> None:
    """Same (slice, view) per step; the cache only skips recomputing the frozen part's output.

    Compared: the losses, the trained models' logits, and each trained tensor's update (to 1 % of
    its size: Adam divides by the root of the squared gradients, which turns the rounding
    differences of small gradients into visible ones), except the attention key biases, which
    softmax ignores: their gradient is pure rounding noise.
    """
    data = cache_slices()
    settings = LoopSettings(steps=4, batch_size=2, lr=1e-3, seed=1, cache_views=3)
    states, losses, logits = [], [], []
    probe = data.batch([1, 4])[0]
    for encode in (True, False):
        model, method = prepared(name)
        initial = {key: value.clone() for key, value in method.trained_state(model).items()}
        run = tmp_path / f"encode-{encode}"
        run.mkdir()
        result = train(model, method, data, settings, run, SilentObserver(),
                       Augmenter(AugmentSettings(prob=1.0), seed=1),
                       device=CPU, cache_encoder=encode)
        states.append(method.trained_state(model))
        model.eval()
        with torch.no_grad():
            logits.append(model(probe))
        losses.append([json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()])
        assert result.embedding_cache is not None and result.embedding_cache["views"] == 3
    assert losses[0] == pytest.approx(losses[1], abs=1e-5) and len(losses[0]) == 4
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        update = (value - initial[key]).float().norm()
        if not key.endswith("k_proj.bias") and value.is_floating_point():
            assert (value - states[1][key]).float().norm() <= 0.01 * update + 1e-7, key
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def test_the_loop_refuses_a_cache_for_a_method_without_a_frozen_part(tmp_path: Path) -> None:
    model = tiny_segmenter(image_size=SIZE)
    method = create_method("lora")
    method.prepare(model)
    with pytest.raises(ValueError, match="no cacheable frozen encoder part"):
        train(model, method, cache_slices(), LoopSettings(steps=1, batch_size=2, cache_views=2), tmp_path,
              SilentObserver(), Augmenter(AugmentSettings(), 0), device=CPU)
