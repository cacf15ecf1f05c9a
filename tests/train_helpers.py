"""Small training runs for the tests: tiny options on the sample data, a trained tiny run, a fake
clock, plan facts, and the embedding-cache tests' slices and prepared methods."""

from __future__ import annotations

from pathlib import Path

import torch

from medsaga.methods import create_method
from medsaga.train.data import CaseStack, TrainingSlices
from medsaga.train.finetune import FinetuneOptions, finetune
from medsaga.train.run_plan import RunFacts
from tests.data_paths import SAMPLE
from tests.method_helpers import tiny_segmenter
from tests.reporters import QuietPredictReporter

SIZE = 64  # the embedding-cache tests' input size
# The adapter at 32 channels: the default 256 costs ~10x more CPU time and changes nothing checked.
CACHE_OPTIONS = {"decoder": {}, "adapter": {"width": 32}}


def tiny_options(out: Path, **changes) -> FinetuneOptions:
    base = dict(data_dir=SAMPLE, out=out, shots=2, model="tiny", image_size=64, steps=6, batch_size=2,
                checkpoint_every=3, seed=3, method="galore", method_options={"update_proj_gap": 2})
    return FinetuneOptions(**{**base, **changes})


def train_tiny(out: Path, data: Path = SAMPLE, **changes) -> None:
    options = dict(data_dir=data, out=out, shots=1, model="tiny", image_size=64, steps=1, batch_size=2,
                   method="decoder", lr=1e-6, seed=7, augment=False)
    finetune(FinetuneOptions(**{**options, **changes}), QuietPredictReporter())


class FakeClock:
    """Seconds that move only when the test says: ``tick`` per call after ``setup`` seconds."""

    def __init__(self, setup: float, tick: float) -> None:
        self.now, self.setup, self.tick = 0.0, setup, tick
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls == 2:  # the second reading is when the steps begin: the setup has passed
            self.now += self.setup
        elif self.calls > 2:
            self.now += self.tick
        return self.now


def facts(**changes) -> RunFacts:
    base = dict(model_type="tiny", image_size=64, checkpoint=None, training_slices=10, embedding_shape=(32, 4, 4),
                learning_rate_cap=None, decoder_learning_rate=None, frozen_module="sam.image_encoder",
                available_memory=2**34, created="now")
    return RunFacts(**{**base, **changes})


def cache_slices(count: int = 5, seed: int = 0) -> TrainingSlices:
    """``count`` native 40 x 48 slices with a bright labelled square each (letterboxed to 64)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, 40, 48, generator=generator) * 0.3
    labels = torch.zeros(count, 40, 48, dtype=torch.long)
    for index in range(count):
        top = 4 + 3 * index
        labels[index, top:top + 12, 10:26] = 1 + index % 3
        images[index, :, top:top + 12, 10:26] += 0.5
    return TrainingSlices([CaseStack("a", images[:3], labels[:3]), CaseStack("b", images[3:], labels[3:])], SIZE)


def prepared(name: str, seed: int = 0):
    """The tiny SAM at :data:`SIZE` from ``seed``, prepared for method ``name`` (decoder or adapter)."""
    model = tiny_segmenter(image_size=SIZE, seed=seed)
    method = create_method(name, CACHE_OPTIONS[name])
    method.prepare(model)
    return model, method
