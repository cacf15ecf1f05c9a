"""``medsaga plan``: will it fit on our GPU? Every method, lean and fast, before any long work.

For each method and memory profile (:mod:`medsaga.train.memory_profile`) the configuration the
profile resolves to has a *profile*: a training step's bytes at two small batch sizes and three
small image sizes (:mod:`medsaga.plan.measure`), shipped in the package, cached from an earlier
run on this machine, or measured now in a subprocess (:mod:`medsaga.plan.profiles`). The peak
model fitted to it (:mod:`medsaga.plan.extrapolate`) predicts the peak at the asked batch and image
size, whether it fits in ``--gpu-memory`` and the largest batch size that would. Configurations
that allocate the same are looked up (or measured) once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medsaga.methods.registry import method_class
from medsaga.plan.extrapolate import PeakModel, PeakPrediction, StepMeasurement, size_units
from medsaga.plan.measure import TrainingConfig, measure_step, profile_in_subprocess
from medsaga.plan.profiles import (MEASURED, PROFILED_BATCHES, Profile, ProfileKey, ProfileStore, device_name,
                                   make_key)
from medsaga.option_checks import check_memory_size, parse_memory  # noqa: F401 (parse_memory: plan's API)
from medsaga.train.memory_profile import LEAN, SPEED, MemoryProfile, resolve_memory_profile

PROFILES = (LEAN, SPEED)


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
    """One method in one profile.

    Attributes:
        source: where the figures come from: ``shipped`` (the package's profiles), ``cached``
            (measured on this machine before) or ``measured now`` (:mod:`medsaga.plan.profiles`).
    """

    method: str
    profile: str
    applied: tuple[str, ...]
    prediction: PeakPrediction
    fits: bool | None  # None: no memory given
    largest_batch: int | None
    measurements: list[StepMeasurement]
    fitted: PeakModel
    source: str = MEASURED

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "profile": self.profile, "applied": list(self.applied),
                "source": self.source, "prediction": self.prediction.to_json(), "fits": self.fits,
                "largest_batch": self.largest_batch, "measurements": [m.to_json() for m in self.measurements],
                "model": self.fitted.to_json()}


def fit_config(config: TrainingConfig, *, model_type: str, num_classes: int, sizes: Sequence[int],
               device: torch.device, batches: Sequence[int] = PROFILED_BATCHES) -> tuple[PeakModel, list[StepMeasurement]]:
    """Profile ``config`` at every ``sizes`` × ``batches`` in this process and fit its :class:`PeakModel`
    (no store: :func:`find_profiles` looks the profile up first)."""
    measurements = [measure_step(config, model_type=model_type, image_size=size, batch_size=batch,
                                 num_classes=num_classes, device=device)
                    for size in sizes for batch in batches]
    return PeakModel.fit(measurements), measurements


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def find_profiles(configs: Sequence[TrainingConfig], *, model_type: str, num_classes: int, sizes: Sequence[int],
                  device: torch.device, measure: bool = False, store: ProfileStore | None = None,
                  on_progress: Callable[[str], None] | None = None,
                  batches: Sequence[int] = PROFILED_BATCHES) -> dict[tuple[Any, ...], Profile]:
    """The profile of every configuration, by :meth:`TrainingConfig.key`: cached on this machine,
    else shipped, else profiled now (each in a subprocess, then cached); with ``measure`` all
    profiled now. ``on_progress`` hears what is profiled now, how long it should take, and each
    configuration as it is done."""
    store = store if store is not None else ProfileStore()
    say = on_progress or (lambda message: None)
    unique: dict[tuple[Any, ...], TrainingConfig] = {}
    for config in configs:
        unique.setdefault(config.key(), config)
    found: dict[tuple[Any, ...], Profile] = {}
    missing: list[tuple[TrainingConfig, ProfileKey]] = []
    for key, config in unique.items():
        profile_key = make_key(config, model_type=model_type, sizes=sizes, num_classes=num_classes, device=device,
                               batches=batches)
        profile = None
        if not measure:
            profile = store.find_cached(profile_key) or store.find_shipped(config, model_type=model_type,
                                                                           sizes=sizes, batches=batches)
        if profile is None:
            missing.append((config, profile_key))
        else:
            found[key] = profile
    if not missing:
        return found
    estimates = [store.estimate_seconds(config, model_type=model_type) for config, _ in missing]
    known = [seconds for seconds in estimates if seconds is not None]
    total = (f"about {_minutes(sum(known))}" + (" plus the ones never timed" if len(known) < len(estimates) else "")
             if known else "time unknown until the first step is measured")
    reason = "--measure" if measure else "not in the shipped profiles or this machine's cache"
    where = "" if device.type == "cpu" else " (times from CPU runs: a GPU takes far less)"
    say(f"profiling now on {device_name(device)} ({reason}): {len(missing)} configuration"
        f"{'s' if len(missing) != 1 else ''} of {model_type}, each in its own process, {total}{where}; "
        f"cached in {store.cache} for next time")
    weights = {(size, batch): batch * size_units(size) for size in sizes for batch in batches}
    for index, ((config, profile_key), estimate) in enumerate(zip(missing, estimates), 1):
        say(f"  [{index}/{len(missing)}] {config.describe()}" + (f": about {_minutes(estimate)}" if estimate else ""))
        first: list[float] = []

        def heard(measurement: StepMeasurement, seconds: float, estimate: float | None = estimate) -> None:
            if estimate is None and not first:  # nothing to go by before: extrapolate from this step
                first.append(seconds)
                rest = seconds * sum(weights.values()) / weights[(measurement.image_size, measurement.batch_size)]
                say(f"      first step {seconds:.0f} s: about {_minutes(rest - seconds)} more for this configuration")

        result = profile_in_subprocess(config, model_type=model_type, sizes=sizes, batches=batches,
                                       num_classes=num_classes, device=device, on_measurement=heard)
        profile = Profile(config, result.measurements, MEASURED, round(result.seconds, 1), num_classes,
                          peak_rss_bytes=result.peak_rss_bytes, origin={"device": profile_key.device})
        store.save(profile_key, profile)
        found[config.key()] = profile
        rss = f", worker peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB" if result.peak_rss_bytes else ""
        say(f"      done in {result.seconds:.0f} s{rss}")
    return found


def plan_config(config: TrainingConfig, *, model_type: str, num_classes: int, device: torch.device,
                sizes: Sequence[int] | None = None, measure: bool = False, store: ProfileStore | None = None,
                on_progress: Callable[[str], None] | None = None) -> tuple[PeakModel, Profile]:
    """The fitted peak of one configuration (what ``finetune --gpu-memory`` checks its run against),
    from the stored profiles (:func:`find_profiles`)."""
    sizes = tuple(sizes) if sizes is not None else default_profiled_sizes(model_type)
    profile = find_profiles([config], model_type=model_type, num_classes=num_classes, sizes=sizes, device=device,
                            measure=measure, store=store, on_progress=on_progress)[config.key()]
    return profile.peak_model(num_classes), profile


def plan(methods: Sequence[str], *, model_type: str, num_classes: int, image_size: int, batch_size: int,
         memory_bytes: int | None, device: torch.device, sizes: Sequence[int] | None = None,
         profiles: Sequence[str] = PROFILES, precision: str = "fp32",
         on_progress: Callable[[str], None] | None = None, measure: bool = False,
         store: ProfileStore | None = None) -> list[PlanRow]:
    """A :class:`PlanRow` per method and profile (module docstring), from the stored profiles
    (:func:`find_profiles`; ``measure``: all profiled now on ``device``)."""
    sizes = tuple(sizes) if sizes is not None else default_profiled_sizes(model_type)
    chosen = [(method, profile, *training_config(method, profile, precision=precision))
              for method in methods for profile in profiles]
    found = find_profiles([config for _, _, config, _ in chosen], model_type=model_type, num_classes=num_classes,
                          sizes=sizes, device=device, measure=measure, store=store, on_progress=on_progress)
    rows = []
    for method, profile, config, applied in chosen:
        stored = found[config.key()]
        model = stored.peak_model(num_classes)
        prediction = model.predict(image_size, batch_size)
        fits = None if memory_bytes is None else prediction.peak_bytes <= memory_bytes
        largest = None if memory_bytes is None else model.largest_batch(image_size, memory_bytes)
        rows.append(PlanRow(method, profile, applied, prediction, fits, largest, stored.measurements, model,
                            stored.source))
    return rows


def gpu_memory_bytes(text: str | None) -> int | None:
    """``--gpu-memory`` in bytes (:func:`~medsaga.option_checks.parse_memory`); ``None`` when not given.

    Raises:
        InputError: not a memory size.
    """
    return check_memory_size("--gpu-memory", text)
