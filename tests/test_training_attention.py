"""Training with the exact no-padding attention (the default) is training with SAM's own attention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsaga.methods import create_method
from medsaga.model.fast_attention import is_sped_up
from medsaga.train.augment import AugmentSettings, Augmenter
from medsaga.train.loop import LoopSettings, SilentObserver, train
from tests.method_helpers import tiny_segmenter
from tests.train_helpers import SIZE, cache_slices

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["galore", "lora"])
def test_training_with_fast_attention_equals_training_with_sams(name: str, tmp_path: Path) -> None:
    """Same seed, data and steps; only the attention's implementation differs.

    GaLore trains every encoder weight (the relative-position tables too, so the bias gradient
    goes through the explicit formula); LoRA trains adapters inside ``qkv``. The losses of every
    step and the trained models' logits must agree to float rounding.
    """
    data = cache_slices()
    probe = data.batch([0, 3])[0]
    losses, logits, fast = [], [], []
    for fast_attention in (True, False):
        model = tiny_segmenter(image_size=SIZE, seed=3)
        method = create_method(name)
        method.prepare(model)
        run = tmp_path / f"fast-{fast_attention}"
        run.mkdir()
        settings = LoopSettings(steps=3, batch_size=2, lr=1e-3, seed=2, fast_attention=fast_attention)
        train(model, method, data, settings, run, SilentObserver(), Augmenter(AugmentSettings(), seed=2), device=CPU)
        fast.append(is_sped_up(model.sam.image_encoder))
        losses.append([json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()])
        model.eval()
        with torch.no_grad():
            logits.append(model(probe))
    assert fast == [True, False]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], abs=1e-4)
    # The models were trained: the check compares two moved models, not two initial ones.
    assert losses[0][0] != pytest.approx(losses[0][-1], abs=1e-6)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-3, atol=1e-3)
