"""Make the memory profiles that ``medsaga plan`` ships (``medsaga/plan/profiles/<model type>.json``).

Each configuration a plan row can ask for (every method, lean and ``--speed``, per precision) is
profiled as ``medsaga plan --measure`` profiles it: in a process of its own, two training steps at
batch 1 and 2 at each of the model type's three profiled sizes (registry ``profiled_sizes``), with
random weights, on the CPU (the profiler's allocation events: what a GPU's allocator would count),
with ``REFERENCE_CLASSES`` (3) classes. Each file records the medsaga commit, the torch version,
the CPU and how long every configuration took. Resumable: a configuration already in the file
(same architecture digest, sizes and batches) is kept unless ``--force``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plan_profiles.py --models tiny,litemedsam,vit_b
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plan_profiles.py --classes        # classes.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plan_profiles.py --check vit_b    # shipped vs --measure

``--classes``: the mask decoder's bytes per class, per configuration, from the same steps with 2
and with 14 classes on the tiny ViT (the decoder is the same for every encoder), plus checks of
that on ViT-B and LiteMedSAM (full --speed at their smallest profiled size, batch 1 and 2).

``--check MODEL``: the shipped figures against a fresh profile (``medsaga plan --measure``'s path)
for galore lean, lora lean and full --speed, at 256 and 512 px, batch 4 (the plan's default batch);
prints the relative differences (the test does this on tiny; ViT-B takes ~10 minutes here).

Model types not generated are listed in the file's ``to_profile_on_first_use`` (``--pending``):
``medsaga plan`` profiles them on first use and caches them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from medsaga import __version__  # noqa: E402
from records import commit, cpu_name  # noqa: E402
from medsaga.io.atomic import atomic_output  # noqa: E402
from medsaga.methods.registry import method_names  # noqa: E402
from medsaga.plan.measure import TrainingConfig, profile_in_subprocess  # noqa: E402
from medsaga.plan.profiles import (CLASSES_FILE, FORMAT, PROFILED_BATCHES, REFERENCE_CLASSES, Profile,  # noqa: E402
                                   architecture_digest, measurements_from_json, per_class_model, shipped_folder)
from medsaga.plan.run import PROFILES, default_profiled_sizes, training_config  # noqa: E402

FIRST = ("galore:lean", "lora:lean", "full:speed")  # what the 10 % check reads: made first
FEW, MANY = 2, 14


def configs(precisions: list[str], methods: list[str]) -> list[tuple[str, TrainingConfig]]:
    """Every distinct configuration of the plan's rows, the check's three first."""
    rows = [(f"{method}:{profile}", precision) for precision in precisions for method in methods
            for profile in PROFILES]
    rows.sort(key=lambda row: (row[0] not in FIRST, row[0].startswith("parser")))  # parser's SVD is slow: last
    seen: dict[tuple[Any, ...], tuple[str, TrainingConfig]] = {}
    for label, precision in rows:
        method, profile = label.split(":")
        config, _ = training_config(method, profile, precision=precision)
        seen.setdefault(config.key(), (f"{label}:{precision}", config))
    return list(seen.values())


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def generate(model_type: str, precisions: list[str], methods: list[str], out: Path, force: bool,
             pending: list[str]) -> None:
    sizes = default_profiled_sizes(model_type)
    path = out / f"{model_type}.json"
    architecture = architecture_digest(model_type, min(sizes))
    old = json.loads(path.read_text()) if path.exists() and not force else {}
    keep = (old.get("architecture") == architecture and old.get("profiled_sizes") == list(sizes)
            and old.get("format") == FORMAT)
    kept = {TrainingConfig.from_json(entry["config"]).key(): entry for entry in old.get("profiles", [])} if keep else {}
    document = {
        "format": FORMAT, "model_type": model_type, "architecture": architecture,
        "medsaga_version": __version__, "medsaga_commit": commit(), "torch_version": torch.__version__,
        "device": "cpu", "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "made_by": "benchmarks/plan_profiles.py",
        "profiled_sizes": list(sizes), "batches": list(PROFILED_BATCHES), "num_classes": REFERENCE_CLASSES,
        "classes": (f"measured with {REFERENCE_CLASSES} foreground classes; other counts add the mask decoder's "
                    f"bytes per class from {CLASSES_FILE} (see docs/plan.md)"),
        "bytes": "peak = weights + optimizer state + the step's own allocation peak (CPU profiler's allocation "
                 "events: what torch.cuda.max_memory_allocated would read)",
        "profiles": list(kept.values()),
        "to_profile_on_first_use": pending,
    }
    if keep and old.get("medsaga_commit"):
        document["medsaga_commit"] = old["medsaga_commit"] if kept else document["medsaga_commit"]
    write(path, document)
    started = time.perf_counter()
    for label, config in configs(precisions, methods):
        if config.key() in kept:
            print(f"{model_type} {label}: kept", flush=True)
            continue
        print(f"{model_type} {label}: profiling {config.describe()} ...", flush=True)
        result = profile_in_subprocess(config, model_type=model_type, sizes=sizes, batches=PROFILED_BATCHES,
                                       num_classes=REFERENCE_CLASSES, device="cpu", threads=1)
        profile = Profile(config, result.measurements, "shipped", round(result.seconds, 1), REFERENCE_CLASSES,
                          peak_rss_bytes=result.peak_rss_bytes)
        entry = {"label": label, **profile.to_json(), "step_seconds": [round(s, 1) for s in result.step_seconds]}
        document["profiles"].append(entry)
        document["medsaga_commit"] = commit()
        write(path, document)
        peak = max(m.peak_bytes for m in result.measurements)
        print(f"{model_type} {label}: {result.seconds:.0f} s, largest step peak {peak / 2**30:.2f} GiB, "
              f"worker RSS {(result.peak_rss_bytes or 0) / 2**30:.2f} GiB", flush=True)
    print(f"{model_type}: done in {time.perf_counter() - started:.0f} s -> {path}", flush=True)


def classes(precisions: list[str], methods: list[str], out: Path) -> None:
    """``classes.json``: per-class bytes per configuration (tiny, 2 vs 14 classes) and checks."""
    path = out / CLASSES_FILE
    document = json.loads(path.read_text()) if path.exists() else {}
    document.update({
        "format": FORMAT, "medsaga_commit": commit(), "torch_version": torch.__version__, "device": "cpu",
        "cpu": cpu_name(), "model_type": "tiny", "few_classes": FEW, "many_classes": MANY,
        "note": "the mask decoder's bytes per class (one output token and one hypernetwork MLP per class, their "
                "gradients and optimizer state, one mask's logits per image): the same for every encoder. Fitted "
                "per configuration from the same steps with 2 and with 14 classes on the tiny ViT; 'checks' "
                "compares with ViT-B and LiteMedSAM.",
    })
    document.setdefault("profiles", [])
    done = {TrainingConfig.from_json(entry["config"]).key() for entry in document["profiles"]}
    sizes = default_profiled_sizes("tiny")
    for label, config in configs(precisions, methods):
        if config.key() in done:
            continue
        runs = {count: profile_in_subprocess(config, model_type="tiny", sizes=sizes, batches=PROFILED_BATCHES,
                                             num_classes=count, device="cpu", threads=1) for count in (FEW, MANY)}
        model = per_class_model(runs[FEW].measurements, runs[MANY].measurements, FEW, MANY)
        document["profiles"].append({"label": label, "config": config.to_json(),
                                     "few": [m.to_json() for m in runs[FEW].measurements],
                                     "many": [m.to_json() for m in runs[MANY].measurements],
                                     "per_class_model": model.to_json()})
        write(path, document)
        at = model.predict(512, 4)
        print(f"classes {label}: {at.peak_bytes / 2**20:.2f} MiB per class at 512 px batch 4", flush=True)
    checks = document.get("checks", [])
    checked = {(c["model_type"], c["label"]) for c in checks}
    for model_type in ("vit_b", "litemedsam"):
        label = "full:speed:fp32"
        if (model_type, label) in checked:
            continue
        config, _ = training_config("full", "speed")
        size = min(default_profiled_sizes(model_type))
        runs = {count: profile_in_subprocess(config, model_type=model_type, sizes=[size], batches=PROFILED_BATCHES,
                                             num_classes=count, device="cpu", threads=1) for count in (FEW, MANY)}
        tiny = next(entry for entry in document["profiles"] if entry["label"] == label)
        tiny_model = per_class_model(measurements_from_json(tiny["few"]), measurements_from_json(tiny["many"]), FEW,
                                     MANY)
        rows = []
        for few, many in zip(runs[FEW].measurements, runs[MANY].measurements):
            measured = (many.peak_bytes - few.peak_bytes) / (MANY - FEW)
            predicted = tiny_model.predict(few.image_size, few.batch_size).peak_bytes
            rows.append({"image_size": few.image_size, "batch_size": few.batch_size,
                         "peak_bytes_2_classes": few.peak_bytes, "peak_bytes_14_classes": many.peak_bytes,
                         "measured_bytes_per_class": measured, "tiny_model_bytes_per_class": predicted,
                         "difference_2_to_14_of_peak": (many.peak_bytes - few.peak_bytes) / few.peak_bytes})
            print(f"classes check {model_type} {few.image_size}x{few.batch_size}: 2 -> 14 classes "
                  f"+{(many.peak_bytes - few.peak_bytes) / 2**20:.1f} MiB "
                  f"({100 * (many.peak_bytes - few.peak_bytes) / few.peak_bytes:.1f} % of the peak); "
                  f"per class {measured / 2**20:.3f} MiB measured, {predicted / 2**20:.3f} MiB from tiny", flush=True)
        checks.append({"model_type": model_type, "label": label, "rows": rows})
        document["checks"] = checks
        write(path, document)


def check(model_type: str) -> int:
    """Shipped against re-profiled (``--measure``), galore lean, lora lean and full --speed, 256 and 512 px."""
    from medsaga.plan.profiles import ProfileStore

    store = ProfileStore()
    sizes = default_profiled_sizes(model_type)
    worst = 0.0
    for label in FIRST:
        method, profile = label.split(":")
        config, _ = training_config(method, profile)
        shipped = store.find_shipped(config, model_type=model_type, sizes=sizes)
        if shipped is None:
            print(f"{model_type} {label}: no shipped profile")
            return 1
        started = time.perf_counter()
        fresh = profile_in_subprocess(config, model_type=model_type, sizes=sizes, batches=PROFILED_BATCHES,
                                      num_classes=REFERENCE_CLASSES, device="cpu", threads=1)
        seconds = time.perf_counter() - started
        shipped_model, fresh_model = shipped.peak_model(), Profile(config, fresh.measurements, "measured now").peak_model()
        for size in (256, 512):
            a, b = shipped_model.predict(size, 4).peak_bytes, fresh_model.predict(size, 4).peak_bytes
            worst = max(worst, abs(a - b) / b)
            print(f"{model_type} {label} {size} px batch 4: shipped {a / 2**30:.3f} GiB, re-profiled {b / 2**30:.3f} "
                  f"GiB ({100 * (a - b) / b:+.2f} %); profiled in {seconds:.0f} s", flush=True)
    print(f"largest difference {100 * worst:.2f} %")
    return 0 if worst <= 0.10 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="", help="comma-separated model types to profile")
    parser.add_argument("--precisions", default="fp32", help="fp32 and/or bf16, comma-separated")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--pending", default="", help="what the files list as to be profiled on first use")
    parser.add_argument("--out", type=Path, default=shipped_folder())
    parser.add_argument("--force", action="store_true", help="profile again what the files hold")
    parser.add_argument("--classes", action="store_true", help=f"make {CLASSES_FILE}")
    parser.add_argument("--check", default="", help="compare a model type's shipped profile with a fresh one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    precisions = [p for p in args.precisions.split(",") if p]
    methods = list(method_names()) if args.methods == "all" else args.methods.split(",")
    pending = [p for p in args.pending.split(";") if p]
    for model_type in [m for m in args.models.split(",") if m]:
        generate(model_type, precisions, methods, args.out, args.force, pending)
    if args.classes:
        classes(precisions, methods, args.out)
    if args.check:
        return check(args.check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
