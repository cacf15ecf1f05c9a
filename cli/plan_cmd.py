"""``medsaga plan DATA --model M --image-size S --gpu-memory 12GiB``: will each method fit, before training."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from cli.console import stderr_console, stdout_console
from cli.options import ARCHITECTURE_DEFAULT, DEFAULT_DEVICE, Architecture, BatchSize, Command, Device, ImageSize, \
    library_default
from medsaga.errors import InputError

SHORT_HELP = "Will each method fit in GPU memory? Predicted before training."


def register(app: typer.Typer) -> None:
    app.command("plan", cls=Command, short_help=SHORT_HELP)(plan)


def plan(
    data_dir: Path = typer.Argument(..., help="Dataset folder (as for finetune): its classes size the mask decoder."),
    model: Architecture = ARCHITECTURE_DEFAULT,
    image_size: ImageSize = None,
    batch_size: BatchSize = library_default("medsaga.train.options", "FinetuneOptions.batch_size"),
    gpu_memory: str | None = typer.Option(None, "--gpu-memory", help="The GPU's memory, e.g. 12GiB, 8GB, 24000MiB: "
                                                                     "says what fits and the largest batch that does."),
    methods: str = typer.Option("all", "--methods", "-m", help="Methods, comma-separated, or all."),
    precision: str = typer.Option("fp32", "--precision",
                                  help="fp32 or bf16 (finetune's auto is bf16 on a recent GPU)."),
    device: Device = DEFAULT_DEVICE,
    profile_sizes: str | None = typer.Option(None, "--profile-sizes", help="Three image sizes to profile at, "
                                                                           "comma-separated (default: the model "
                                                                           "type's: {profiled_sizes})."),
    measure: bool = typer.Option(False, "--measure", help="Profile every configuration again on --device "
                                                           "(minutes; a GPU's allocator counts a little "
                                                           "differently from the CPU profiler the shipped "
                                                           "profiles come from) and cache the result."),
    out: Path | None = typer.Option(None, "--out", help="Also write the plan as JSON to this file."),
) -> None:
    """The peak GPU memory of every method, lean (finetune's default) and with --speed, from stored
    profiles: a few small training steps measured once per model type and shipped in the package,
    or measured on this machine before (cached); anything missing is profiled now, each
    configuration in its own process, and cached.

    Parameters, optimizer state and gradients are exact counts; activations were measured at two
    batch sizes and three small image sizes and are extrapolated (linear in the batch and in the
    token count). Prints each peak with its breakdown, where it comes from, whether it fits in
    --gpu-memory, and the largest batch size that does. The batch size to plan for is finetune's
    by default; --device is where the small profiled steps run (on a CPU the profiler counts the
    bytes a GPU's allocator would).
    """
    from medsaga.data.dataset import discover_dataset
    from medsaga.device import resolve_device
    from medsaga.methods.registry import method_names
    from medsaga.model.build import check_image_size, check_model_type, default_image_size
    from medsaga.plan.run import default_profiled_sizes, gpu_memory_bytes, plan as run_plan
    from medsaga.train.data import label_mapping

    check_model_type(model)
    size = check_image_size(image_size if image_size is not None else default_image_size(model), "--image-size")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if precision not in ("fp32", "bf16"):
        raise InputError(f"--precision must be fp32 or bf16, got {precision!r}")
    memory = gpu_memory_bytes(gpu_memory)
    known = method_names()
    chosen = known if methods.strip() == "all" else [name.strip() for name in methods.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise InputError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    sizes = default_profiled_sizes(model)
    if profile_sizes is not None:
        try:
            sizes = tuple(check_image_size(int(text), "--profile-sizes") for text in profile_sizes.split(","))
        except ValueError:
            raise InputError(f"--profile-sizes takes three sizes like 224,336,448, got {profile_sizes!r}") from None
        if len(set(sizes)) != 3:
            raise InputError(f"--profile-sizes takes three different sizes, got {profile_sizes!r}")
    mapping = label_mapping(discover_dataset(data_dir))
    torch_device = resolve_device(device)

    from medsaga.plan.profiles import ProfileStore

    console = stderr_console()
    started = time.perf_counter()
    store = ProfileStore()
    rows = run_plan(chosen, model_type=model, num_classes=mapping.num_classes, image_size=size, batch_size=batch_size,
                    memory_bytes=memory, device=torch_device, sizes=sizes, precision=precision, measure=measure,
                    store=store, on_progress=lambda what: console.print(what, markup=False))
    shipped = store.shipped_file(model) or {}
    document = {"model": model, "image_size": size, "batch_size": batch_size, "gpu_memory_bytes": memory,
                "precision": precision, "device": str(torch_device), "profiled_sizes": list(sizes),
                "num_classes": mapping.num_classes, "seconds": round(time.perf_counter() - started, 1),
                "shipped": {key: shipped.get(key) for key in ("medsaga_commit", "torch_version", "device", "cpu",
                                                              "num_classes", "created")} if shipped else None,
                "cache": str(store.cache), "rows": [row.to_json() for row in rows]}
    _print_plan(document, gpu_memory)
    if out is not None:
        from medsaga.io.atomic import atomic_output

        with atomic_output(out) as temporary:
            temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


SHORT = {"activation_checkpointing": "checkpointing"}  # the table's memory column


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def _print_plan(document: dict[str, Any], memory_text: str | None) -> None:
    from rich.table import Table

    title = (f"medsaga plan: {document['model']} at {document['image_size']} px, batch {document['batch_size']}, "
             f"{document['precision']}" + (f", GPU {memory_text}" if memory_text else ""))
    table = Table(title=title)
    for column in ("method", "memory", "peak GiB", "weights", "optimizer", "gradients etc.", "activations", "source"):
        table.add_column(column, justify="left" if column in ("method", "memory", "source") else "right")
    if memory_text:
        table.add_column("fits")
        table.add_column("largest batch", justify="right")
    for row in document["rows"]:
        prediction = row["prediction"]
        applied = [SHORT.get(setting, setting) for setting in row["applied"]]
        settings = row["profile"] + (f" ({', '.join(applied)})" if applied else "")
        cells = [row["method"], settings, _gib(prediction["peak_bytes"]), _gib(prediction["model_bytes"]),
                 _gib(prediction["optimizer_bytes"]), _gib(prediction["fixed_bytes"]),
                 _gib(prediction["activation_bytes"]), row["source"]]
        if memory_text:
            cells += ["yes" if row["fits"] else "NO", str(row["largest_batch"])]
        table.add_row(*cells)
    console = stdout_console()
    console.print(table)
    sources = {row["source"] for row in document["rows"]}
    notes = []
    shipped = document.get("shipped")
    if "shipped" in sources and shipped:
        commit = str(shipped["medsaga_commit"])
        commit = commit[:12] + (" + changes" if "uncommitted" in commit else "")
        classes = document["num_classes"]
        notes.append(f"shipped: profiled with {shipped['num_classes']} classes on a CPU ({shipped['cpu']}) by "
                     f"benchmarks/plan_profiles.py at medsaga {commit}, torch {shipped['torch_version']}"
                     + (f"; {classes} classes here: the mask decoder's bytes for "
                        f"{classes - shipped['num_classes']:+d} classes added" if classes != shipped["num_classes"]
                        else ""))
    if "cached" in sources:
        notes.append(f"cached: profiled on this machine before ({document['cache']})")
    if "measured now" in sources:
        notes.append(f"measured now: profiled in this run on {document['device']}, and cached")
    console.print("Predicted peak of torch.cuda.max_memory_allocated during a training step (weights + optimizer "
                  "state + what a step allocates: gradients and temporaries, and activations for the batch). "
                  "The CUDA context and the allocator's caching add some hundreds of MiB on a real GPU. "
                  + " ".join(f"{note}." for note in notes)
                  + f" Answered in {document['seconds']:.1f} s; --measure profiles again on this device.",
                  markup=False)
