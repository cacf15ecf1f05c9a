"""From a few profiled training steps to the peak at any batch size and image size.

A training step's tensor peak on the device (what ``torch.cuda.max_memory_allocated`` reads) is

    peak(B, S) = held(S) + fixed(S) + B * per_image(S)

- ``held``: the model's parameters and buffers and the optimizer state, alive between steps;
  exact counts. They depend on ``S`` only through the size-dependent tables (the ViT's absolute
  position embedding grows with the token count ``x``), so ``held`` is linear in ``x``.
- ``fixed``: what a step allocates whatever the batch: the gradients (all of them, or one layer's
  at a time in layer-wise GaLore), the optimizer's temporaries. Linear in ``x`` for the same reason.
- ``per_image``: saved activations and temporaries, per slice of the batch: a term linear in ``x``
  (everything computed per token or per window, windows having a fixed size) and a constant (the
  mask decoder's tokens). No quadratic term: medsaga's attention (``--attention fast``, SDPA) does
  not keep the ``x`` by ``x`` score matrix of global attention for backward. Measured on the tiny
  ViT (full tuning, no checkpointing): 0.059, 0.060 and 0.061 MiB per image per token at 448, 640
  and 1024 px.

``x = (S / 16)²`` here: tokens of a 16-pixel patch grid, the same unit for every encoder (TinyViT's
stage 0 at full resolution is linear in it too). Two batch sizes at each of three image sizes give
``fixed`` and ``per_image`` at three sizes; each is fitted by a least-squares line. Why three sizes
and least squares rather than two and an exact line: at small sizes a step's peak can fall in the
optimizer's update (all gradients alive) rather than in backward, so one pair of batch sizes can
under-read the per-image bytes; a third size damps that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

PATCH = 16


def size_units(image_size: int) -> float:
    """``x``: tokens of a 16-pixel patch grid at ``image_size`` (see the module docstring)."""
    return (image_size / PATCH) ** 2


@dataclass(frozen=True)
class StepMeasurement:
    """One profiled training step.

    Attributes:
        image_size: input side ``S`` in pixels.
        batch_size: slices per step ``B``.
        model_bytes: parameters and buffers on the device.
        optimizer_bytes: optimizer state after the first step.
        in_step_bytes: the most bytes allocated inside the step and alive at once (activations,
            gradients, temporaries).
    """

    image_size: int
    batch_size: int
    model_bytes: int
    optimizer_bytes: int
    in_step_bytes: int

    @property
    def peak_bytes(self) -> int:
        """What the device's allocator reads at the step's peak."""
        return self.model_bytes + self.optimizer_bytes + self.in_step_bytes

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "peak_bytes": self.peak_bytes}


@dataclass(frozen=True)
class PeakPrediction:
    """The peak at one setting and its parts (bytes)."""

    image_size: int
    batch_size: int
    model_bytes: float
    optimizer_bytes: float
    fixed_bytes: float
    activation_bytes: float

    @property
    def peak_bytes(self) -> float:
        return self.model_bytes + self.optimizer_bytes + self.fixed_bytes + self.activation_bytes

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "peak_bytes": self.peak_bytes}


def _line(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
    """``(intercept, slope)`` of the line through two points."""
    slope = (y1 - y0) / (x1 - x0)
    return y0 - slope * x0, slope


def _least_squares_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """``(intercept, slope)`` of the least-squares line through the points."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return mean_y - slope * mean_x, slope


@dataclass(frozen=True)
class PeakModel:
    """``peak(B, S)`` fitted to measurements (module docstring); bytes, per powers of ``x``."""

    model: tuple[float, float]  # intercept, slope in x
    optimizer: tuple[float, float]
    fixed: tuple[float, float]
    per_image: tuple[float, float]  # intercept, slope in x

    @classmethod
    def fit(cls, measurements: Sequence[StepMeasurement]) -> PeakModel:
        """Fit to two batch sizes at each of three image sizes (six steps)."""
        sizes = sorted({m.image_size for m in measurements})
        if len(sizes) != 3:
            raise ValueError(f"need measurements at three image sizes, got {sizes}")
        points = []  # (x, model, optimizer, fixed, per_image) per size
        for size in sizes:
            at_size = sorted((m for m in measurements if m.image_size == size), key=lambda m: m.batch_size)
            if len(at_size) != 2 or at_size[0].batch_size == at_size[1].batch_size:
                raise ValueError(f"need two batch sizes at {size} px, got {[m.batch_size for m in at_size]}")
            small, large = at_size
            per_image = (large.in_step_bytes - small.in_step_bytes) / (large.batch_size - small.batch_size)
            fixed = small.in_step_bytes - small.batch_size * per_image
            points.append((size_units(size), float(small.model_bytes), float(small.optimizer_bytes), fixed,
                           per_image))
        xs = [point[0] for point in points]
        return cls(model=_line(xs[0], points[0][1], xs[2], points[2][1]),
                   optimizer=_line(xs[0], points[0][2], xs[2], points[2][2]),
                   fixed=_least_squares_line(xs, [point[3] for point in points]),
                   per_image=_least_squares_line(xs, [point[4] for point in points]))

    def predict(self, image_size: int, batch_size: int) -> PeakPrediction:
        x = size_units(image_size)

        def at(line: tuple[float, float]) -> float:
            return max(line[0] + line[1] * x, 0.0)

        per_image = at(self.per_image)
        return PeakPrediction(image_size, batch_size, at(self.model), at(self.optimizer), at(self.fixed),
                              batch_size * per_image)

    def largest_batch(self, image_size: int, memory_bytes: float, limit: int = 4096) -> int:
        """The largest batch size whose predicted peak fits in ``memory_bytes`` (0: not even one)."""
        base = self.predict(image_size, 0).peak_bytes
        per_image = self.predict(image_size, 1).peak_bytes - base
        if base + per_image > memory_bytes:
            return 0
        if per_image <= 0:
            return limit
        return int(min(limit, (memory_bytes - base) // per_image))

    def plus(self, other: PeakModel, factor: float) -> PeakModel:
        """This model with ``factor`` times ``other`` added to every term (the bytes of
        ``factor`` more classes, ``other`` being the bytes of one)."""

        def add(mine: tuple[float, float], theirs: tuple[float, float]) -> tuple[float, float]:
            return mine[0] + factor * theirs[0], mine[1] + factor * theirs[1]

        return PeakModel(add(self.model, other.model), add(self.optimizer, other.optimizer),
                         add(self.fixed, other.fixed), add(self.per_image, other.per_image))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> PeakModel:
        return cls(*(tuple(record[name]) for name in ("model", "optimizer", "fixed", "per_image")))
