"""One profiled training step of a configuration, through the training loop itself.

The step runs :func:`medsaga.train.loop.train` (the code ``finetune`` runs, with the same wrapping:
fast attention, activation checkpointing, the embedding cache, layer-wise GaLore) for two steps on
random slices; the second is profiled (the first made the optimizer state). Memory does not depend
on the weights' or the pixels' values, so a randomly initialised model of the same architecture
and random slices give the bytes of the real run.

On a CPU the in-step bytes come from the profiler's allocation events
(:class:`~medsaga.train.memory.StepTensorPeak`); on CUDA from ``max_memory_allocated``. The
embedding cache lives in host RAM (batches are moved to the device per step), so it is not part of
the device's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsaga.plan.extrapolate import StepMeasurement

PROFILED_STEPS = 2  # the first makes the optimizer state, the second is measured


@dataclass(frozen=True)
class TrainingConfig:
    """What decides a step's memory besides batch and image size.

    Attributes:
        method: the ``--method``.
        method_options: its options, the memory profile's included.
        activation_checkpointing: recompute encoder blocks in backward.
        cache: train on the embedding cache (methods with a cacheable frozen part).
        precision: ``fp32`` or ``bf16``.
    """

    method: str
    method_options: dict[str, Any] = field(default_factory=dict)
    activation_checkpointing: bool = False
    cache: bool = False
    precision: str = "fp32"

    def key(self) -> tuple[Any, ...]:
        """Equal for configurations that allocate the same (measured once)."""
        return (self.method, tuple(sorted(self.method_options.items())), self.activation_checkpointing,
                self.cache, self.precision)

    def to_json(self) -> dict[str, Any]:
        """As stored in a profile file (options sorted, lists as lists)."""
        record = asdict(self)
        record["method_options"] = {key: list(value) if isinstance(value, tuple) else value
                                    for key, value in sorted(self.method_options.items())}
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TrainingConfig:
        options = {key: tuple(value) if isinstance(value, list) else value
                   for key, value in record.get("method_options", {}).items()}
        return cls(record["method"], options, bool(record.get("activation_checkpointing", False)),
                   bool(record.get("cache", False)), record.get("precision", "fp32"))

    def describe(self) -> str:
        """``galore (layerwise=true, checkpointing, fp32)`` for progress lines."""
        parts = [f"{key}={_text(value)}" for key, value in sorted(self.method_options.items())]
        parts += ["checkpointing"] * self.activation_checkpointing + ["cache"] * self.cache + [self.precision]
        return f"{self.method} ({', '.join(parts)})"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "+".join(map(str, value))
    return str(value)


def random_slices(count: int, image_size: int, num_classes: int, seed: int = 0) -> list[Any]:
    """``count`` random slices ``(3, S, S)`` in [0, 1] with labels in ``0..num_classes``, as one case."""
    from medsaga.train.data import CaseStack

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, num_classes + 1, (count, image_size, image_size), generator=generator)
    return [CaseStack("random", images, labels)]


def measure_step(config: TrainingConfig, *, model_type: str, image_size: int, batch_size: int,
                 num_classes: int, device: torch.device, seed: int = 0) -> StepMeasurement:
    """Build ``model_type`` at ``image_size`` with random weights, prepare the method, and profile
    its second training step at ``batch_size`` on ``device``."""
    from medsaga.methods import create_method
    from medsaga.model.load import load_segmenter
    from medsaga.train.augment import AugmentSettings, Augmenter
    from medsaga.train.data import TrainingSlices
    from medsaga.train.loop import LoopSettings, SilentObserver, train

    torch.manual_seed(seed)
    method = create_method(config.method, config.method_options)
    model = load_segmenter(model_type, num_classes=num_classes, image_size=image_size, random_init=True).model
    method.prepare(model)
    data = TrainingSlices(random_slices(PROFILED_STEPS * batch_size, image_size, num_classes, seed), image_size)
    settings = LoopSettings(steps=PROFILED_STEPS, batch_size=batch_size, lr=method.default_lr,
                            weight_decay=method.default_weight_decay, seed=seed, precision=config.precision,
                            activation_checkpointing=config.activation_checkpointing,
                            cache_views=1 if config.cache else 0, tensor_peak_step=PROFILED_STEPS - 1)
    # train() writes its metrics into the run folder: a scratch one.
    with tempfile.TemporaryDirectory(prefix="medsaga-plan-") as run_dir:
        result = train(model, method, data, settings, Path(run_dir), SilentObserver(),
                       Augmenter(AugmentSettings(enabled=False), seed), device=device, save_state=False)
    peak = result.tensor_peak or {}
    if not peak.get("measured"):
        raise RuntimeError("this torch build does not report allocations: the step's memory cannot be measured")
    optimizer = result.memory.optimizer_state
    if device.type == "cuda":  # max_memory_allocated above the model: the optimizer state is in it
        in_step = int(peak["bytes"]) - optimizer
    else:
        in_step = int(peak["in_step_bytes"])
    return StepMeasurement(image_size, batch_size, result.memory.frozen_parameters + result.memory.trainable_parameters,
                           optimizer, in_step)


@dataclass
class SubprocessProfile:
    """What one worker process (:mod:`medsaga.plan.worker`) measured for one configuration.

    Attributes:
        measurements: one per (size, batch), smallest first (measured largest first).
        seconds: wall time of the whole worker (start, imports, every step).
        step_seconds: wall time of each measurement (model build included), in order.
        peak_rss_bytes: the worker's peak resident memory.
    """

    measurements: list[StepMeasurement]
    seconds: float
    step_seconds: list[float]
    peak_rss_bytes: int | None


def profile_in_subprocess(config: TrainingConfig, *, model_type: str, sizes: Sequence[int],
                          batches: Sequence[int], num_classes: int, device: torch.device | str,
                          threads: int | None = None,
                          on_measurement: Callable[[StepMeasurement, float], None] | None = None) -> SubprocessProfile:
    """Profile ``config`` at every ``sizes`` × ``batches`` in a fresh process (:mod:`medsaga.plan.worker`):
    this process's memory never holds a model. ``on_measurement(measurement, seconds)`` is called as each
    step's figures arrive (largest size and batch first).

    Raises:
        RuntimeError: the worker failed (its last error line), or was killed (out of memory?).
    """
    spec = {"config": config.to_json(), "model_type": model_type, "sizes": sorted(sizes), "batches": sorted(batches),
            "num_classes": num_classes, "device": str(device), "threads": threads}
    started = time.perf_counter()
    measurements: list[StepMeasurement] = []
    step_seconds: list[float] = []
    peak_rss = None
    with tempfile.TemporaryDirectory(prefix="medsaga-plan-") as scratch:
        spec_path = Path(scratch) / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        stderr_path = Path(scratch) / "stderr.txt"
        # Through the benchmark's launcher: the worker's peak RSS is then its own, not this process's.
        command = [sys.executable, "-m", "medsaga.benchmark.launch", sys.executable, "-m", "medsaga.plan.worker",
                   str(spec_path)]
        root = str(Path(__file__).resolve().parents[2])  # this very medsaga, installed or not
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        with open(stderr_path, "w+", encoding="utf-8") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    if not line.startswith("{"):
                        continue
                    record = json.loads(line)
                    if "measurement" in record:
                        fields = {key: value for key, value in record["measurement"].items() if key != "peak_bytes"}
                        measurement = StepMeasurement(**fields)
                        measurements.append(measurement)
                        step_seconds.append(float(record["seconds"]))
                        if on_measurement is not None:
                            on_measurement(measurement, float(record["seconds"]))
                    elif record.get("done"):
                        peak_rss = record.get("peak_rss_bytes")
                status = process.wait()
            finally:
                if process.poll() is None:
                    process.terminate()
                    process.wait()
            stderr.seek(0)
            errors = stderr.read()
    if status != 0:
        if status > 128:
            reason = f"killed by signal {status - 128}" + (" (out of memory?)" if status - 128 == 9 else "")
        else:
            reason = next((line.strip() for line in reversed(errors.splitlines()) if line.strip()),
                          f"exit status {status}")
        raise RuntimeError(f"profiling {config.describe()} on {model_type} failed: {reason}")
    order = sorted(range(len(measurements)), key=lambda i: (measurements[i].image_size, measurements[i].batch_size))
    return SubprocessProfile([measurements[i] for i in order], time.perf_counter() - started,
                             [step_seconds[i] for i in order], peak_rss)
