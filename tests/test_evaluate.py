"""``medsaga evaluate``: metric values against hand-computed ones, the empty-mask rule, matching,
outputs, overlays, and the command line."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from medsaga.errors import InputError
from medsaga.evaluate import (EvalClass, binary_metrics, case_metrics, classes_from_values, evaluate,
                              load_class_set, match_cases, match_images)
from medsaga.evaluate.metrics import ClassMetrics
from medsaga.report.overlay_pngs import MIN_PANEL, GAP, choose_slices, class_colour, label_boundary, render_overlay
from medsaga.evaluate.summary import summarise_class
from medsaga.io import Volume
from medsaga.report.figures import png_bytes
from tests.cli_helpers import assert_one_line_error, medsaga
from tests.data_paths import SHARED_DATA, need_shared
from tests.dataset_factory import make_nnunet, phantom, write_nifti


def box(shape: tuple[int, int, int], i: slice, j: slice, k: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[i, j, k] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Metric values, derived by hand
# ---------------------------------------------------------------------------------------------

def test_dice_by_counting() -> None:
    shape = (10, 10, 10)
    a = box(shape, slice(2, 6), slice(2, 6), slice(2, 6))  # 64 voxels
    shifted = box(shape, slice(4, 8), slice(2, 6), slice(2, 6))  # 64 voxels, 2 x 4 x 4 = 32 shared
    inner = box(shape, slice(2, 6), slice(2, 6), slice(2, 4))  # 32 voxels, all inside a
    assert binary_metrics(shifted, a, (1, 1, 1), 2.0).dice == pytest.approx(2 * 32 / (64 + 64))
    assert binary_metrics(inner, a, (1, 1, 1), 2.0).dice == pytest.approx(2 * 32 / (32 + 64))
    assert binary_metrics(a, a, (1, 1, 1), 2.0) == ClassMetrics(1.0, 0.0, 1.0, "ok", 64, 64)


# The two boxes below are 4 x 4 x 3 voxels (i 2..5, j 2..5, k 2..4), the prediction shifted by one
# voxel, on a (1, 1, 3) mm grid. MONAI's surface is the mask voxels with a 6-neighbour outside:
# all 48 but the 4 interior ones (i, j in 3..4, middle k), so 44 surface voxels per mask.

def test_shift_along_the_thick_axis() -> None:
    """Shift by one voxel along k (3 mm). Prediction surface voxels, by layer (GT is symmetric):

    - top layer k = 5: 16 voxels outside the GT; nearest GT surface: the GT's top face at k = 4, 3 mm;
    - k = 4: its 12 surface voxels (a ring) lie on the GT's top face: 0 mm;
    - k = 3: 16 voxels; 12 are on GT's side faces (0 mm), 4 sit on GT's interior voxels, whose
      nearest GT surface voxel is the in-plane neighbour 1 mm away.

    So 24 at 0 mm, 4 at 1 mm, 16 at 3 mm each way. HD95: the 95th percentile of 44 sorted values
    (interpolating between positions 40 and 41, both 3 mm) = 3 mm, the shift. NSD counts
    distances <= tolerance over all 88: 48/88 at 0.5 mm, 56/88 at 2 mm, 88/88 at 3 mm.
    """
    shape, spacing = (8, 8, 8), (1.0, 1.0, 3.0)
    gt = box(shape, slice(2, 6), slice(2, 6), slice(2, 5))
    pred = box(shape, slice(2, 6), slice(2, 6), slice(3, 6))
    for tolerance, nsd in ((0.5, 48 / 88), (2.0, 56 / 88), (3.0, 1.0)):
        metrics = binary_metrics(pred, gt, spacing, tolerance)
        assert metrics.hd95_mm == pytest.approx(3.0)
        assert metrics.nsd == pytest.approx(nsd)
        assert metrics.dice == pytest.approx(2 * 32 / 96)  # 4 x 4 x 2 shared
        assert metrics.status == "ok"


def test_shift_along_a_fine_axis() -> None:
    """Shift by one voxel along i (1 mm) on the same grid. Prediction surface voxels:

    - i = 6: 12 voxels outside the GT, 1 mm from the GT's face at i = 5;
    - i = 3: 12 voxels, 2 of them (j 3..4, k 3) on GT interior voxels, 1 mm from its surface;
    - i = 4..5: 20 surface voxels, all on the GT surface (the GT's interior there is the
      prediction's interior): 0 mm.

    So 30 at 0 mm and 14 at 1 mm each way: HD95 = 1 mm; NSD = 60/88 below 1 mm, 1 at 1 mm.
    """
    shape, spacing = (8, 8, 8), (1.0, 1.0, 3.0)
    gt = box(shape, slice(2, 6), slice(2, 6), slice(2, 5))
    pred = box(shape, slice(3, 7), slice(2, 6), slice(2, 5))
    assert binary_metrics(pred, gt, spacing, 0.5).hd95_mm == pytest.approx(1.0)
    assert binary_metrics(pred, gt, spacing, 0.5).nsd == pytest.approx(60 / 88)
    assert binary_metrics(pred, gt, spacing, 1.0).nsd == pytest.approx(1.0)


def test_same_values_as_monai_public_metrics() -> None:
    """We reduce MONAI's surface distances ourselves (one pass instead of two) and count Dice: the
    numbers must be those of compute_hausdorff_distance(percentile=95), compute_surface_dice and
    compute_dice, also for blobs that touch the image border (where our crop must not change the
    surface)."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
    from scipy import ndimage

    rng = np.random.default_rng(7)
    spacing = [0.7, 1.3, 2.5]
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.normal(size=(24, 20, 12)), 2) > 0.05
        b = ndimage.gaussian_filter(rng.normal(size=(24, 20, 12)), 2) > 0.05
        ours = binary_metrics(a, b, spacing, 1.5)
        pa, pb = (torch.from_numpy(m)[None, None].float() for m in (a, b))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = float(compute_hausdorff_distance(pa, pb, include_background=True, percentile=95, spacing=spacing))
            nsd = float(compute_surface_dice(pa, pb, [1.5], include_background=True, spacing=spacing))
            dice = float(compute_dice(pa, pb, include_background=True))
        assert ours.hd95_mm == pytest.approx(hd, rel=1e-5)
        assert ours.nsd == pytest.approx(nsd, rel=1e-5)
        assert ours.dice == pytest.approx(dice, rel=1e-6)


