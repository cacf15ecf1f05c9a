"""Light 2-D augmentation with MONAI: flips, small rotations and scales, intensity jitter.

Each sample's randomness is seeded from (run seed, step, position in batch), never from a running
random state: a run resumed at step k draws exactly what the uninterrupted run drew at step k.
The fixed views of the embedding cache are seeded from (run seed, slice, view) instead
(:func:`view_seed`), through the same transforms (:meth:`Augmenter.apply`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentSettings:
    """Augmentation strengths (each applied with probability ``prob``).

    Attributes:
        enabled: off makes training see the slices as they are.
        prob: probability of each transform.
        rotate_degrees: maximum in-plane rotation, both directions.
        scale: maximum relative zoom, both directions (0.1 = 90 % to 110 %).
        intensity: maximum relative intensity scaling and absolute shift (images are in [0, 1]).
        flip: mirror rows and columns (anatomy is left-right mirrored; labels follow).
    """

    enabled: bool = True
    prob: float = 0.5
    rotate_degrees: float = 15.0
    scale: float = 0.1
    intensity: float = 0.1
    flip: bool = True


class Augmenter:
    """Applies :class:`AugmentSettings` to batches; images ``(B, 3, S, S)``, labels ``(B, S, S)``."""

    def __init__(self, settings: AugmentSettings, seed: int) -> None:
        self.settings = settings
        self.seed = seed
        self._transform = _build(settings) if settings.enabled else None

    @property
    def enabled(self) -> bool:
        return self._transform is not None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int,
                 first_position: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of training step ``step``: sample ``i`` seeded from (seed, step, first_position + i).

        ``first_position``: where this batch starts in the step's global batch (a DDP rank's shard),
        so that every sample is augmented as in the single-process run.
        """
        return self.apply(images, labels, [_sample_seed(self.seed, step, first_position + position)
                                           for position in range(images.shape[0])])

    def apply(self, images: torch.Tensor, labels: torch.Tensor,
              seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment sample ``i`` with its transforms' random state seeded from ``seeds[i]`` (< 2**32)."""
        if self._transform is None:
            return images, labels
        if len(seeds) != images.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {images.shape[0]} samples")
        out_images, out_labels = [], []
        for position, seed in enumerate(seeds):
            self._transform.set_random_state(seed=seed)
            sample = self._transform({"image": images[position], "label": labels[position][None].float()})
            out_images.append(torch.as_tensor(sample["image"]).clamp_(0.0, 1.0))
            out_labels.append(torch.as_tensor(sample["label"])[0].round().long())
        return torch.stack(out_images), torch.stack(out_labels)


def view_seed(seed: int, slice_index: int, view: int) -> int:
    """The augmentation seed of fixed view ``view`` of training slice ``slice_index`` (below 2**32)."""
    return int(np.random.SeedSequence([seed, slice_index, view, _VIEW_TAG]).generate_state(1)[0])


_VIEW_TAG = 0x5EED  # keeps view seeds apart from any other use of SeedSequence


def _sample_seed(seed: int, step: int, position: int) -> int:
    # A fixed mix of the three numbers, kept below 2**32 as numpy's RandomState requires.
    return (seed * 1_000_003 + step * 10_007 + position * 101 + 17) % (2**32)


def _build(settings: AugmentSettings):  # -> monai.transforms.Compose
    from monai.data import set_track_meta
    from monai.transforms import Compose, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

    # MONAI's MetaTensor bookkeeping (affine and history per sample) made a batch of four 256 x 256
    # slices cost 1.3 s instead of 0.16 s here; plain tensors are all the training loop needs.
    set_track_meta(False)

    keys = ("image", "label")
    transforms = []
    if settings.flip:
        transforms += [RandFlipd(keys, prob=settings.prob, spatial_axis=0),
                       RandFlipd(keys, prob=settings.prob, spatial_axis=1)]
    transforms.append(RandAffined(keys, prob=settings.prob, rotate_range=math.radians(settings.rotate_degrees),
                                  scale_range=(settings.scale, settings.scale), mode=("bilinear", "nearest"),
                                  padding_mode="zeros"))
    transforms += [RandScaleIntensityd("image", factors=settings.intensity, prob=settings.prob),
                   RandShiftIntensityd("image", offsets=settings.intensity, prob=settings.prob)]
    return Compose(transforms)
