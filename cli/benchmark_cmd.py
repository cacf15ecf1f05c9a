"""``medsaga benchmark DATA_DIR --methods all --out DIR``: every method's memory and speed, side by side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from cli.console import stderr_console, stdout_console
from cli.options import ARCHITECTURE_DEFAULT, DEFAULT_DEVICE, Architecture, BatchSize, Command, Device, Force, \
    Seed, library_default
from medsaga.errors import InputError

# No square brackets: Typer renders help through rich, which would read "[@FLAG]" as markup.
METHODS_HELP = """Entries to measure, comma-separated. An entry is a method name, then optional flags,
then optional options after a colon, KEY=VALUE separated by commas (the method's own, as in
finetune -o; a list joins its items with '+'). Each entry runs as finetune runs its method by
default (lean: layer-wise GaLore, activation checkpointing where the encoder trains, the embedding
cache for decoder and adapter, its build timed apart); flags: @speed: as finetune --speed (the fast
configuration); @bf16: bf16 autocast; @ckpt: force activation checkpointing; @nocache: no embedding
cache (as finetune --cache-embeddings off); @cache: the cache (decoder, adapter: on anyway);
@padded: SAM's own padded-window attention, as finetune --attention sam. 'all' is every method.
Examples: all; all,all@speed; galore,galore@speed,full@speed; decoder@nocache,decoder;
lora,lora@padded; galore@speed:rank=4,decoder. Plain
'full', the reference for the ratios, is added if absent."""


SHORT_HELP = "Memory and speed of the tuning methods, side by side."


def register(app: typer.Typer) -> None:
    app.command("benchmark", cls=Command, short_help=SHORT_HELP)(benchmark)


def benchmark(
    data_dir: Path = typer.Argument(..., help="Dataset folder (as for finetune); a couple of its labelled cases "
                                              "give the slices."),
    out: Path | None = typer.Option(None, "--out", help="Folder for benchmark.json, benchmark.md and benchmark.png."),
    model: Architecture = ARCHITECTURE_DEFAULT,
    image_size: int = typer.Option(library_default("medsaga.benchmark.run", "BenchmarkOptions.image_size"),
                                   "--image-size", help="Model input size, a multiple of 16 (256, 512, 1024)."),
    batch_size: BatchSize = library_default("medsaga.benchmark.run", "BenchmarkOptions.batch_size"),
    methods: str = typer.Option("all", "--methods", "-m", help=METHODS_HELP),
    steps: int = typer.Option(5, "--steps", help="Timed training steps (and inference batches) per entry, after "
                                                 "one warm-up step."),
    device: Device = DEFAULT_DEVICE,
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast for every entry (as @bf16 on each)."),
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing",
                                                  help="Recompute encoder blocks in backward for every entry "
                                                       "(as @ckpt on each)."),
    seed: Seed = 0,
    threads: int | None = typer.Option(None, "--threads", help="CPU threads per worker (default: torch's, one per "
                                                               "core). On a busy shared CPU, 1 avoids thread "
                                                               "contention."),
    force: Force = False,
) -> None:
    """Peak memory, memory breakdown and throughput of tuning methods, each in a fresh process.

    Every entry trains 1 warm-up + STEPS timed steps on the same real slices (two cases of DATA_DIR,
    read as finetune reads them) with SAM's random weights (memory and speed do not depend on the
    weights' values), then times inference. Reports trainable parameters; peak memory (CUDA max
    allocated, or CPU peak RSS above the loaded model); the device-independent breakdown (frozen and
    trainable parameters, gradients, optimizer state, saved activations); training and inference
    slices/s; and every figure's ratio to plain full fine-tuning. Writes a table (also as Markdown),
    JSON and a bar-chart PNG. Exit status 1 if an entry failed (the outputs are still written).
    """
    from medsaga.benchmark.run import BenchmarkOptions, run_benchmark

    if out is None:
        raise InputError("give --out DIR, the folder for the benchmark's table, JSON and chart")
    options = BenchmarkOptions(data_dir=data_dir, out=out, model=model, image_size=image_size, batch_size=batch_size,
                               methods=methods, steps=steps, device=device, bf16=bf16,
                               activation_checkpointing=activation_checkpointing, seed=seed, threads=threads,
                               force=force)
    reporter = _Reporter()
    try:
        document = run_benchmark(options, reporter)
    finally:
        reporter.close()
    _print_table(document, out)
    if any(entry.get("status") == "failed" for entry in document["entries"]):
        raise typer.Exit(1)


class _Reporter:
    """Progress on stderr: a line per entry, a live elapsed-time status while it runs."""

    def __init__(self) -> None:
        self.console = stderr_console()
        self.status = None
        self.started = 0.0

    def info(self, message: str) -> None:
        self.console.print(message, markup=False)

    def on_entry_start(self, index: int, total: int, label: str) -> None:
        self.started = time.perf_counter()
        if self.console.is_terminal:
            self.status = self.console.status(f"[{index + 1}/{total}] {label}: measuring in a fresh process",
                                              spinner="dots")
            self.status.start()

    def on_entry_done(self, index: int, total: int, record: dict[str, Any]) -> None:
        from medsaga.benchmark.report import mib, rate

        self.close()
        seconds = time.perf_counter() - self.started
        if record.get("status") == "ok":
            peak = (record.get("peak_memory") or {}).get("peak_above_baseline_bytes")
            summary = (f"peak {mib(peak)} MiB, {rate(record.get('train_slices_per_second'))} training slices/s, "
                       f"{rate(record.get('inference_slices_per_second'))} inference slices/s")
        else:
            summary = f"{record.get('status')}: {record.get('error')}"
        self.console.print(f"[{index + 1}/{total}] {record['label']}: {summary} ({seconds:.0f} s)", markup=False)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _print_table(document: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from medsaga.benchmark.report import caption, device_text, table_columns
    from medsaga.benchmark.run import OUTPUT_FILES

    settings = document["settings"]
    table = Table(title=f"medsaga benchmark: {settings['model']} at {settings['image_size']} px, batch "
                        f"{settings['batch_size']}, {device_text(settings)}", caption=caption(document))
    columns = table_columns(document)
    for index, (header, _) in enumerate(columns):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for entry in document["entries"]:
        table.add_row(*(cell(entry) for _, cell in columns))
    console = stdout_console()
    console.print(table)
    for entry in document["entries"]:
        if entry.get("status") != "ok":
            console.print(f"{entry['label']}: {entry.get('status')}: {entry.get('error')}", markup=False)
    console.print(f"wall time {document['wall_seconds']:.0f} s; wrote {', '.join(OUTPUT_FILES)} in {out}",
                  markup=False)
