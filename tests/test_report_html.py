"""The report pages (issue 30): RUN/report.html from ``medsaga finetune``, OUT/report.html from
``medsaga evaluate``, opened in headless Chromium.

The evaluation page is made for the sample phantoms with predictions that are the reference with a
mistake per case (:mod:`tests.report_helpers`), scored against a tiny fine-tuning run's classes
(``--labels RUN``), so the page holds every section. Chromium loads it from a file with no network:
its DOM after the page's script ran says how many pictures decoded, and its tables are compared,
number by number, with metrics.json and report.json; a screenshot must show the overlays' class
colours. Without Chromium (``apt-get install -y chromium``; ``.ci/run`` installs it) only the
browser tests skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsaga.io import Volume
from medsaga.report.overlays import (NEUTRAL_GREY, PALETTE, case_overlays, class_colour, compare_overlays, draw_panel,
                                     label_box, label_boundary, worst_slice)
from medsaga.report.page import case_score
from tests.report_helpers import (CASES, SAMPLE, Page, assert_number, assert_offline, dump_dom, find_chromium,
                                  screenshot, write_sample_predictions)
from tests.cli_helpers import assert_one_line_error, medsaga
from tests.reporters import Interrupt, QuietReporter
from tests.train_helpers import tiny_options

# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny run (interrupted and resumed), its evaluation, Chromium
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with a validation case, cut after its step-3 checkpoint and resumed: the page is
    written when training ends, so only the resumed part writes it."""
    from medsaga.train.finetune import finetune, options_from_run

    run = tmp_path_factory.mktemp("report") / "run"
    with pytest.raises(Interrupt):
        finetune(tiny_options(run, val=1), QuietReporter(stop_at=5))
    assert not (run / "report.html").exists()
    finetune(options_from_run(run), QuietReporter(), resume=True)
    return run


@pytest.fixture(scope="module")
def evaluation(run_dir: Path) -> Path:
    """``medsaga evaluate PRED sample_data --labels RUN --out OUT`` (the report is on by default)."""
    out = run_dir / "evaluation"
    predictions = write_sample_predictions(run_dir.parent / "predictions")
    result = medsaga("evaluate", predictions[0].parent, SAMPLE, "--labels", run_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out / 'report.html'}" in result.stderr
    return out


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs "
                    "it before the tests)")
    return found


# ---------------------------------------------------------------------------------------------
# medsaga finetune: RUN/report.html
# ---------------------------------------------------------------------------------------------

