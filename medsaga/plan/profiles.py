"""Stored memory profiles: shipped in the package, cached on the user's machine, or measured now.

A *profile* is what :mod:`medsaga.plan.measure` reads for one training configuration
(:class:`~medsaga.plan.measure.TrainingConfig`: method, its options, activation checkpointing,
the embedding cache, precision) of one model type: a training step's bytes at two batch sizes and
three small image sizes, from which :class:`~medsaga.plan.extrapolate.PeakModel` predicts any
size and batch. It depends on nothing else: not on the dataset, not on the weights' values; on the
number of classes only through the mask decoder (below).

Where a profile comes from, in the order :class:`ProfileStore` looks:

1. **cached**: measured on this machine before, by ``medsaga plan`` (a configuration the shipped
   file lacks) or ``medsaga plan --measure``; one JSON file per profile in :func:`cache_folder`
   (``$MEDSAGA_CACHE/plan-profiles``, else ``$XDG_CACHE_HOME/medsaga/plan-profiles``, else
   ``~/.cache/medsaga/plan-profiles``), named by the SHA-256 of its :class:`ProfileKey`: the model
   type and its architecture (a digest of every parameter's and buffer's name and shape, so an
   edited or user-registered encoder of the same name never reads another's profile), the
   configuration, the profiled sizes and batches, the number of classes, the device it was measured
   on (CUDA allocators count differently from the CPU profiler), the torch and medsaga versions;
2. **shipped**: ``medsaga/plan/profiles/<model type>.json``, measured once per model type by
   ``benchmarks/plan_profiles.py`` on a CPU (the profiler's allocation events: the bytes a GPU's
   allocator would count), which records the medsaga commit and the torch version. A shipped
   profile is used when the model type's architecture digest matches the file's; it was measured
   with :data:`REFERENCE_CLASSES` classes, and other class counts add the mask decoder's bytes per
   class (``classes.json``, below);
3. **measured now**: anything else (a new method option, a model type with no shipped file, a
   changed architecture), profiled in a subprocess per configuration and then cached.

The number of classes: the mask decoder has one output token and one hypernetwork MLP
(256 → 256 → 256 → 32) per class, so each class adds ~0.56 MB of weights (fp32), the same again
per gradient and twice per Adam state, and a mask's logits per image. That is the same for every
encoder (the decoder is SAM's, 256 channels, on a 16-pixel grid for every type here), so
``classes.json`` holds, per configuration, the :class:`~medsaga.plan.extrapolate.PeakModel` of the
bytes per class (fitted from steps with 2 and with 14 classes on the tiny ViT) and the checks made
on ViT-B and LiteMedSAM; the shipped figures for ``C`` classes are the profile's plus
``(C - REFERENCE_CLASSES)`` times that.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medsaga.plan.extrapolate import PeakModel, StepMeasurement
from medsaga.plan.measure import TrainingConfig

FORMAT = 1
SHIPPED = "shipped"
CACHED = "cached"
MEASURED = "measured now"
REFERENCE_CLASSES = 3  # the shipped profiles' foreground classes
CLASSES_FILE = "classes.json"
PROFILED_BATCHES = (1, 2)


def cache_folder() -> Path:
    """``$MEDSAGA_CACHE/plan-profiles``, else ``$XDG_CACHE_HOME/medsaga/plan-profiles``, else ``~/.cache/...``."""
    if os.environ.get("MEDSAGA_CACHE"):
        return Path(os.environ["MEDSAGA_CACHE"]) / "plan-profiles"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "medsaga" / "plan-profiles"


def shipped_folder() -> Path:
    """The folder of the shipped profiles, inside the installed package."""
    return Path(__file__).resolve().parent / "profiles"


@lru_cache(maxsize=None)
def architecture_digest(model_type: str, image_size: int, num_classes: int = REFERENCE_CLASSES) -> str:
    """SHA-256 (16 hex digits) of the names and shapes of every parameter and buffer of
    ``model_type`` built at ``image_size`` on the meta device (allocates nothing; < 0.1 s after
    segment-anything's import)."""
    from medsaga.model.build import build_sam

    sam = build_sam(model_type, num_classes=num_classes, image_size=image_size, device="meta")
    text = "\n".join(f"{name}:{tuple(tensor.shape)}" for name, tensor in sam.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def device_name(device: Any) -> str:
    """``cpu``, or ``cuda:<card name>``: what a profile's bytes were counted on."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


@dataclass(frozen=True)
class ProfileKey:
    """Everything a profile depends on (module docstring)."""

    model_type: str
    architecture: str
    config: TrainingConfig
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    num_classes: int
    device: str
    torch_version: str
    medsaga_version: str

    def to_json(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "architecture": self.architecture, "config": self.config.to_json(),
                "sizes": list(self.sizes), "batches": list(self.batches), "num_classes": self.num_classes,
                "device": self.device, "torch_version": self.torch_version, "medsaga_version": self.medsaga_version}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:24]


def make_key(config: TrainingConfig, *, model_type: str, sizes: Sequence[int], num_classes: int, device: Any,
             batches: Sequence[int] = PROFILED_BATCHES) -> ProfileKey:
    """The :class:`ProfileKey` of profiling ``config`` now, on ``device``, with this torch and medsaga."""
    import torch

    from medsaga import __version__

    return ProfileKey(model_type, architecture_digest(model_type, min(sizes)), config, tuple(sorted(sizes)),
                      tuple(sorted(batches)), num_classes, device_name(device), torch.__version__, __version__)


@dataclass
class Profile:
    """One configuration's measurements and where they come from.

    Attributes:
        config: what was profiled.
        measurements: one per profiled (size, batch).
        source: :data:`SHIPPED`, :data:`CACHED` or :data:`MEASURED`.
        seconds: how long profiling took where it was measured (None: unknown).
        num_classes: the classes it was measured with.
        per_class: the bytes each class adds (shipped profiles: applied by :meth:`peak_model`).
        peak_rss_bytes: the profiling process's peak resident memory.
        origin: where it was measured (device, torch, commit), for the table's notes.
    """

    config: TrainingConfig
    measurements: list[StepMeasurement]
    source: str
    seconds: float | None = None
    num_classes: int = REFERENCE_CLASSES
    per_class: PeakModel | None = None
    peak_rss_bytes: int | None = None
    origin: dict[str, Any] = field(default_factory=dict)

    def peak_model(self, num_classes: int | None = None) -> PeakModel:
        """The fitted model, for ``num_classes`` (shifted by the decoder's bytes per class)."""
        fitted = PeakModel.fit(self.measurements)
        if num_classes is None or num_classes == self.num_classes or self.per_class is None:
            return fitted
        return fitted.plus(self.per_class, num_classes - self.num_classes)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_json(), "measurements": [m.to_json() for m in self.measurements],
                "model": PeakModel.fit(self.measurements).to_json(), "seconds": self.seconds,
                "num_classes": self.num_classes, "peak_rss_bytes": self.peak_rss_bytes}


def measurements_from_json(records: Sequence[dict[str, Any]]) -> list[StepMeasurement]:
    return [StepMeasurement(**{key: value for key, value in record.items() if key != "peak_bytes"})
            for record in records]


def per_class_model(with_few: Sequence[StepMeasurement], with_many: Sequence[StepMeasurement],
                    few: int, many: int) -> PeakModel:
    """The :class:`PeakModel` of the bytes one class adds, from the same steps with ``few`` and ``many`` classes."""
    by_point = {(m.image_size, m.batch_size): m for m in with_few}
    differences = []
    for large in with_many:
        small = by_point[(large.image_size, large.batch_size)]
        count = many - few
        differences.append(StepMeasurement(large.image_size, large.batch_size,
                                           round((large.model_bytes - small.model_bytes) / count),
                                           round((large.optimizer_bytes - small.optimizer_bytes) / count),
                                           round((large.in_step_bytes - small.in_step_bytes) / count)))
    return PeakModel.fit(differences)


class ProfileStore:
    """Looks profiles up (cached, then shipped) and caches new ones (module docstring).

    Args:
        shipped: the folder of shipped ``<model type>.json`` files (default: the package's).
        cache: the cache folder (default :func:`cache_folder`); ``None`` for the default.
    """

    def __init__(self, shipped: Path | None = None, cache: Path | None = None) -> None:
        self.shipped = shipped if shipped is not None else shipped_folder()
        self.cache = cache if cache is not None else cache_folder()
        self._files: dict[str, dict[str, Any] | None] = {}

    # -- shipped -----------------------------------------------------------------------------
    def shipped_file(self, model_type: str) -> dict[str, Any] | None:
        """The shipped document of ``model_type`` (None: none shipped, or unreadable)."""
        if model_type not in self._files:
            self._files[model_type] = _read_json(self.shipped / f"{model_type}.json")
        return self._files[model_type]

    def classes_file(self) -> dict[str, Any] | None:
        if CLASSES_FILE not in self._files:
            self._files[CLASSES_FILE] = _read_json(self.shipped / CLASSES_FILE)
        return self._files[CLASSES_FILE]

    def per_class(self, config: TrainingConfig) -> PeakModel | None:
        """The bytes per class of ``config`` (its method's nearest configuration if not listed)."""
        document = self.classes_file()
        if not document:
            return None
        entries = [(TrainingConfig.from_json(entry["config"]), entry) for entry in document.get("profiles", [])]
        exact = [entry for listed, entry in entries if listed.key() == config.key()]
        same_method = [entry for listed, entry in entries if listed.method == config.method]
        chosen = (exact or same_method or [None])[0]
        if chosen is None:
            return None
        return per_class_model(measurements_from_json(chosen["few"]), measurements_from_json(chosen["many"]),
                               document["few_classes"], document["many_classes"])

    def find_shipped(self, config: TrainingConfig, *, model_type: str, sizes: Sequence[int],
                     batches: Sequence[int] = PROFILED_BATCHES) -> Profile | None:
        document = self.shipped_file(model_type)
        if not document or document.get("format") != FORMAT:
            return None
        if tuple(document.get("profiled_sizes", ())) != tuple(sorted(sizes)) \
                or tuple(document.get("batches", ())) != tuple(sorted(batches)):
            return None
        if document.get("architecture") != architecture_digest(model_type, min(sizes)):
            return None  # the encoder's code changed since the file was made: not this architecture
        for entry in document.get("profiles", []):
            if TrainingConfig.from_json(entry["config"]).key() == config.key():
                return Profile(config, measurements_from_json(entry["measurements"]), SHIPPED, entry.get("seconds"),
                               document.get("num_classes", REFERENCE_CLASSES), self.per_class(config),
                               entry.get("peak_rss_bytes"),
                               {key: document.get(key) for key in ("device", "torch_version", "medsaga_commit")})
        return None

    def to_profile_on_first_use(self, model_type: str) -> list[str]:
        document = self.shipped_file(model_type) or {}
        return list(document.get("to_profile_on_first_use", []))

    # -- cache -------------------------------------------------------------------------------
    def cache_path(self, key: ProfileKey) -> Path:
        return self.cache / f"{key.model_type}-{key.config.method}-{key.digest()}.json"

    def find_cached(self, key: ProfileKey) -> Profile | None:
        document = _read_json(self.cache_path(key))
        if not document or document.get("key") != key.to_json():
            return None
        return Profile(key.config, measurements_from_json(document["measurements"]), CACHED, document.get("seconds"),
                       key.num_classes, None, document.get("peak_rss_bytes"),
                       {"device": key.device, "torch_version": key.torch_version})

    def save(self, key: ProfileKey, profile: Profile) -> Path | None:
        """Cache ``profile`` under ``key``; the path, or None where the cache folder is not writable
        (a read-only home: the plan still answers, it only measures again next time)."""
        from medsaga.io.atomic import atomic_output

        path = self.cache_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(path) as temporary:
                temporary.write_text(json.dumps({"format": FORMAT, "key": key.to_json(), **profile.to_json()},
                                                indent=1) + "\n", encoding="utf-8")
        except OSError:
            return None
        return path

    # -- time estimates ----------------------------------------------------------------------
    def estimate_seconds(self, config: TrainingConfig, *, model_type: str) -> float | None:
        """How long profiling ``config`` of ``model_type`` took where it was last measured: this
        machine's cached profiles of the model type first, else the shipped file's (the same
        method's configuration nearest, else the median); None when nothing of the type was measured."""
        cached = [_read_json(path) for path in sorted(self.cache.glob(f"{model_type}-*.json"))] \
            if self.cache.is_dir() else []
        cached_entries = [(TrainingConfig.from_json(doc["key"]["config"]), doc.get("seconds"))
                          for doc in cached if doc and "key" in doc]
        shipped = self.shipped_file(model_type) or {}
        shipped_entries = [(TrainingConfig.from_json(entry["config"]), entry.get("seconds"))
                           for entry in shipped.get("profiles", [])]
        for entries in (cached_entries, shipped_entries):
            timed = [(listed, seconds) for listed, seconds in entries if seconds]
            if not timed:
                continue
            for match in (lambda c: c.key() == config.key(),
                          lambda c: c.method == config.method and c.activation_checkpointing
                          == config.activation_checkpointing,
                          lambda c: c.method == config.method):
                found = [seconds for listed, seconds in timed if match(listed)]
                if found:
                    return float(statistics.median(found))
            return float(statistics.median(seconds for _, seconds in timed))
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
