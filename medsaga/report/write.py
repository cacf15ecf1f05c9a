"""Writing the report pages: RUN/report.html after fine-tuning, OUT/report.html after evaluating.

Both are written atomically (:func:`medsaga.io.atomic.atomic_output`): a page is complete or absent.
The evaluation's overlays are drawn case by case while ``medsaga evaluate`` holds each case's label
maps (:class:`OverlayCollector`, its ``on_case`` callback), so memory never holds more than one
case's volumes; only the small PNGs are kept for the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsaga.errors import InputError
from medsaga.io.atomic import atomic_output
from medsaga.io.paths import REPORT_NAME
from medsaga.report.figures import png_bytes
from medsaga.report.overlays import case_overlays
from medsaga.report.page import CaseOverlays, Picture, evaluation_page, plane_caption, run_page
from medsaga.report.run_folder import find_run_folder, read_run

if TYPE_CHECKING:
    from medsaga.evaluate import CaseResult
    from medsaga.io import Volume


def write_html(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); return ``path``."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def write_run_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from the run folder's files (settings, curves, memory)."""
    return write_html(Path(run_dir) / REPORT_NAME, run_page(read_run(Path(run_dir))))


def write_evaluation_report(out: Path, document: Mapping[str, Any], overlays: Mapping[str, CaseOverlays],
                            run_folder: Path | None = None, images_note: str = "") -> Path:
    """Write ``out/report.html`` for metrics.json's ``document``.

    Args:
        out: the evaluation's output folder (it exists: metrics.json is written first).
        document: metrics.json's contents.
        overlays: case id → its pictures (:class:`OverlayCollector`).
        run_folder: the fine-tuning run, or a path naming one (``--labels RUN``, its config.json);
            a path that is no run folder (a dataset.json) adds no run section.
        images_note: what the overlays are drawn on.
    """
    run_dir = find_run_folder(run_folder)
    run = read_run(run_dir) if run_dir is not None else None
    return write_html(Path(out) / REPORT_NAME, evaluation_page(document, overlays, run, images_note))


class OverlayCollector:
    """``on_case`` callback of :func:`medsaga.evaluate.evaluate`: draws each case's three planes.

    Args:
        images: case id → image file. Cases without one are drawn on a neutral grey.
        preset: the intensity preset; ``None``: each image's DICOM modality decides, else
            per-volume percentiles.
        checked: the images were checked against the reference grids already (``--images``);
            otherwise (images found beside the ground truth) an image that is unreadable or on
            another grid is left out for that case, with a note, rather than stopping the run.
    """

    def __init__(self, images: Mapping[str, Path] | None, preset: str | None, checked: bool = True) -> None:
        self.images = dict(images or {})
        self.preset = preset
        self.checked = checked
        self.overlays: dict[str, CaseOverlays] = {}

    def __call__(self, result: "CaseResult", predicted: "Volume", truth: "Volume") -> None:
        from medsaga.data.intensity import choose_preset

        image, note = self._image(result.case_id, truth)
        preset = None
        if image is not None:
            preset = self.preset or choose_preset(image.source.metadata.get("modality")).name
            note = note or f"Drawn on {self.images[result.case_id].name} (window {preset})."
        planes = case_overlays(predicted, truth, image, preset)
        pictures = tuple(Picture(png_bytes(p.picture), f"{result.case_id}: {p.plane} slice {p.index + 1}",
                                 plane_caption(p.plane, p.index, p.slices, p.disagreement)) for p in planes)
        self.overlays[result.case_id] = CaseOverlays(pictures, note)

    def _image(self, case_id: str, truth: "Volume") -> tuple["Volume | None", str]:
        from medsaga.io import read_volume

        path = self.images.get(case_id)
        if path is None:
            return None, "No image for this case: the labels are drawn on a neutral grey."
        try:
            image = read_volume(path)
        except InputError as error:
            if self.checked:
                raise
            return None, f"Image {path.name} not used ({error}): the labels are drawn on a neutral grey."
        differences = image.same_grid(truth)
        if differences:
            if self.checked:  # --images were checked in the first pass; this would be a bug
                raise InputError(f"case {case_id}: image grid differs from the ground truth: "
                                 f"{'; '.join(differences)}", path)
            return None, (f"Image {path.name} is on another grid than the ground truth ({'; '.join(differences)}): "
                          "the labels are drawn on a neutral grey.")
        return image, ""


def dataset_images(ground_truth: Path, case_ids: list[str]) -> tuple[dict[str, Path], Path | None]:
    """The images beside a reference dataset (its ``imagesTr/`` or ``images/``), for the cases that
    have one, and the dataset's ``dataset.json``; nothing when the reference is not a dataset root."""
    from medsaga.evaluate.matching import image_files

    root = Path(ground_truth)
    if not root.is_dir() or not ((root / "imagesTr").is_dir() or (root / "images").is_dir()):
        return {}, None
    found, dataset_json = image_files(root)
    return {case: found[case] for case in case_ids if case in found}, dataset_json


def report_images(images_folder: Path | None, checked: dict[str, Path], ground_truth: Path,
                  case_ids: list[str]) -> tuple[dict[str, Path], str, Path | None]:
    """The images an evaluation's page draws on, a sentence saying which, and the ground-truth
    dataset's ``dataset.json`` when the images are its own: those of ``--images`` (``checked``:
    already matched to the label maps), else the ground-truth dataset's own images where it has
    them, else none (the labels are drawn on grey)."""
    if images_folder is not None:
        return checked, f"Overlays drawn on the images of {images_folder}.", None
    found, dataset_json = dataset_images(ground_truth, case_ids)
    if found:
        missing = len(case_ids) - len(found)
        return found, (f"Overlays drawn on the images beside the ground truth ({ground_truth})"
                       + (f"; {missing} case(s) without one are drawn on a neutral grey." if missing else ".")
                       + " --images chooses others."), dataset_json
    return {}, ("No images (give --images, or a ground-truth dataset with imagesTr/): the labels are drawn on a "
                "neutral grey."), dataset_json


__all__ = ["REPORT_NAME", "OverlayCollector", "dataset_images", "report_images", "write_evaluation_report",
           "write_html", "write_run_report"]
