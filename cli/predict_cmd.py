"""``medsaga predict [RUN_DIR] INPUT... [--run RUN_DIR] [--out OUT]``: label maps for new volumes,
with progress and timings."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.console import ProgressBars, stderr_console, stdout_console
from cli.options import DEFAULT_DEVICE, DEFAULT_PRECISION, BatchSize, Command, Device, Force, Precision, Series, \
    library_default

if TYPE_CHECKING:
    from medsaga.predict.inputs import PredictCase
    from medsaga.predict.pipeline import CaseFailure, CaseResult


# Outputs go here, in the working directory, when --out is not given: never beside (or over) an input.
DEFAULT_OUT = "predictions"


SHORT_HELP = "Segment volumes with a fine-tuned run."


def register(app: typer.Typer) -> None:
    app.command("predict", cls=Command, short_help=SHORT_HELP)(predict)


def predict(
    paths: list[Path] = typer.Argument(..., metavar="[RUN_DIR] INPUT",
                                       help="NIfTI / NRRD / MHA files, DICOM series folders, or folders of them "
                                            "(e.g. an nnU-Net imagesTs/ with CASE_0000.nii.gz files), optionally "
                                            "after the run folder of 'medsaga finetune' (recognised by its marker "
                                            "or config.json; a scan never is one)."),
    run: Path | None = typer.Option(None, "--run", help="Run folder to predict with (default: the first "
                                                        "positional when it is a run, else runs/latest, the "
                                                        "last run finished under ./runs/)."),
    out: Path = typer.Option(Path(DEFAULT_OUT), "--out", help="Folder for the predictions (created if needed)."),
    batch_size: BatchSize = library_default("medsaga.predict.pipeline", "PredictOptions.batch_size"),
    device: Device = DEFAULT_DEVICE,
    precision: Precision = DEFAULT_PRECISION,
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="The run's base checkpoint, if it moved "
                                                                            "since training (checked by SHA-256)."),
    largest_component: bool = typer.Option(False, "--largest-component", help="Keep only the largest 3-D connected "
                                                                              "component of each class."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write OUT/probabilities/CASE.nii.gz: "
                                                                      "float32 (I, J, K, C+1), channel c = class c."),
    seg_type: str = typer.Option("binary", "--seg-type", help="DICOM-SEG type for DICOM input: binary (widely "
                                                              "read) or labelmap (DICOM 2024, compact)."),
    series: Series = None,
    force: Force = False,
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Keep the cases whose outputs are all in OUT "
                                                                      "and predict the rest: rerun an interrupted "
                                                                      "cohort with it to resume."),
) -> None:
    """Segment volumes with a fine-tuned run.

    Each volume is sliced exactly as in training, segmented slice by slice and put back on its own
    grid. The run: --run, or the first INPUT when it is a run folder, else runs/latest (the last
    run 'medsaga finetune' finished under ./runs/). Outputs in OUT (default ./predictions/), per case (CASE = file name without ending and _0000 channel suffix, or the
    DICOM folder's name): CASE.nii.gz (label values of the training dataset; a NIfTI input's header
    is kept), plus CASE.nrrd for NRRD/MHA input, plus CASE.seg.dcm (DICOM-SEG) for a DICOM series.
    Ends with a table of slices and seconds per volume. A case that fails is reported in one line
    and the others go on; the exit status is then 2.

    A cohort on several GPUs (or CPU processes): torchrun --nproc-per-node N -m medsaga predict ...
    splits the cases between the processes (one model each); rank 0 prints the table.
    """
    from medsaga.predict.pipeline import PredictOptions, predict as run_predict
    from medsaga.predict.temporaries import Interrupted
    from medsaga.runs import resolve_predict_target

    target = resolve_predict_target(paths, run)
    run_dir, inputs = target.run_dir, target.inputs
    options = PredictOptions(run_dir=run_dir, inputs=tuple(inputs), out=out, batch_size=batch_size, device=device,
                             precision=precision, checkpoint=checkpoint, largest_component=largest_component,
                             probabilities=probabilities, seg_type=seg_type.lower(), series_uid=series, force=force,
                             skip_existing=skip_existing)
    # Said with the pipeline's first message, i.e. once the checks passed: an error stays one line.
    reporter = _Reporter(intro=f"run {run_dir} ({target.run_source}); predictions into {out}/"
                         + (" (the default; --out chooses another)" if out == Path(DEFAULT_OUT) else ""))
    try:
        outcome = run_predict(options, reporter)
    except Interrupted as interrupted:
        reporter.close()
        # The temporaries are gone (medsaga.predict.temporaries); finished cases are whole files.
        print(f"error: {out}: {interrupted}; the cases finished are written, no partial file is left (rerun "
              "with --skip-existing to predict the rest)", file=sys.stderr)
        raise typer.Exit(interrupted.exit_code) from None
    finally:
        reporter.close()
    from medsaga import distributed

    if not distributed.current().is_main:
        return
    if outcome.results or not outcome.failures:
        _print_table(outcome.results, out, outcome.world_size)
    if outcome.failures:
        _print_failures(outcome.failures, written=len(outcome.results))
        raise typer.Exit(2)


def _print_failures(failures: Sequence[CaseFailure], written: int) -> None:
    """Each failed case once, one line naming its file; then how many were written, truthfully.

    With a single case the count would only repeat the failure: its line says it instead.
    """
    if len(failures) == 1 and written == 0:
        failure = failures[0]
        print(f"error: {failure.path}: case {failure.case_id} failed: {failure.reason} (nothing was written)",
              file=sys.stderr)
        return
    for failure in failures:
        print(f"error: {failure.path}: case {failure.case_id} failed: {failure.reason}", file=sys.stderr)
    total = len(failures) + written
    if written == 0:
        what = "none was written"
    else:
        what = (f"{written} {'was' if written == 1 else 'were'} written (rerun with --skip-existing to predict "
                "only what is missing)")
    print(f"error: {len(failures)} of {total} cases failed; {what}", file=sys.stderr)


class _Reporter:
    """Rich progress on stderr: one bar over the volumes, one over the current volume's slices.

    Transient: the table replaces the bars, and an error leaves its one line, not a half bar.
    """

    def __init__(self, intro: str = "") -> None:
        self.console = stderr_console()
        self.bars = ProgressBars(self.console, remaining=True)
        self.intro = intro  # printed before the first message, then never again

    def _say_intro(self) -> None:
        if self.intro:
            self.console.print(self.intro, markup=False)
            self.intro = ""

    def info(self, message: str) -> None:
        self._say_intro()
        self.console.print(message, markup=False)

    def warning(self, message: str) -> None:
        self._say_intro()
        self.console.print(f"warning: {message}", markup=False)

    def on_start(self, cases: Sequence[PredictCase]) -> None:
        self._say_intro()
        self.bars.update("volumes", 0, len(cases))

    def on_slices(self, case: PredictCase, done: int, total: int) -> None:
        self.bars.update("slices", done, total, f"{case.case_id} slices", restart=done == 0)

    def on_case_done(self, result: CaseResult) -> None:
        self.bars.advance("volumes")

    def close(self) -> None:
        self.bars.close()


def _print_table(results: list[CaseResult], out: Path, world_size: int = 1) -> None:
    from rich.table import Table

    table = Table(title=f"medsaga predict: {len(results)} volume{'s' if len(results) != 1 else ''} → {out}",
                  caption="inference: slicing, model and un-slicing; total adds reading and writing")
    columns = [("volume", "left"), ("shape", "left"), ("slices", "right"), ("inference s", "right"),
               ("slices/s", "right"), ("total s", "right")] + ([("rank", "right")] if world_size > 1 else [])
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for result in results:
        table.add_row(result.case_id, "×".join(map(str, result.shape)), str(result.slices),
                      f"{result.inference_seconds:.2f}", f"{result.slices_per_second:.1f}",
                      f"{result.total_seconds:.2f}", *([str(result.rank)] if world_size > 1 else []))
    slices = sum(r.slices for r in results)
    inference = sum(r.inference_seconds for r in results)
    table.add_section()
    table.add_row("total", "", str(slices), f"{inference:.2f}",
                  f"{slices / inference:.1f}" if inference > 0 else "-",
                  f"{sum(r.total_seconds for r in results):.2f}", *([""] if world_size > 1 else []), style="bold")
    stdout_console().print(table)
