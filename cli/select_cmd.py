"""``medsaga select SCANS --shots K``: which K scans to label first."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from cli.console import ProgressBars, stdout_console
from cli.options import DEFAULT_DEVICE, Checkpoint, Command, Device, Encoder, Force, ImageSize, Intensity, Plane, \
    RandomInit, library_default

SHORT_HELP = "Pick K scans to label first, chosen to stand for the cohort."


def register(app: typer.Typer) -> None:
    app.command("select", cls=Command, short_help=SHORT_HELP)(select)


def select(
    folder: Path = typer.Argument(..., help="The scans to choose from: a folder of image files (NIfTI, NRRD, "
                                            "MHA), or a dataset in the nnU-Net layout (imagesTr/; labels "
                                            "not needed)."),
    shots: int = typer.Option(5, "--shots", "-k", help="How many scans to pick."),
    out: Path | None = typer.Option(None, "--out", help="Folder for selection.json, cases.txt and cohort_map.png "
                                                        "(default: selection-k<K>)."),
    model: Encoder = library_default("medsaga.select.run", "SelectOptions.model"),
    checkpoint: Checkpoint = None,
    image_size: ImageSize = None,
    slices: int = typer.Option(8, "--slices", help="Slices per scan, spread over the slices that hold tissue."),
    rule: str = typer.Option(library_default("medsaga.select.pick", "DEFAULT_RULE"), "--rule",
                             help="kmedoids (typical scans: the least summed distance to the nearest pick; trained "
                                  "better models on MALF) or kcenter (cover the cohort, outliers included: each "
                                  "pick the scan farthest from the picks so far)."),
    plane: Plane = library_default("medsaga.select.run", "SelectOptions.plane"),
    intensity: Intensity = None,
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where descriptors are kept, by file "
                                                                    "content (default: ~/.cache/medsaga/"
                                                                    "descriptors, or $MEDSAGA_CACHE)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the descriptor cache."),
    random_init: RandomInit = False,
    device: Device = DEFAULT_DEVICE,
    force: Force = False,
) -> None:
    """Pick K scans to label first, chosen to stand for the cohort: embed every scan with the frozen
    pretrained encoder (a few slices each, cached by file content), choose K by --rule, print and
    write the list with each pick's distances, and draw the cohort with the picks marked.

    Then: medsaga finetune DATA --cases OUT/selection.json (the run's config records the selection).
    """
    from medsaga.select.run import SelectOptions, default_cache_dir, select as run_select

    options = SelectOptions(folder=folder, shots=shots, out=out if out is not None else Path(f"selection-k{shots}"),
                            model=model, checkpoint=checkpoint, random_init=random_init, image_size=image_size,
                            slices=slices, rule=rule, plane=plane, intensity=intensity,
                            cache_dir=None if no_cache else (cache_dir or default_cache_dir()), device=device,
                            force=force)
    # The bar starts with the first scan, after every check has passed: an input error leaves its
    # one line and nothing else. Transient: the table follows.
    with ProgressBars() as bars:
        def progress(done: int, total: int, case_id: str, from_cache: bool) -> None:
            bars.update("scans", done, total, f"embedding scans {case_id}{' (cached)' if from_cache else ''}")

        selection = run_select(options, progress, warn=lambda warning: print(f"warning: {warning}", file=sys.stderr))
    console = stdout_console()
    console.print(_pick_table(selection.document))
    document = selection.document
    console.print(f"coverage radius {document['coverage_radius']:.3f} (median distance between two scans "
                  f"{document['median_pairwise_distance']:.3f}); mean distance to the nearest pick "
                  f"{document['mean_distance_to_nearest_pick']:.3f}; {document['cache']['hits']} of "
                  f"{document['scans']} descriptors from the cache; {document['seconds']:.0f} s", highlight=False)
    console.print(f"wrote {selection.out / 'selection.json'}, cases.txt, cohort_map.png", highlight=False)
    console.print(f"next: medsaga finetune DATA --cases {selection.out / 'selection.json'} ...", highlight=False)


def _pick_table(document: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"{document['shots']} of {document['scans']} scans ({document['rule']}, "
                        f"{document['model']['type']} encoder)")
    for name in ("pick", "case", "distance to earlier picks", "mean distance to the rest", "stands for",
                 "coverage radius after", "field of view mm", "intensity p1/p50/p99"):
        table.add_column(name, justify="left" if name == "case" else "right")
    facts = {row["case_id"]: row for row in document["scan_table"]}
    for row in document["picks"]:
        fact = facts[row["case_id"]]
        earlier = row["distance_to_earlier_picks"]
        table.add_row(str(row["rank"]), row["case_id"], "–" if earlier is None else f"{earlier:.3f}",
                      f"{row['mean_distance_to_others']:.3f}", f"{row['stands_for']} scans",
                      f"{row['coverage_radius_after']:.3f}",
                      "×".join(f"{v:.0f}" for v in fact["field_of_view_mm"]),
                      "/".join(f"{v:.4g}" for v in fact["intensity_percentiles"]))
    return table
