"""The quality benchmark's comparison page (``benchmarks/quality_vs_baselines.py --page``, issue 30).

Fake records and tiny predictions made from the test phantoms (each contender with its own
mistake) stand in for a benchmark run: ``--table-only`` writes OUT/report.html, whose tables must
hold the records' figures (exactly in ``data-value``, as the Markdown table in the text), and
whose overlays show every contender with predictions on the same slice of each test case. Chromium
opens the page offline and reports that every picture decoded (skipped without Chromium).
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image  # matplotlib's own dependency

from tests.dataset_factory import make_nnunet, write_nifti
from tests.report_helpers import Page, assert_offline, dump_dom, find_chromium

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality_vs_baselines as qvb  # noqa: E402

TASK, OTHER = "chaos-mr-abdomen", "malf-brain-t1"
CASES = ("case_000", "case_001")
LABELS = {"background": 0, "liver": 1, "spleen": 2}
# Contenders with predictions, and each one's mistake (None: the reference itself).
MISTAKES = {"unet": "shift", "medsaga-default": "miss-spleen", "medsaga-best": None}


def _record(task: str, k: int, contender: str, number: int) -> dict:
    """A record with figures no two of which are equal, some needing rounding and grouping."""
    dice = {"liver": 0.61234 + 0.1 * number, "spleen": None if contender == "unet" else 0.40001 + 0.05 * number}
    return {"task": task, "k": k, "contender": contender, "train_cases": ["x"], "test_cases": list(CASES),
            "test_slices": 0, "budget_seconds": 600.0, "budget_clock": "cpu", "seed": 0,
            "classes": {"liver": {"dice": dice["liver"], "hd95": 12.345 + number, "nsd": 0.5},
                        "spleen": {"dice": dice["spleen"], "hd95": None if dice["spleen"] is None else 7.25,
                                   "nsd": None}},
            "mean_dice": sum(v or 0.0 for v in dice.values()) / 2,
            "wall_seconds": {"finetune" if contender.startswith("medsaga") else "train": 598.4 + number},
            "cpu_seconds_all_commands": 1234.6 + number, "trained": {"steps": 1500 + 250 * number}}


def _predicted(label: np.ndarray, mistake: str | None) -> np.ndarray:
    if mistake == "shift":
        return np.roll(label, 2, axis=0)
    if mistake == "miss-spleen":
        return np.where(label == 2, 0, label).astype(label.dtype)
    return label.copy()


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """Records for two tasks (the first with predictions of three contenders, the second with none,
    as where records came from another machine), and the page ``--table-only`` writes."""
    root = tmp_path_factory.mktemp("quality")
    data, out, records_folder = root / "data", root / "out", root / "records"
    make_nnunet(data / TASK, n_cases=len(CASES), channels=("MRI",), labels=LABELS)
    records = []
    for number, contender in enumerate(["unet", "medsaga-default", "medsaga-best"]):
        records.append(_record(TASK, 2, contender, number))
        run = out / TASK / "k2" / contender
        cases = []
        for case in CASES:
            label = np.asarray(nib.load(data / TASK / "labelsTr" / f"{case}.nii.gz").dataobj).astype(np.uint8)
            write_nifti(run / "predictions" / f"{case}.nii.gz", _predicted(label, MISTAKES[contender]))
            cases.append({"case_id": case, "classes": [
                {"value": 1, "name": "liver", "dice": 0.9 - 0.1 * number, "status": "ok"},
                {"value": 2, "name": "spleen", "dice": 0.5 + 0.2 * number, "status": "ok"}]})
        metrics = {"mean": [{"value": 1, "name": "liver"}, {"value": 2, "name": "spleen"}], "cases": cases}
        (run / "evaluation").mkdir(parents=True)
        (run / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    records.append(_record(TASK, 1, "nnunet", 3))  # K = 1: a record, no predictions
    records.append(_record(OTHER, 2, "unet", 4))
    records_folder.mkdir()
    for record in records:
        (records_folder / f"{record['task']}-k{record['k']}-{record['contender']}.json").write_text(
            json.dumps(record))
    assert qvb.main(["--table-only", "--records", str(records_folder), "--out", str(out), "--data", str(data)]) == 0
    return out / "report.html", data, records


def _markdown_rows(records: list[dict]) -> dict[tuple[str, int, str], list[str]]:
    """``(task, K, contender)`` → the Markdown row's cells after K and contender."""
    rows, task = {}, None
    for line in qvb.markdown(records).splitlines():
        if line.startswith("### "):
            task = line[4:]
        elif line.startswith("| ") and task in qvb.TASKS and not line.startswith("| K "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(task, int(cells[0]), cells[1])] = cells[2:]
    return rows


