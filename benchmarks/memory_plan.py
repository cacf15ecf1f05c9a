"""Is ``medsaga plan`` right? Predicted against measured device peaks, and what the big models need.

For each configuration (a method in finetune's lean default, or with ``--speed``), the plan is fitted
from its profiled steps (two batch sizes at three small image sizes, as ``medsaga plan`` does), then
the same configuration is measured at larger sizes through the training loop and the two peaks are
compared. Also: the prediction at a size too slow to measure here, and whether it fits a card.

    .venv/bin/python benchmarks/memory_plan.py --model vit_b --configs galore:lean,galore:speed,lora:lean \\
        --check 256x2,512x2,1024x1 --out runs/memory-plan/vit_b.json
    .venv/bin/python benchmarks/memory_plan.py --model vit_h --configs galore:lean --check 1024x1 \\
        --predict 1024x1,1024x2 --out runs/memory-plan/vit_h.json

On a CPU the measured peak is the profiler's count of tensor bytes (what CUDA's
``max_memory_allocated`` reads, :class:`~medsaga.train.memory.StepTensorPeak`); on CUDA it is
``max_memory_allocated`` itself. Prints a Markdown table; writes JSON with every measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from medsaga.plan.measure import measure_step
from medsaga.plan.run import default_profiled_sizes, fit_config, training_config
from records import save_record

GIB = 2**30


def _pairs(text: str) -> list[tuple[int, int]]:
    """``256x2,1024x1`` → ``[(256, 2), (1024, 1)]`` (image size x batch size)."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        size, _, batch = item.partition("x")
        pairs.append((int(size), int(batch or 1)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--configs", default="galore:lean,galore:speed,lora:lean,decoder:lean",
                        help="METHOD:PROFILE, comma-separated (profile: lean or speed)")
    parser.add_argument("--check", default="256x2,512x2,1024x1", help="SIZExBATCH to measure and compare")
    parser.add_argument("--predict", default="", help="SIZExBATCH to predict only")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--record-name", default=None,
                        help="the record's name under benchmarks/results/memory_plan/ (default: MODEL-DEVICE)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = default_profiled_sizes(args.model)
    document = {"command": "python benchmarks/memory_plan.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, "")),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}", "device": str(device), "model": args.model,
        "profiled_sizes": list(sizes), "rows": []}
    print("| config | size | batch | predicted GiB | measured GiB | error |")
    print("|---|---:|---:|---:|---:|---:|")
    for item in args.configs.split(","):
        method, _, profile = item.partition(":")
        config, applied = training_config(method, profile or "lean")
        started = time.perf_counter()
        model, measurements = fit_config(config, model_type=args.model, num_classes=args.num_classes, sizes=sizes,
                                         device=device)
        row = {"method": method, "profile": profile, "applied": list(applied), "model": model.to_json(),
               "profiled": [m.to_json() for m in measurements], "fit_seconds": time.perf_counter() - started,
               "checks": [], "predictions": []}
        label = f"{method} ({profile}{': ' + ', '.join(applied) if applied else ''})"
        for size, batch in _pairs(args.check):
            predicted = model.predict(size, batch)
            started = time.perf_counter()
            measured = measure_step(config, model_type=args.model, image_size=size, batch_size=batch,
                                    num_classes=args.num_classes, device=device)
            error = predicted.peak_bytes / measured.peak_bytes - 1
            row["checks"].append({"image_size": size, "batch_size": batch, "predicted": predicted.to_json(),
                                  "measured": measured.to_json(), "relative_error": error,
                                  "seconds": time.perf_counter() - started})
            print(f"| {label} | {size} | {batch} | {predicted.peak_bytes / GIB:.3f} | "
                  f"{measured.peak_bytes / GIB:.3f} | {100 * error:+.1f} % |", flush=True)
        for size, batch in _pairs(args.predict):
            predicted = model.predict(size, batch)
            row["predictions"].append(predicted.to_json())
            print(f"| {label} | {size} | {batch} | {predicted.peak_bytes / GIB:.3f} | (not measured) | |"
                  f" weights {predicted.model_bytes / GIB:.2f}, optimizer {predicted.optimizer_bytes / GIB:.2f}, "
                  f"gradients etc. {predicted.fixed_bytes / GIB:.2f}, "
                  f"activations {predicted.activation_bytes / GIB:.2f}",
                  flush=True)
        document["rows"].append(row)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    save_record("memory_plan", args.record_name or f"{args.model}-{args.device}", document)


if __name__ == "__main__":
    main()