@pytest.mark.parametrize(("gt_voxels", "pred_voxels", "expected"), [
    (0, 0, (1.0, 0.0, 1.0, "both empty")),
    (0, 8, (0.0, None, 0.0, "false positive")),
    (8, 0, (0.0, None, 0.0, "missed")),
])
def test_empty_masks(gt_voxels: int, pred_voxels: int, expected: tuple) -> None:
    shape = (6, 6, 6)
    some = box(shape, slice(1, 3), slice(1, 3), slice(1, 3))
    gt = some if gt_voxels else np.zeros(shape, bool)
    pred = some if pred_voxels else np.zeros(shape, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI's empty-mask warnings must not appear
        metrics = binary_metrics(pred, gt, (1, 1, 2), 2.0)
    dice, hd95, nsd, status = expected
    assert (metrics.dice, metrics.nsd, metrics.status) == (dice, nsd, status)
    assert np.isnan(metrics.hd95_mm) if hd95 is None else metrics.hd95_mm == hd95
    assert (metrics.gt_voxels, metrics.pred_voxels) == (gt_voxels, pred_voxels)


def test_case_metrics_per_class() -> None:
    """A multi-class map: each class measured alone, absent classes decided by the rule. Float
    label maps of whole numbers are accepted."""
    shape = (10, 10, 6)
    gt = np.zeros(shape, np.float32)
    pred = np.zeros(shape, np.uint8)
    gt[1:4, 1:4, 1:3] = 1
    pred[1:4, 1:4, 1:3] = 1  # class 1: exact
    gt[6:9, 6:9, 1:3] = 2  # class 2: missed
    pred[6:8, 1:3, 4:5] = 3  # class 3: false positive
    classes = [EvalClass(v, str(v)) for v in (1, 2, 3, 4)]  # 4: in neither
    metrics = case_metrics(pred, gt, classes, (1.0, 1.0, 2.0), 2.0)
    assert metrics[1] == ClassMetrics(1.0, 0.0, 1.0, "ok", 18, 18)
    assert (metrics[2].status, metrics[2].gt_voxels, metrics[2].pred_voxels) == ("missed", 18, 0)
    assert (metrics[3].status, metrics[3].gt_voxels, metrics[3].pred_voxels) == ("false positive", 0, 4)
    assert metrics[4].status == "both empty"


def test_nothing_to_evaluate(tmp_path: Path) -> None:
    empty = write_nifti(tmp_path / "empty.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match="nothing to evaluate"):
        evaluate(empty, empty)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    result = evaluate(empty, empty, labels=tmp_path / "dataset.json")  # declared: scored as both empty
    assert result.cases[0].metrics[1].status == "both empty"
    assert np.isnan(result.summaries[0].dice_mean) and result.summaries[0].both_empty == 1


def test_class_means_count_the_empty_cases() -> None:
    ok = [ClassMetrics(0.8, 2.0, 0.9, "ok", 10, 10), ClassMetrics(0.6, 4.0, 0.7, "ok", 10, 10)]
    others = [ClassMetrics(0.0, float("nan"), 0.0, "missed", 10, 0),
              ClassMetrics(0.0, float("nan"), 0.0, "false positive", 0, 5),
              ClassMetrics(1.0, 0.0, 1.0, "both empty", 0, 0)]
    s = summarise_class(EvalClass(1, "liver"), ok + others)
    assert (s.cases, s.reference_cases, s.hd95_cases) == (5, 3, 2)
    assert s.dice_mean == pytest.approx((0.8 + 0.6 + 0.0) / 3)  # missed counts as 0, FP/both empty left out
    assert s.nsd_mean == pytest.approx((0.9 + 0.7 + 0.0) / 3)
    assert s.hd95_mean_mm == pytest.approx(3.0)
    assert (s.missed, s.false_positive, s.both_empty) == (1, 1, 1)
    assert s.dice_mean_gt_or_pred == pytest.approx((0.8 + 0.6) / 4)  # nnU-Net's convention
    assert np.isnan(summarise_class(EvalClass(2, "x"), others[1:]).dice_mean)


# ---------------------------------------------------------------------------------------------
# Matching, classes
# ---------------------------------------------------------------------------------------------

def test_folder_matching_with_an_nnunet_reference(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=3)
    preds = tmp_path / "preds"
    _, label = phantom()
    for case in ("case_000", "case_001", "extra"):
        write_nifti(preds / f"{case}.nii.gz", label)
    (preds / "notes.txt").write_text("ignored")
    (preds / ".medsaga-tmp-1234-case_002.nii.gz").write_bytes(b"half written")
    matching = match_cases(preds, root)
    assert [p.case_id for p in matching.pairs] == ["case_000", "case_001"]
    assert matching.pairs[0].ground_truth == root / "labelsTr" / "case_000.nii.gz"
    assert matching.predictions_without_reference == ("extra",)
    assert matching.references_without_prediction == ("case_002",)
    assert matching.dataset_json == root / "dataset.json"
    images, _ = match_images(root, matching.pairs)
    assert images["case_001"] == root / "imagesTr" / "case_001_0000.nii.gz"


def test_plain_pairs_and_suffixes(tmp_path: Path) -> None:
    image, label = phantom()
    gt = tmp_path / "gt"
    write_nifti(gt / "a.nii.gz", image)
    write_nifti(gt / "a_seg.nii.gz", label)  # the label beside its image wins
    write_nifti(gt / "b.nii.gz", image)  # an image without its label: not a label map
    write_nifti(tmp_path / "pred" / "a_pred.nii.gz", label)
    matching = match_cases(tmp_path / "pred", gt)
    assert [(p.case_id, p.ground_truth.name, p.prediction.name) for p in matching.pairs] == \
        [("a", "a_seg.nii.gz", "a_pred.nii.gz")]
    assert matching.references_without_prediction == ()
    (tmp_path / "pred" / "a_pred.nrrd").write_bytes(b"")  # only names matter here
    assert match_cases(tmp_path / "pred", gt).pairs[0].prediction.name == "a_pred.nii.gz"  # as predict writes
    (tmp_path / "pred" / "a_mask.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="two label maps for case a: a_mask.nii.gz and a_pred.nii.gz"):
        match_cases(tmp_path / "pred", gt)


def test_no_case_in_common(tmp_path: Path) -> None:
    _, label = phantom()
    write_nifti(tmp_path / "pred" / "x.nii.gz", label)
    write_nifti(tmp_path / "gt" / "y.nii.gz", label)
    with pytest.raises(InputError, match="no case id in common") as error:
        match_cases(tmp_path / "pred", tmp_path / "gt")
    assert error.value.path == tmp_path / "pred" and "x" in str(error.value) and "y" in str(error.value)
    with pytest.raises(InputError, match="both be files or both be folders"):
        match_cases(tmp_path / "pred" / "x.nii.gz", tmp_path / "gt")


def test_classes_from_a_run_config_and_a_dataset_json(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"classes": {"values": [0, 1, 4],
                                                             "names": ["background", "liver", "tumour"]}}))
    assert load_class_set(run).classes == (EvalClass(1, "liver"), EvalClass(4, "tumour"))
    msd = tmp_path / "dataset.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "2": "spleen"}}))
    assert load_class_set(msd).classes == (EvalClass(2, "spleen"),)
    assert classes_from_values([0, 3, 1]).classes == (EvalClass(1, "1"), EvalClass(3, "3"))
    with pytest.raises(InputError, match="declares no classes"):
        (tmp_path / "other.json").write_text("{}")
        load_class_set(tmp_path / "other.json")


def test_undeclared_values_and_fractional_labels(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=1, labels={"background": 0, "organ": 1})  # the phantom has 2 too
    _, label = phantom()
    write_nifti(tmp_path / "pred" / "case_000.nii.gz", label)
    with pytest.raises(InputError, match=r"label values \[2\] are not among the classes"):
        evaluate(tmp_path / "pred", root)
    write_nifti(tmp_path / "pred" / "case_000.nii.gz", label.astype(np.float32) * 0.5)
    with pytest.raises(InputError, match="non-integer"):
        evaluate(tmp_path / "pred", root / "labelsTr")


# ---------------------------------------------------------------------------------------------
# Overlays and PNG
# ---------------------------------------------------------------------------------------------

def _png_pixels(data: bytes) -> np.ndarray:
    """A PNG file's pixels ``(H, W, 3)`` uint8, read by Pillow (matplotlib's own dependency)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def test_png_round_trip() -> None:
    """The overlays' PNG encoder (matplotlib's) keeps every pixel exactly: labels stay readable."""
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_png_pixels(png_bytes(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(rgb.astype(np.float32))


def test_label_boundary_and_slice_choice() -> None:
    labels = np.zeros((5, 5), np.uint8)
    labels[1:4, 1:4] = 1
    expected = labels.astype(bool).copy()
    expected[2, 2] = False  # the only labelled pixel whose 4 neighbours are all labelled 1
    np.testing.assert_array_equal(label_boundary(labels), expected)
    stack = np.zeros((20, 4, 4), np.uint8)
    stack[4:13, 1, 1] = 1  # labelled slices 4..12: quarter points 6, 8, 10
    assert choose_slices(stack, np.zeros_like(stack), 3) == [6, 8, 10]
    assert choose_slices(np.zeros_like(stack), np.zeros_like(stack), 3) == [10]


def test_overlay_picture() -> None:
    """Three 256-pixel-high panels of the phantom (axial slices 12 x 16 pixels of 1 mm, enlarged 16x),
    the reference outlined in its class colour where the prediction is empty."""
    image, label = phantom()  # (16, 12, 6): axial slices are (J, I) = (12, 16)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    gt = Volume(label, affine)
    pred = Volume(np.where(label == 2, 0, label).astype(np.uint8), affine)  # class 2 missed
    picture = render_overlay(Volume(image, affine), pred, gt, "mr", slices=3)
    scale = MIN_PANEL // 16
    assert picture.shape == (12 * scale, 3 * 16 * scale + 2 * GAP, 3)
    assert (picture == np.array(class_colour(2), np.uint8)).all(axis=2).any()  # the missed class's outline


def test_overlay_window_from_the_channel_name(tmp_path: Path) -> None:
    """--intensity first, else channel 0's name of the first dataset.json or run config.json that has one."""
    from medsaga.report.overlay_pngs import channel_name, overlay_preset

    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"dataset": {"channel_names": ["T1"]}}))
    (tmp_path / "msd.json").write_text(json.dumps({"modality": {"0": "MRI"}}))
    (tmp_path / "broken.json").write_text("{")
    assert channel_name(tmp_path / "ct") == "CT" and channel_name(tmp_path / "ct" / "dataset.json") == "CT"
    assert channel_name(tmp_path / "run") == "T1" and channel_name(tmp_path / "msd.json") == "MRI"
    assert channel_name(tmp_path / "broken.json") is None and channel_name(tmp_path / "none") is None
    assert channel_name(None) is None
    assert overlay_preset(None, [None, tmp_path / "broken.json", tmp_path / "ct", tmp_path / "run"]) == "ct-abdomen"
    assert overlay_preset(None, [tmp_path / "run", tmp_path / "ct"]) == "mr"
    assert overlay_preset(None, [None, tmp_path / "broken.json"]) is None  # each image's modality decides
    assert overlay_preset("ct-bone", [tmp_path / "run"]) == "ct-bone"
    with pytest.raises(InputError, match="ct-abdomen"):
        overlay_preset("bone", [])


