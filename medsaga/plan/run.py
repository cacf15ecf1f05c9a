"""``medsaga plan``: will it fit on our GPU? Every method, lean and fast, before any long work.

For each method and memory profile (:mod:`medsaga.train.memory_profile`) the configuration the
profile resolves to is profiled at two small batch sizes and three small image sizes
(:mod:`medsaga.plan.measure`), the peak model fitted (:mod:`medsaga.plan.extrapolate`), and the
peak at the asked batch and image size predicted, with whether it fits in ``--gpu-memory`` and the
largest batch size that would. Configurations that allocate the same are measured once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medsaga.methods.registry import method_class
from medsaga.plan.extrapolate import PeakModel, PeakPrediction, StepMeasurement
from medsaga.plan.measure import TrainingConfig, measure_step
from medsaga.errors import InputError
from medsaga.train.memory_profile import LEAN, SPEED, MemoryProfile, resolve_memory_profile

PROFILES = (LEAN, SPEED)
PROFILED_BATCHES = (1, 2)


def default_profiled_sizes(model_type: str) -> tuple[int, int, int]:
    """Three small image sizes to profile at: the model type's registry entry says.

    ViTs: 224, 336 and 448 px. From 224 px on, a window holds 14 × 14 tokens of 16-pixel patches
    as at the sizes predicted; below, the whole grid fits in one part-empty window, and windowed
    attention would look quadratic in the token count. LiteMedSAM: 128, 192 and 256 px (its own size).
    """
    from medsaga.model.registry import get_model_type

    return get_model_type(model_type).profiled_sizes


def config_of(method: str, resolved: MemoryProfile, *, precision: str, cache_allowed: bool = True) -> TrainingConfig:
    """The :class:`TrainingConfig` a run of ``method`` trains with under the ``resolved`` profile.
    The embedding cache is counted on wherever the method can use it (unless ``cache_allowed`` is
    false: ``--cache-embeddings off``): it lives in host RAM, so it only ever lowers the device's peak."""
    return TrainingConfig(method, resolved.method_options, resolved.activation_checkpointing,
                          cache=cache_allowed and method_class(method).encoder_cacheable, precision=precision)


def training_config(method: str, profile: str, *, precision: str = "fp32") -> tuple[TrainingConfig, tuple[str, ...]]:
    """What ``finetune --method METHOD`` (with ``--speed`` for the speed profile) trains with, and
    the lean settings it applies."""
    resolved = resolve_memory_profile(method, {}, speed=profile == SPEED, activation_checkpointing=None, grad_accum=1)
    return config_of(method, resolved, precision=precision), resolved.applied


@dataclass
class PlanRow:
    """One method in one profile."""

    method: str
    profile: str
    applied: tuple[str, ...]
    prediction: PeakPrediction
    fits: bool | None  # None: no memory given
    largest_batch: int | None
    measurements: list[StepMeasurement]
    fitted: PeakModel

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "profile": self.profile, "applied": list(self.applied),
                "prediction": self.prediction.to_json(), "fits": self.fits, "largest_batch": self.largest_batch,
                "measurements": [m.to_json() for m in self.measurements], "model": self.fitted.to_json()}


def fit_config(config: TrainingConfig, *, model_type: str, num_classes: int, sizes: Sequence[int],
               device: torch.device, batches: Sequence[int] = PROFILED_BATCHES) -> tuple[PeakModel, list[StepMeasurement]]:
    """Profile ``config`` at every ``sizes`` × ``batches`` and fit its :class:`PeakModel`."""
    measurements = [measure_step(config, model_type=model_type, image_size=size, batch_size=batch,
                                 num_classes=num_classes, device=device)
                    for size in sizes for batch in batches]
    return PeakModel.fit(measurements), measurements


def plan(methods: Sequence[str], *, model_type: str, num_classes: int, image_size: int, batch_size: int,
         memory_bytes: int | None, device: torch.device, sizes: Sequence[int] | None = None,
         profiles: Sequence[str] = PROFILES, precision: str = "fp32",
         on_progress: Callable[[str], None] | None = None) -> list[PlanRow]:
    """A :class:`PlanRow` per method and profile (module docstring)."""
    sizes = tuple(sizes) if sizes is not None else default_profiled_sizes(model_type)
    fitted: dict[tuple[Any, ...], tuple[PeakModel, list[StepMeasurement]]] = {}
    rows = []
    for method in methods:
        for profile in profiles:
            config, applied = training_config(method, profile, precision=precision)
            if config.key() not in fitted:
                if on_progress is not None:
                    on_progress(f"{method} ({profile})")
                fitted[config.key()] = fit_config(config, model_type=model_type, num_classes=num_classes,
                                                  sizes=sizes, device=device)
            model, measurements = fitted[config.key()]
            prediction = model.predict(image_size, batch_size)
            fits = None if memory_bytes is None else prediction.peak_bytes <= memory_bytes
            largest = None if memory_bytes is None else model.largest_batch(image_size, memory_bytes)
            rows.append(PlanRow(method, profile, applied, prediction, fits, largest, measurements, model))
    return rows


UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
         "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def gpu_memory_bytes(text: str | None) -> int | None:
    """``--gpu-memory`` in bytes (:func:`parse_memory`); ``None`` when not given.

    Raises:
        InputError: not a memory size.
    """
    if text is None:
        return None
    try:
        return parse_memory(text)
    except ValueError as error:
        raise InputError(f"--gpu-memory: {error}") from None


def parse_memory(text: str) -> int:
    """``12GiB`` → 12 × 2³⁰ bytes; ``8GB`` → 8 × 10⁹ (SI, as the units say); bare numbers are bytes.

    Raises:
        ValueError: not a size.
    """
    stripped = text.strip().replace(" ", "").lower()
    number = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = stripped[len(number):]
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r} (use GiB, GB, MiB...)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 12GiB)") from None
    if value <= 0:
        raise ValueError(f"memory must be positive, got {text!r}")
    return int(value * UNITS[unit])
