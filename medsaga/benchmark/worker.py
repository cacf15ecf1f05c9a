"""One benchmark entry, measured in a process of its own: ``python -m medsaga.benchmark.worker SPEC.json``.

Prints exactly one JSON line on stdout (the record, :data:`RECORD_FIELDS`); anything else goes to
stderr. A process per entry keeps every peak clean: CUDA's allocator statistics, the CPU's peak
RSS, and whatever a method leaves behind (hooks, wrapped layers) cannot leak into the next one.
The parent starts it through :mod:`medsaga.benchmark.launch` (see there why).

What it does, through the same code as ``medsaga finetune``:

1. builds SAM with random weights (memory and speed do not depend on the weights' values) and
   lets the method prepare it (timed apart: SAM-PARSER's SVD takes minutes on vit_b);
2. trains ``1 + steps`` optimizer steps with :func:`medsaga.train.loop.train` (augmentation on,
   as in finetune). The first step is a warm-up and is not timed: it allocates the optimizer
   state and, for GaLore, computes the first projections (refreshed every 200 steps after that);
   the peak memory and the memory breakdown cover every step, warm-up included. On a CPU one more
   step follows, untimed and profiled, for the tensor peak (what CUDA's ``max_memory_allocated``
   would read; :class:`medsaga.train.memory.StepTensorPeak`). With the cache (a decoder or
   adapter entry, unless ``@nocache``) the loop first builds the embedding cache (timed apart: ``embedding_cache.build_seconds``) and
   every step, warm-up and timed, trains on it;
3. times inference on the same slices and batch size: ``model.eval()``, ``torch.inference_mode()``,
   the full forward pass (encoder and decoder), the entry's precision; one warm-up batch, then
   ``steps`` timed batches, each run with the encoder's exact fast attention (as ``medsaga
   predict``) and with SAM's own; then the encoder's FLOPs, its achieved GFLOP/s and the fp32 and
   bf16 matmul peaks of this process (see :func:`_time_inference`).

Exit status 0 with ``"status": "ok"``, or ``"out_of_memory"`` when the device ran out of memory
(a result, not a failure: that entry does not fit); any other error is a traceback and status 1.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WARMUP_STEPS = 1

# Every key of a worker's record. Values that an out-of-memory entry never reached are null.
RECORD_FIELDS = (
    "label", "method", "options", "encoder_frozen", "precision", "activation_checkpointing", "training_attention",
    "activation_checkpointing_applied", "status", "error", "device", "model", "image_size", "batch_size",
    "warmup_steps", "timed_steps", "trainable_parameters", "total_parameters", "peak_memory", "tensor_peak", "memory",
    "train_slices_per_second", "train_step_seconds", "inference_slices_per_second", "inference_batch_seconds",
    "final_loss", "build_seconds", "prepare_seconds", "worker_seconds", "torch_version", "torch_threads",
    # Inference with SAM's own encoder attention (inference_* above: the exact fast one, as predict
    # runs it), the encoder's counted FLOPs and achieved rate, and the matmul peaks of this process.
    "inference_sam_slices_per_second", "inference_sam_batch_seconds", "encoder_flops_per_slice",
    "encoder_gflops_per_second", "encoder_sam_gflops_per_second", "matmul_peak_gflops_per_second",
    "encoder_fraction_of_peak",
    "embedding_cache",  # null unless the entry trains on the cache: then its views, bytes, build_seconds
    # finetune's memory profile the entry runs (lean: its default; speed: --speed) and the lean settings in force.
    "memory_profile", "lean_settings",
)


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker measures (written by the parent as JSON).

    Attributes:
        label: the entry as the user reads it (``galore@ckpt:layerwise=true``).
        method, options: passed to :func:`medsaga.methods.create_method`.
        precision: ``fp32`` or ``bf16`` (autocast).
        activation_checkpointing: recompute encoder blocks in backward.
        model, image_size, num_classes: the SAM to build (random weights).
        batch_size: slices per training step and per inference batch.
        steps: timed training steps and timed inference batches (each after one warm-up).
        device: ``cpu`` or ``cuda``.
        seed: model initialisation, batch order, augmentation.
        slices: the safetensors file of :mod:`medsaga.benchmark.slices`.
        threads: CPU threads for torch (``None``: torch's default, one per core).
        cache_views: 0, or train on the embedding cache with this many fixed views per slice
            (built before the warm-up step and timed apart: the timed steps read the cache).
        fast_attention: train with the exact no-padding attention (``finetune``'s default);
            ``False``: SAM's padded windows. Inference is timed both ways regardless.
        memory_profile, lean_settings: recorded only: the profile the parent resolved the
            options, checkpointing and cache above from (:func:`medsaga.benchmark.run.entry_config`).
    """

    label: str
    method: str
    options: dict[str, Any]
    precision: str
    activation_checkpointing: bool
    model: str
    image_size: int
    num_classes: int
    batch_size: int
    steps: int
    device: str
    seed: int
    slices: str
    threads: int | None = None
    cache_views: int = 0
    fast_attention: bool = True
    memory_profile: str = "lean"
    lean_settings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure(spec: WorkerSpec) -> dict[str, Any]:
    """Build, prepare, train and time one entry (module docstring); returns its record."""
    import torch

    from medsaga.methods import count_parameters, create_method
    from medsaga.model.load import load_segmenter

    started = time.perf_counter()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    method = create_method(spec.method, spec.options)
    record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    record.update(label=spec.label, method=spec.method, options=method.options.to_json(),
                  encoder_frozen=method.encoder_frozen, precision=spec.precision,
                  activation_checkpointing=spec.activation_checkpointing,
                  training_attention="fast" if spec.fast_attention else "sam",
                  activation_checkpointing_applied=spec.activation_checkpointing and not method.encoder_frozen,
                  status="ok", device=str(device), model=spec.model, image_size=spec.image_size,
                  batch_size=spec.batch_size, warmup_steps=WARMUP_STEPS, timed_steps=spec.steps,
                  torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                  memory_profile=spec.memory_profile, lean_settings=list(spec.lean_settings))

    torch.manual_seed(spec.seed)
    model = load_segmenter(spec.model, num_classes=spec.num_classes, image_size=spec.image_size,
                           random_init=True).model
    # Counted before prepare: SAM-PARSER turns the weights it decomposes into buffers (as finetune).
    record["total_parameters"] = count_parameters(model)[1]
    record["build_seconds"] = time.perf_counter() - started
    prepare_started = time.perf_counter()
    method.prepare(model)
    record["prepare_seconds"] = time.perf_counter() - prepare_started
    record["trainable_parameters"] = count_parameters(model)[0]

    try:
        _train_and_time(spec, model, method, device, record)
    except torch.OutOfMemoryError as error:
        record.update(status="out_of_memory", error=str(error).splitlines()[0])
    record["worker_seconds"] = time.perf_counter() - started
    return record