def test_outputs_are_checked_before_any_work(tmp_path: Path) -> None:
    """No output is an input, by path or as a (hard) link to one; an existing output needs force."""
    from medsaga.evaluate.outputs import check_outputs, planned_outputs

    out = tmp_path / "out"
    assert planned_outputs(None, ["a"], True) == []
    outputs = planned_outputs(out, ["a", "b"], report=True)
    assert [path.relative_to(out).as_posix() for path in outputs] == [
        "metrics.csv", "metrics.json", "report.html", "overlays/a.png", "overlays/b.png"]
    check_outputs(outputs, False, [tmp_path / "pred", None])
    assert not out.exists()  # checked, not made

    out.mkdir()
    given = tmp_path / "labels.json"
    given.write_text("{}")
    (out / "metrics.json").hardlink_to(given)  # the same file under another name
    with pytest.raises(InputError, match="is an input") as error:
        check_outputs(outputs, True, [given])
    assert error.value.path == out / "metrics.json"
    with pytest.raises(InputError, match="is an input"):
        check_outputs(outputs, True, [tmp_path / "x" / ".." / "out" / "metrics.csv"])
    with pytest.raises(InputError, match="already exists; pass --force"):
        check_outputs(outputs, False, [])
    check_outputs(outputs, True, [])