def test_finetune_writes_its_page_on_resume_with_settings_curves_and_memory(run_dir: Path) -> None:
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert_offline(page, text)
    assert len(page.images) == 2  # the curves, the memory bar
    config = json.loads((run_dir / "config.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    settings = {attrs["data-setting"]: cells[1][1] for attrs, cells in page.tables["table-0"]}
    assert settings["model"] == "tiny at 64 px" and settings["method"].startswith("galore (")
    assert settings["training cases"] == ", ".join(config["dataset"]["train_cases"])
    assert settings["validation cases"] == ", ".join(config["dataset"]["val_cases"])
    assert settings["classes"] == "liver, kidney, spleen" and settings["steps"] == str(config["training"]["steps"])
    measures = {attrs["data-measure"]: cells[1] for attrs, cells in page.tables["memory-table"]
                if "data-measure" in attrs}
    for key, value in report["memory"].items():
        assert int(measures[f"memory.{key}"][0]["data-value"]) == value
        assert measures[f"memory.{key}"][1] == f"{value / 2**20:,.1f} MiB"
    assert float(measures["slices_per_second"][0]["data-value"]) == report["slices_per_second"]
    assert report["first_step"] == 3 and measures["steps"][1] == "6 (resumed at 3)"
    # The curve is the whole run's: metrics.jsonl holds steps 1..6 after the resume.
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert f"{report['validation_dice'][-1]:.4f}" in text


# ---------------------------------------------------------------------------------------------
# medsaga evaluate: OUT/report.html, in Chromium
# ---------------------------------------------------------------------------------------------

def test_evaluation_page_in_chromium_holds_metrics_json_and_every_picture(evaluation: Path, chromium: str,
                                                                          run_dir: Path) -> None:
    dom = dump_dom(chromium, evaluation / "report.html")
    page = Page(dom)
    assert_offline(page, (evaluation / "report.html").read_text(encoding="utf-8"))
    # The page's script ran after load: every picture decoded (naturalWidth > 0).
    images = len(page.images)
    assert images == 3 * len(CASES) + 3  # three planes per case; Dice plot, curves, memory
    assert page.body.get("data-images") == str(images) and page.body.get("data-images-loaded") == str(images)
    document = json.loads((evaluation / "metrics.json").read_text())

    # Per class: every figure of metrics.json's "mean".
    for m in document["mean"]:
        cells = page.cells("summary-table", data_class=str(m["value"]))
        assert_number(cells["dice"], m["dice"], 4)
        assert_number(cells["hd95_mm"], m["hd95_mm"], 2)
        assert_number(cells["nsd"], m["nsd"], 4)
        for key in ("cases_with_gt", "missed", "false_positive", "both_empty"):
            assert cells[key] == (str(m[key]), str(m[key]))
    overall = page.cells("summary-table", data_class="mean")
    for key, digits in (("dice", 4), ("hd95_mm", 2), ("nsd", 4)):
        assert_number(overall[key], document["mean_over_classes"][key], digits)

    # Per case: every case and class of metrics.json, worst case first.
    for case in document["cases"]:
        for c in case["classes"]:
            cells = page.cells("case-table", data_case=case["case_id"], data_class=str(c["value"]))
            assert_number(cells["dice"], c["dice"], 4)
            assert_number(cells["hd95_mm"], c["hd95_mm"], 2)
            assert_number(cells["nsd"], c["nsd"], 4)
    order = list(dict.fromkeys(attrs["data-case"] for attrs, _ in page.tables["case-table"] if "data-case" in attrs))
    scores = {case["case_id"]: float(np.mean([c["dice"] for c in case["classes"] if c["status"] != "both empty"]))
              for case in document["cases"]}
    assert order == sorted(scores, key=lambda case: (scores[case], case)) and len(order) == len(CASES)
    assert scores[order[0]] < 1 and scores == {c["case_id"]: case_score(c, [1, 2, 3]) for c in document["cases"]}

    # Overlays: three planes per case, on the dataset's images, with the dataset's class names.
    for case in CASES:
        planes = [img["alt"] for img in page.images if img["alt"].startswith(f"{case}: ")]
        assert [alt.split()[1] for alt in planes] == ["axial", "coronal", "sagittal"]
    assert "Drawn on phantom_006_0000.nii.gz (window ct-abdomen)." in dom
    for name in ("liver", "kidney", "spleen"):
        assert f"{name} <span class=\"muted\">(" in dom
    # The run's section: the settings of config.json, the memory of report.json.
    assert "run" in page.ids and str(run_dir) in dom and "memory-table" in page.tables


def test_evaluation_page_screenshot_shows_the_overlays(evaluation: Path, chromium: str, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = screenshot(chromium, evaluation / "report.html", tmp_path / "shot.png", (1400, 2400))
    pixels = np.round(imread(shot)[..., :3] * 255).astype(np.int16)  # (H, W, 3)
    assert pixels.shape[:2] == (2400, 1400)
    assert pixels.std() > 20  # not blank
    # The first case's overlays are on screen: the reference outlines in the class colours.
    for value in (1, 2):
        colour = np.array(class_colour(value), np.int16)
        assert (np.abs(pixels - colour).max(axis=2) <= 2).sum() > 50, value


def test_evaluation_without_images_draws_on_grey_and_says_so(tmp_path: Path) -> None:
    """A reference folder that is no dataset: no images to draw on (the library path, no browser)."""
    from medsaga.evaluate import evaluate
    from medsaga.evaluate.outputs import json_document
    from medsaga.report import OverlayCollector, write_evaluation_report

    predictions = write_sample_predictions(tmp_path / "pred", CASES[:1])[0]
    reference = SAMPLE / "labelsTr" / f"{CASES[0]}.nii.gz"
    collector = OverlayCollector({}, None, checked=False)
    result = evaluate(predictions, reference, labels=SAMPLE / "dataset.json", on_case=collector)
    document = json.loads(json.dumps(json_document(result, predictions, reference)))
    page_path = write_evaluation_report(tmp_path, document, collector.overlays, SAMPLE / "dataset.json",
                                        "No images: the labels are drawn on a neutral grey.")
    text = page_path.read_text(encoding="utf-8")
    page = Page(text)
    assert "No image for this case: the labels are drawn on a neutral grey." in text
    assert "run" not in page.ids  # a dataset.json is no run folder
    assert len([img for img in page.images if img["alt"].startswith(CASES[0])]) == 3
    picture = collector.overlays[CASES[0]].pictures[0]
    assert picture.size[0] >= 256


def test_report_options(tmp_path: Path) -> None:
    prediction = write_sample_predictions(tmp_path / "pred", CASES[1:2])[0]
    reference = SAMPLE / "labelsTr" / prediction.name
    error = medsaga("evaluate", prediction, reference, "--report")
    assert error.returncode == 2 and error.stderr.strip() == \
        "error: --report needs --out (the page is written to OUT/report.html)"
    result = medsaga("evaluate", prediction, reference, "--out", tmp_path / "out", "--no-report")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "metrics.json"]
    # --images for the report alone are checked with the label maps, before the slow part.
    wrong = SAMPLE / "imagesTr" / "phantom_006_0000.nii.gz"
    taken = medsaga("evaluate", prediction, reference, "--out", tmp_path / "other", "--images", wrong)
    assert_one_line_error(taken, wrong, "image grid differs from the ground truth")
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------

def test_worst_slice_of_each_plane() -> None:
    reference = np.zeros((10, 12, 8), np.uint8)
    reference[2:8, 3:9, 2:6] = 1
    prediction = reference.copy()
    prediction[6, 3:9, 2:6] = 0  # the prediction misses one i-slab (4 x 6 voxels)...
    prediction[2:8, 10, 5] = 2  # ...and adds a line of class 2 along i at j = 10, k = 5
    affine = np.diag([1.0, 1.0, 1.0, 1.0])  # voxel axes i, j, k grow towards R, A, S
    overlays = case_overlays(Volume(prediction, affine), Volume(reference, affine), None, None)
    assert [o.plane for o in overlays] == ["axial", "coronal", "sagittal"]
    differ = prediction != reference
    for overlay, axis in zip(overlays, (2, 1, 0)):  # axial slices along k, coronal along j, sagittal along i
        counts = differ.sum(axis=tuple(a for a in range(3) if a != axis))
        assert overlay.disagreement == counts.max() and overlay.slices == differ.shape[axis]
        assert overlay.picture.dtype == np.uint8 and overlay.picture.shape[2] == 3
    assert worst_slice(np.zeros(5, int), np.array([0, 3, 9, 1, 0])) == 2  # agree everywhere: most reference
    assert worst_slice(np.zeros(5, int), np.zeros(5, int)) == 2  # empty: the middle


def test_panel_fill_outline_and_neutral_background() -> None:
    reference = np.zeros((8, 8), np.uint8)
    reference[2:6, 2:6] = 1
    prediction = np.zeros((8, 8), np.uint8)
    prediction[2:6, 4:8] = 2
    panel = draw_panel(None, prediction, reference, (2, 2), outline_width=1)
    assert panel.shape == (16, 16, 3)
    grey = round(NEUTRAL_GREY * 255)
    assert (panel[0, 0] == grey).all()  # background
    assert tuple(panel[4, 4]) == class_colour(1)  # the reference's outline, opaque
    blended = np.round(0.55 * NEUTRAL_GREY * 255 + 0.45 * np.array(class_colour(2)))
    assert (panel[10, 14] == blended).all()  # the prediction's fill, where the reference has nothing
    thick = label_boundary(np.kron(reference, np.ones((2, 2), np.uint8)), 2)
    assert thick.sum() == 16 * 4 - 4 * 4 and not thick[8, 8]  # a ring two pixels wide around a 4x4 hole
    assert len({colour for _, colour in PALETTE}) == 7


def test_compared_predictions_share_the_slice_where_they_disagree_most_and_one_crop() -> None:
    """Two predictions of one case: the axial slice shown is the one with the most differing voxels
    summed over both (not either's own worst), and every panel is cut to one box around the labels."""
    reference = np.zeros((40, 30, 6), np.uint8)
    reference[10:20, 8:16, 1:5] = 1
    one, two = reference.copy(), reference.copy()
    one[10:20, 8:10, 2] = 0  # 20 voxels missed on axial slice 2
    two[10:14, 8:16, 3] = 0  # 32 voxels missed on slice 3...
    one[10:16, 8:10, 3] = 0  # ...where the first also misses 12: slice 3 (44) beats slice 2 (20)
    two[19, 15, 2] = 2  # and one wrong voxel on slice 2
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    planes = compare_overlays({"one": Volume(one, affine), "two": Volume(two, affine)}, Volume(reference, affine),
                              None, None, ("axial", "sagittal"))
    axial = planes[0]
    assert (axial.plane, axial.index, axial.slices) == ("axial", 3, 6)
    assert axial.disagreement == {"one": 12, "two": 32} and list(axial.pictures) == ["one", "two"]
    shapes = {axial.reference.shape, *(p.shape for p in axial.pictures.values())}
    assert len(shapes) == 1  # one crop, one enlargement for every panel
    # The crop: the labels and 8 pixels around, inside the slice. Axial slices show anterior up and the
    # patient's right on the left: rows run along -j (j 8..15 → rows 14..21), columns along -i (i 10..19
    # → columns 20..29).
    assert axial.box == (14 - 8, 30, 20 - 8, 30 + 8)
    assert max(shapes.pop()[:2]) >= 256
    # The reference panel outlines the labels and fills nothing; the predictions' panels differ.
    assert not np.array_equal(axial.pictures["one"], axial.pictures["two"])
    assert (axial.reference == np.array(class_colour(1), np.uint8)).all(axis=2).any()
    grey = round(NEUTRAL_GREY * 255)
    assert set(np.unique(axial.reference)) <= {grey, *class_colour(1)}
    assert planes[1].plane == "sagittal" and planes[1].slices == 40


def test_label_box_and_grouped_numbers() -> None:
    from medsaga.report.page import format_number, number_cell

    labels = np.zeros((100, 50), np.uint8)
    labels[40:60, 2:5] = 3
    assert label_box([labels]) == (32, 68, 0, 13)  # 20 rows + 8 each side; columns stop at the edge
    assert label_box([labels], margin=0.5, min_margin=1) == (30, 70, 0, 7)
    assert label_box([np.zeros((5, 7))]) == (0, 5, 0, 7)  # nothing labelled: the whole slice
    assert format_number(1234.5, 0, grouping=True) == "1,234" and format_number(1234.5, 1) == "1234.5"
    assert format_number(None, 2) == format_number(float("nan"), 2) == "–"
    cell = number_cell("unet", 0.71234, 3, grouping=True, css="best")
    assert cell == '<td class="num best" data-metric="unet" data-value="0.71234">0.712</td>'


def test_evaluation_folder_with_its_report_is_medsaga_s_own(tmp_path: Path) -> None:
    from medsaga.io.paths import foreign_entry, write_folder_marker

    run = tmp_path / "run"
    (run / "evaluation").mkdir(parents=True)
    write_folder_marker(run, "run")
    for name in ("report.html", "evaluation/report.html", "evaluation/metrics.json"):
        (run / name).write_text("x")
    assert foreign_entry(run, "run") is None



def test_validation_steps_follow_the_epochs(tmp_path: Path) -> None:
    """The loop validates at each epoch's end and after the last step; a resumed run's report lists
    only the validations since it resumed (the last ones)."""
    from medsaga.report.run_folder import RunRecord

    config = {"training": {"steps": 10, "batch_size": 2, "grad_accum": 2}, "dataset": {"training_slices": 12}}
    whole = RunRecord(tmp_path, config, {"steps": 10, "validation_dice": [0.1, 0.2, 0.3, 0.4]})
    assert whole.validation_steps() == [3, 6, 9, 10]  # epochs of 3 steps (12 slices, 4 per step)
    resumed = RunRecord(tmp_path, config, {"steps": 10, "validation_dice": [0.3, 0.4]})
    assert resumed.validation_steps() == [9, 10]
    assert RunRecord(tmp_path, None, {"validation_dice": [0.5, 0.6]}).validation_steps() == [1, 2]