def _train_and_time(spec: WorkerSpec, model: Any, method: Any, device: Any, record: dict[str, Any]) -> None:
    """Fill the record's training and inference figures (see the module docstring)."""
    from medsaga.benchmark.slices import load_slices
    from medsaga.train.augment import AugmentSettings, Augmenter
    from medsaga.train.data import TrainingSlices
    from medsaga.train.loop import LoopSettings, train

    data = TrainingSlices(load_slices(Path(spec.slices)), spec.image_size)
    profiled = 1 if device.type != "cuda" else 0  # CUDA's peak counts tensor bytes already
    settings = LoopSettings(steps=WARMUP_STEPS + spec.steps + profiled, batch_size=spec.batch_size, lr=method.default_lr,
                            weight_decay=method.default_weight_decay, seed=spec.seed, precision=spec.precision,
                            activation_checkpointing=spec.activation_checkpointing, cache_views=spec.cache_views,
                            fast_attention=spec.fast_attention, tensor_peak_step=WARMUP_STEPS + spec.steps)
    observer = _StepTimes(spec.batch_size)
    # train() writes its metrics into the run folder: a scratch one.
    with tempfile.TemporaryDirectory(prefix="medsaga-benchmark-run-") as run_dir:
        result = train(model, method, data, settings, Path(run_dir), observer,
                       Augmenter(AugmentSettings(), spec.seed), device=device, save_state=False)
    timed = observer.seconds[WARMUP_STEPS:WARMUP_STEPS + spec.steps]
    record.update(peak_memory=result.peak_memory, memory=result.memory.to_json(), tensor_peak=result.tensor_peak,
                  train_step_seconds=timed,
                  train_slices_per_second=spec.batch_size * len(timed) / max(sum(timed), 1e-9),
                  final_loss=result.final_loss, embedding_cache=result.embedding_cache)
    record.update(_time_inference(model, data, spec, device))


class _StepTimes:
    """A :class:`~medsaga.train.loop.TrainingObserver` that keeps each step's duration."""

    def __init__(self, slices_per_step: int) -> None:
        self.seconds: list[float] = []
        self._slices_per_step = slices_per_step

    def on_start(self, total_steps: int, first_step: int, steps_per_epoch: float) -> None:
        self.seconds.clear()

    def on_step(self, step: int, loss: float, lr: float, slices_per_second: float) -> None:
        # The loop reports the slices/s of the step just done (slices per step / its seconds).
        self.seconds.append(self._slices_per_step / max(slices_per_second, 1e-12))

    def on_validation(self, epoch: int, mean_dice: float) -> None:
        pass


