"""One configuration profiled in a process of its own: ``python -m medsaga.plan.worker SPEC.json``.

The spec (:func:`medsaga.plan.measure.profile_in_subprocess` writes it) names a
:class:`~medsaga.plan.measure.TrainingConfig`, a model type, the image sizes and batch sizes to
profile at, the number of classes and the device. The worker profiles each (size, batch), largest
first (the process's peak RSS is then its largest step's), through
:func:`~medsaga.plan.measure.measure_step`, and prints one JSON line per measurement as soon as
it is made (``{"measurement": ..., "seconds": ...}``: the parent can estimate the rest from the
first), then ``{"done": true, "peak_rss_bytes": ...}``. Anything else goes to stderr.

Why a process per configuration: every model built and freed in one long process leaves the C
allocator holding memory; profiling ViT-B's 13 configurations in one process reached 13 GB of
resident memory. A process per configuration peaks at its largest step and gives all of it back.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m medsaga.plan.worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))

    from medsaga.model.registry import get_model_type
    from medsaga.train.allocator import malloc_wanted, tune_malloc

    if malloc_wanted(get_model_type(spec["model_type"]).backbone.tune_cpu_malloc):
        tune_malloc()  # before any tensor, as the benchmark's worker: the RSS is then the tensors'

    import torch

    from medsaga.plan.measure import TrainingConfig, measure_step
    from medsaga.train.allocator import release_free_memory
    from medsaga.train.memory import peak_rss_bytes

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    config = TrainingConfig(**spec["config"])
    device = torch.device(spec["device"])
    # Largest step first, everything freed after each: the process's peak is then its largest
    # step's, not that plus what earlier steps left in the allocator (ViT-B's galore lean: 3.4 GB
    # smallest-first without collecting, against 1.6 GB for its largest step alone).
    points = sorted(((size, batch) for size in spec["sizes"] for batch in spec["batches"]), reverse=True)
    for size, batch in points:
        started = time.perf_counter()
        measurement = measure_step(config, model_type=spec["model_type"], image_size=size, batch_size=batch,
                                   num_classes=spec["num_classes"], device=device)
        print(json.dumps({"measurement": measurement.to_json(), "seconds": time.perf_counter() - started}),
              flush=True)
        gc.collect()  # the model's hooks and wrapped layers form reference cycles
        release_free_memory()
    print(json.dumps({"done": True, "peak_rss_bytes": peak_rss_bytes()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