def test_tables_hold_the_records_figures_as_the_markdown_does(benchmark) -> None:
    path, _, records = benchmark
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert_offline(page, text)
    # Summary: every record's mean Dice, in its task, K and contender's cell; the best of a row in bold.
    for record in records:
        data, shown = page.cells("summary-table", data_task=record["task"], data_k=str(record["k"]))[
            record["contender"]]
        assert float(data) == record["mean_dice"] and shown == f"{record['mean_dice']:.3f}"
    summary = page.cells("summary-table", data_task=TASK, data_k="2")
    assert summary["nnunet"] == ("", "–")  # no record
    best = max(r["mean_dice"] for r in records if r["task"] == TASK and r["k"] == 2)
    assert f'<td class="num best" data-metric="medsaga-best" data-value="{best!r}">' in text
    assert text.count('class="num best"') == 3 + 3  # the best of each summary row, and of each task and K
    # Each task's table: the record's exact figures, and the Markdown's text cell by cell.
    markdown = _markdown_rows(records)
    assert len(markdown) == len(records)
    for record in records:
        table = f"table-task-{record['task']}"
        cells = page.cells(table, data_k=str(record["k"]), data_contender=record["contender"])
        for name, values in record["classes"].items():
            assert cells[f"dice:{name}"][0] == ("" if values["dice"] is None else repr(values["dice"]))
        assert float(cells["mean_dice"][0]) == record["mean_dice"]
        assert float(cells["cpu_seconds"][0]) == record["cpu_seconds_all_commands"]
        assert float(cells["steps"][0]) == record["trained"]["steps"]
        hd95 = [v["hd95"] for v in record["classes"].values() if v["hd95"] is not None]
        assert float(cells["mean_hd95"][0]) == pytest.approx(sum(hd95) / len(hd95))
        shown = [text for _, text in cells.values()]
        assert shown == markdown[(record["task"], record["k"], record["contender"])], record["contender"]
    assert markdown[(TASK, 2, "unet")][-3:] == ["1,500", "598", "1,235"]  # steps, wall s, CPU s: grouped
    assert "Training budget per contender: 600 s of CPU time." in text


def test_each_contender_is_drawn_on_the_same_slices(benchmark) -> None:
    path, _, _ = benchmark
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    for case in CASES:
        shown = [img for img in page.images if img["alt"].startswith(f"{TASK} K=2 {case} axial: ")]
        names = [img["alt"].split(": ", 1)[1] for img in shown]
        assert names == ["manual labels", *MISTAKES], names  # the labels, then each contender in order
        pictures = []
        for img in shown:
            data = base64.b64decode(img["src"].split(",", 1)[1])
            with Image.open(io.BytesIO(data)) as picture:
                assert picture.format == "PNG" and (str(picture.width), str(picture.height)) == \
                    (img["width"], img["height"])
                pictures.append(np.asarray(picture.convert("RGB")))
        assert len({p.shape for p in pictures}) == 1 and max(pictures[0].shape[:2]) >= 256  # one crop for all
        # Each contender's own mistake: the perfect one differs from the others.
        assert not np.array_equal(pictures[1], pictures[3]) and not np.array_equal(pictures[2], pictures[3])
    # The captions: one slice for every contender of a case, the case Dice of each contender's metrics.json.
    slices = re.findall(r"manual labels \(outline\), axial (\d+) of (\d+)", text)
    assert len(slices) == len(CASES) and all(total == "6" for _, total in slices)
    assert "unet: case Dice 0.700;" in text and "medsaga-default: case Dice 0.750;" in text
    assert "medsaga-best: case Dice 0.800; no voxel differs here" in text  # medsaga-best is the reference
    assert "Drawn on case_000_0000.nii.gz (window mr)." in text
    for name in ("liver", "spleen"):
        assert f'{name} <span class="muted">(' in text
    # K = 1 and the other task: records without predictions here: said, nothing drawn.
    assert text.count("No predictions found") == 2
    assert not [img for img in page.images if img["alt"].startswith((f"{TASK} K=1", OTHER))]


def test_page_loads_every_picture_in_chromium(benchmark) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")
    path, _, _ = benchmark
    page = Page(dump_dom(chromium, path))
    images = len(page.images)
    assert images == len(CASES) * (1 + len(MISTAKES))
    assert page.body.get("data-images") == str(images) and page.body.get("data-images-loaded") == str(images)


def test_page_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--page writes elsewhere, --page-planes adds planes; no record: the page says so; a slab test set
    (MALF's central slices) is looked for where the runner wrote it."""
    (tmp_path / "records").mkdir()
    page = tmp_path / "elsewhere" / "page.html"
    assert qvb.main(["--table-only", "--records", str(tmp_path / "records"), "--out", str(tmp_path / "out"),
                     "--page", str(page), "--page-planes", "axial,coronal"]) == 0
    assert "No finished runs" in page.read_text(encoding="utf-8") and not (tmp_path / "out" / "report.html").exists()
    assert f"wrote {page}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        qvb.main(["--table-only", "--records", str(tmp_path / "records"), "--page-planes", "oblique"])
    images, labels = qvb._test_files(tmp_path / "data", ["a"], 64, tmp_path / "out" / "test")
    assert images == [tmp_path / "out" / "test" / "imagesTs" / "a_0000.nii.gz"]
    assert labels == tmp_path / "out" / "test" / "labelsTs"
    assert qvb._test_files(tmp_path / "data", ["a"], 0, tmp_path / "x") == \
        ([tmp_path / "data" / "imagesTr" / "a_0000.nii.gz"], tmp_path / "data" / "labelsTr")
