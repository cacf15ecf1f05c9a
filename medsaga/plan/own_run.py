"""The memory plan of one ``finetune`` run's own settings: the :data:`~medsaga.train.memory_plan.MemoryPlanner`
``medsaga finetune`` hands the library (:mod:`medsaga.train` does not import :mod:`medsaga.plan`,
which imports it)."""

from __future__ import annotations

from typing import Any

from medsaga.errors import InputError
from medsaga.train.memory_plan import MemoryPlan, MemoryPlanRequest


def plan_own_run(request: MemoryPlanRequest) -> MemoryPlan:
    """The predicted GPU peak of the run ``request`` describes, printed before any long work;
    an :class:`InputError` when ``--gpu-memory`` is given and the predicted peak does not fit."""
    from medsaga.plan.run import config_of, default_profiled_sizes, plan_config

    config = config_of(request.method, request.profile, precision=request.precision,
                       cache_allowed=request.cache_allowed)
    sizes = default_profiled_sizes(request.model_type)
    # The stored profile (shipped, or cached from an earlier run here); profiled now only if neither.
    fitted, profile = plan_config(config, model_type=request.model_type, num_classes=request.num_classes,
                                  sizes=sizes, device=request.device)
    # Each GPU holds its share of the global batch.
    prediction = fitted.predict(request.image_size, request.batch_size // request.world_size)
    gib = 2**30
    text = (f"predicted GPU peak {prediction.peak_bytes / gib:.2f} GiB at batch {request.batch_size}, "
            f"{request.image_size} px (weights {prediction.model_bytes / gib:.2f}, optimizer "
            f"{prediction.optimizer_bytes / gib:.2f}, gradients etc. {prediction.fixed_bytes / gib:.2f}, "
            f"activations {prediction.activation_bytes / gib:.2f})")
    record: dict[str, Any] = {"prediction": prediction.to_json(), "gpu_memory_bytes": request.gpu_memory,
                              "fits": None, "largest_batch": None, "profiled_sizes": list(sizes),
                              "source": profile.source}
    if request.gpu_memory is not None:
        largest = fitted.largest_batch(request.image_size, request.gpu_memory)
        record.update(fits=prediction.peak_bytes <= request.gpu_memory, largest_batch=largest)
        if not record["fits"]:
            advice = (f"--batch-size {largest * request.world_size} fits" if largest
                      else "not even batch 1 fits: a smaller --image-size, or another method (medsaga plan compares them)")
            raise InputError(f"--gpu-memory {request.gpu_memory_text}: {text} does not fit; {advice}")
        text += f"; fits in {request.gpu_memory_text} (largest batch {largest})"
    return MemoryPlan(record, f"{text}, from steps profiled at {', '.join(map(str, sizes))} px ({profile.source})")