def _time_inference(model: Any, data: Any, spec: WorkerSpec, device: Any) -> dict[str, Any]:
    """The record's inference figures: each timed batch ``(B, 3, S, S)``, after one warm-up batch,
    with the encoder's exact fast attention (:mod:`medsaga.model.fast_attention`, what ``medsaga
    predict`` runs) and with SAM's own, alternately on the same images, so both see the same load.

    Also: the encoder's FLOPs per slice (counted on the fast encoder: the work the output needs,
    none on window padding), its achieved GFLOP/s (those FLOPs over the encoder's own time inside
    the timed batches, taken by forward hooks) and, measured right after in this same process,
    the fp32 and bf16 matmul peaks (:func:`medsaga.benchmark.flops.measure_matmul_peaks`) and the
    fast encoder's rate as a share of each. The encoder is left as it came (fast or SAM's).
    """
    import torch

    from medsaga.benchmark.flops import count_flops, fractions_of_peak, measure_matmul_peaks, synchronize
    from medsaga.model.fast_attention import is_sped_up, restore_encoder, speed_up_encoder

    model.eval()
    encoder = model.image_encoder
    came_fast = is_sped_up(encoder)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if spec.precision == "bf16"
                else contextlib.nullcontext())
    switches = {"fast": speed_up_encoder, "sam": restore_encoder}
    batch_seconds: dict[str, list[float]] = {name: [] for name in switches}
    encoder_seconds: dict[str, list[float]] = {name: [] for name in switches}
    timer = _ForwardTimer(encoder, device)
    try:
        with torch.inference_mode(), autocast:
            for batch in range(WARMUP_STEPS + spec.steps):
                positions = [(batch * spec.batch_size + j) % len(data) for j in range(spec.batch_size)]
                images = data.batch(positions)[0].to(device)
                for name, switch in switches.items():
                    switch(encoder)
                    synchronize(device)
                    started = time.perf_counter()
                    model(images)
                    synchronize(device)
                    if batch >= WARMUP_STEPS:
                        batch_seconds[name].append(time.perf_counter() - started)
                        encoder_seconds[name].append(timer.seconds)
        speed_up_encoder(encoder)
        with torch.inference_mode():  # FLOPs do not depend on the dtype: counted in fp32
            flops = count_flops(encoder, model.normalize(images[:1]))
    finally:
        timer.remove()
        (speed_up_encoder if came_fast else restore_encoder)(encoder)
    peaks = measure_matmul_peaks(device)

    def per_second(amount: float, seconds: list[float]) -> float:
        return amount * len(seconds) / max(sum(seconds), 1e-9)

    encoder_rate = per_second(flops * spec.batch_size / 1e9, encoder_seconds["fast"])
    return {
        "inference_batch_seconds": batch_seconds["fast"],
        "inference_slices_per_second": per_second(spec.batch_size, batch_seconds["fast"]),
        "inference_sam_batch_seconds": batch_seconds["sam"],
        "inference_sam_slices_per_second": per_second(spec.batch_size, batch_seconds["sam"]),
        "encoder_flops_per_slice": flops,
        "encoder_gflops_per_second": encoder_rate,
        "encoder_sam_gflops_per_second": per_second(flops * spec.batch_size / 1e9, encoder_seconds["sam"]),
        "matmul_peak_gflops_per_second": peaks,
        "encoder_fraction_of_peak": fractions_of_peak(encoder_rate, peaks),
    }


class _ForwardTimer:
    """Wall time of a module's latest forward, from forward hooks (synchronised on CUDA)."""

    def __init__(self, module: Any, device: Any) -> None:
        from medsaga.benchmark.flops import synchronize

        self.seconds = 0.0
        self._started = 0.0

        def before(*_: Any) -> None:
            synchronize(device)
            self._started = time.perf_counter()

        def after(*_: Any) -> None:
            synchronize(device)
            self.seconds = time.perf_counter() - self._started

        self._handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m medsaga.benchmark.worker SPEC.json", file=sys.stderr)
        return 2
    from medsaga.model.registry import get_model_type
    from medsaga.train.allocator import malloc_wanted, tune_malloc

    spec = WorkerSpec(**json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    if malloc_wanted(get_model_type(spec.model).backbone.tune_cpu_malloc):
        tune_malloc()  # before any tensor: the peak RSS is then the tensors', not glibc's kept heap
    record = measure(spec)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