# ---------------------------------------------------------------------------------------------
# Command line and files
# ---------------------------------------------------------------------------------------------

def test_grid_mismatch_is_a_one_line_error(tmp_path: Path) -> None:
    _, label = phantom()
    gt = write_nifti(tmp_path / "gt.nii.gz", label)
    pred = write_nifti(tmp_path / "pred.nii.gz", label, np.diag([1.0, 1.0, 2.5, 1.0]))
    result = medsaga("evaluate", pred, gt)
    assert_one_line_error(result, pred, str(gt), "prediction grid differs from the ground truth", "spacing")


def test_command_line_outputs(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=3)
    _, label = phantom()
    preds = tmp_path / "preds"
    write_nifti(preds / "case_000.nii.gz", label)  # exact
    worse = label.copy()
    worse[worse == 2] = 0  # lesion missed
    worse[0, 0, 0] = 1
    write_nifti(preds / "case_001.nii.gz", worse)
    write_nifti(preds / "stray.nii.gz", label)
    out = tmp_path / "out"
    result = medsaga("evaluate", preds, root, "--out", out, "--overlay", "--images", root, "--tolerance", "1.5")
    assert result.returncode == 0, result.stderr
    assert "case_002" in result.stderr and "stray" in result.stderr  # unmatched, on stderr
    assert "organ" in result.stdout and "lesion" in result.stdout  # names from the dataset's dataset.json

    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["case_id"], r["class_name"], r["status"]) for r in rows] == [
        ("case_000", "organ", "ok"), ("case_000", "lesion", "ok"),
        ("case_001", "organ", "ok"), ("case_001", "lesion", "missed")]
    assert float(rows[0]["dice"]) == 1.0 and float(rows[0]["hd95_mm"]) == 0.0 and float(rows[0]["nsd"]) == 1.0
    assert rows[3]["hd95_mm"] == "" and float(rows[3]["dice"]) == 0.0 and rows[3]["gt_voxels"] == "27"
    assert float(rows[2]["dice"]) == pytest.approx(2 * 108 / (108 + 109))  # one stray voxel of organ

    document = json.loads((out / "metrics.json").read_text())
    assert document["tolerance_mm"] == 1.5
    assert document["unmatched"] == {"predictions_without_ground_truth": ["stray"],
                                     "ground_truth_without_prediction": ["case_002"]}
    lesion = document["mean"][1]
    assert (lesion["name"], lesion["cases_with_gt"], lesion["missed"], lesion["dice"]) == ("lesion", 2, 1, 0.5)
    assert lesion["hd95_mm"] == 0.0 and lesion["cases_with_both"] == 1
    assert document["cases"][1]["classes"][1]["hd95_mm"] is None

    for case in ("case_000", "case_001"):
        height, width, _ = _png_pixels((out / "overlays" / f"{case}.png").read_bytes()).shape
        assert (width, height) == (3 * MIN_PANEL + 2 * GAP, 12 * MIN_PANEL // 16)

    again = medsaga("evaluate", preds, root, "--out", out)
    assert_one_line_error(again, out / "metrics.csv", "already exists", "--force")


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------

def test_real_label_against_itself() -> None:
    labels = need_shared("malf-brain-t1", "labelsTr", "MALF_1000.nii.gz")
    result = evaluate(labels, labels, labels=SHARED_DATA / "malf-brain-t1" / "dataset.json")
    assert [c.name for c in result.classes.classes] == ["csf", "grey_matter", "white_matter"]
    for metrics in result.cases[0].metrics.values():
        assert (metrics.dice, metrics.hd95_mm, metrics.nsd, metrics.status) == (1.0, 0.0, 1.0, "ok")


def test_option_errors_come_first(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    _, label = phantom()
    preds = tmp_path / "preds"
    write_nifti(preds / "case_000.nii.gz", label)
    result = medsaga("evaluate", preds, root, "--strict")
    assert_one_line_error(result, preds, "--strict", "case_001")
    result = medsaga("evaluate", preds, root, "--overlay", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: --overlay needs --images (the scans to draw the labels on)"
