"""The ``medsaga`` Typer app.

Commands stay thin: parse options, call the library, render with rich. The options several commands
take are declared once (:mod:`cli.options`: flag, help and default, the library's part filled in
from the library); consoles and progress bars come from :mod:`cli.console`. Each command gives a
one-line ``short_help`` for ``medsaga --help``; its docstring is its own ``--help``. Heavy imports
(torch, nibabel, SimpleITK) happen inside the commands so that ``medsaga --help`` is instant.
User errors (:class:`medsaga.errors.InputError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from medsaga import __version__
from medsaga.errors import InputError

app = typer.Typer(
    name="medsaga",
    help="Few-shot, memory-efficient fine-tuning of the Segment Anything Model for CT/MR volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medsaga {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Few-shot, memory-efficient fine-tuning of the Segment Anything Model for CT/MR volumes."""


def _register_commands() -> None:
    from cli import (benchmark_cmd, evaluate_cmd, finetune_cmd, inspect_cmd, plan_cmd, predict_cmd, select_cmd,
                     weights_cmd)

    inspect_cmd.register(app)
    finetune_cmd.register(app)
    predict_cmd.register(app)
    evaluate_cmd.register(app)
    benchmark_cmd.register(app)
    plan_cmd.register(app)
    select_cmd.register(app)
    weights_cmd.register(app)


_register_commands()


def run() -> None:
    """Console-script entry point: the app, with user errors turned into one line and exit 2.

    Typer's standalone mode already handles ``--help`` and usage errors (exit 2); an
    :class:`InputError` raised by a command propagates out of it and is shown here. Training
    commands tune glibc's malloc themselves (:mod:`medsaga.train.allocator`) before they allocate
    any tensor; inference (predict) leaves glibc's own adaptive thresholds, under which it runs
    LiteMedSAM's encoder twice as fast on a CPU (its allocations repeat batch after batch, so its
    heap does not grow as training's does).
    """
    try:
        app()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
