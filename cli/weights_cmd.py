"""``medsaga weights``: the checkpoint files medsaga knows; ``medsaga weights verify FILE``: check one.

medsaga never downloads anything: the list says where a user gets each file, ``verify`` checks a
copy already on disk (hashes, which published file it is, and that it loads as a SAM state dict).

Exit codes of ``verify``: 0 when the file loads as SAM (a published file or not); 1 when the file
carries a published file's name but not its content; 2 when it does not load (one error line).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.console import ProgressBars, stdout_console
from cli.options import Command

if TYPE_CHECKING:
    from medsaga.model.weights import Verification

UNKNOWN = "unknown (not published)"

weights_app = typer.Typer(
    help="List the SAM / MedSAM checkpoint files medsaga knows (where to get them, sizes, SHA-256); "
         "'verify FILE' checks a local copy.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)


SHORT_HELP = "The SAM and MedSAM checkpoints medsaga knows; verify a copy."


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights", short_help=SHORT_HELP)


@weights_app.callback()
def weights(ctx: typer.Context) -> None:
    """List the checkpoint files medsaga knows: name, model type, size, SHA-256 and where to get them.

    Nothing is downloaded: fetch a file by hand from the address shown, then run
    'medsaga weights verify FILE'.
    """
    if ctx.invoked_subcommand is None:
        list_weights()


def list_weights() -> None:
    """Print one block per known file: one value per line, so hashes and URLs never fold."""
    from rich.markup import escape

    from medsaga.model.packaged_weights import installed_litemedsam
    from medsaga.model.weights import KNOWN_WEIGHTS, LITEMEDSAM_WEIGHTS

    console = stdout_console(highlight=False)
    console.print("[bold]Checkpoints medsaga can start from[/bold] (medsaga never downloads weights: get a file "
                  "from the address shown, then check it with 'medsaga weights verify FILE')\n")
    for known in KNOWN_WEIGHTS:
        size = f"{known.size_bytes:,} bytes" if known.size_bytes is not None else "unknown"
        console.print(f"[bold]{known.filename}[/bold]  {known.model_type}, {escape(known.publisher)}")
        rows = [("size", size), ("SHA-256", known.sha256 or UNKNOWN), ("MD5", known.md5 or UNKNOWN),
                ("get it from", known.url)]
        if known.install is not None:
            rows.append(("install", known.install))
        if known is LITEMEDSAM_WEIGHTS:
            rows.append(("installed", _installed_state(installed_litemedsam())))
        rows.append(("checksums", known.checksum_source))
        for label, value in rows:
            console.print(f"  {label:<12}{escape(value)}", soft_wrap=True)
        console.print()


def _installed_state(path: Path | None) -> str:
    """Where the packaged file is and whether it is the published one (size and SHA-256)."""
    from medsaga.errors import InputError
    from medsaga.model.packaged_weights import verify_litemedsam

    if path is None:
        return "no (finetune --model litemedsam needs it)"
    try:
        verify_litemedsam(path)
    except InputError as error:
        return f"{path}: NOT the published file ({error.message})"
    return f"{path} (size and SHA-256 verified; the default of --model litemedsam)"


@weights_app.command("verify", cls=Command)
def verify(
    file: Path = typer.Argument(..., help="A checkpoint file (.pth) to check."),
) -> None:
    """Hash FILE (SHA-256, MD5), say which published checkpoint it is, and check it loads as SAM.

    Exit code 0: the file loads as a SAM state dict (whether or not it is a published file);
    1: it carries a published file's name but not its content; 2: it does not load.
    """
    from medsaga.errors import InputError
    from medsaga.model.weights import verify_weights

    if not file.is_file():
        raise InputError("no such file" if not file.exists() else "is not a regular file", file)
    with ProgressBars(byte_counts=True, remaining=True) as bars:
        bars.update("hashing", 0, file.stat().st_size, f"hashing {file.name}")
        result = verify_weights(file, progress=lambda n: bars.advance("hashing", n))
    _print_verification(result)
    if result.mismatch:
        assert result.named_as is not None
        # Say where the expected hash comes from: none of them is published by the file's authors.
        print(f"error: {file}: named {result.named_as.filename} but its SHA-256 differs from the one recorded "
              f"for that file ({result.named_as.checksum_source}): a corrupt, truncated or modified copy",
              file=sys.stderr)
        raise typer.Exit(1)


def _print_verification(result: Verification) -> None:
    """One ``label  value`` line per finding (hashes stay whole, easy to copy)."""
    from rich.markup import escape

    digests = result.digests
    if result.known is not None:
        identity = f"[green]{result.known.filename}[/green] ({escape(result.known.publisher)}; checksum " \
                   f"{escape(result.known.checksum_source)})"
    else:
        identity = "unknown: not one of the published files medsaga knows"
    rows = [
        ("file", escape(str(result.path))),
        ("size", f"{digests.size_bytes:,} bytes"),
        ("SHA-256", digests.sha256),
        ("MD5", digests.md5),
        ("published as", identity),
    ]
    if result.md5_matches_name is not None:
        rows.append(("MD5 vs name", "starts with the filename's 6-hex suffix" if result.md5_matches_name
                     else "[red]does not start with the filename's 6-hex suffix[/red]"))
    if result.model_type is not None:
        rows.append(("loads as", f"SAM {result.model_type} state dict, {result.num_masks} mask outputs"
                     + (f" (unwrapped from {result.unwrapped_from!r})" if result.unwrapped_from else "")))
    console = stdout_console(highlight=False)
    for label, value in rows:
        console.print(f"{label:<14}{value}", soft_wrap=True)
