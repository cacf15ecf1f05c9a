"""``medsaga select``: the selection rules, the descriptor cache, the outputs, the errors, and the
list feeding ``medsaga finetune --cases``."""

from __future__ import annotations

import io
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image  # matplotlib's own dependency

from medsaga.errors import InputError
from medsaga.select.embed import tissue_slices
from medsaga.select.pick import pairwise_distances, pick
from medsaga.select.run import SelectOptions, select
from tests.dataset_factory import make_nnunet, phantom, write_nifti
from tests.cli_helpers import assert_one_line_error, medsaga

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"


# --- the rules --------------------------------------------------------------------------------

def _clusters() -> np.ndarray:
    """Tight groups of 5 and 4 points 3 apart, and one outlier 6 from the first."""
    rng = np.random.default_rng(0)
    groups = [rng.normal(centre, 0.05, (count, 2)) for centre, count in (((0, 0), 5), ((3, 0), 4), ((0, 6), 1))]
    return np.concatenate(groups)


def test_pairwise_distances_are_euclidean() -> None:
    points = np.random.default_rng(1).normal(size=(6, 5))
    expected = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert np.allclose(pairwise_distances(points), expected, atol=1e-12)
    assert np.all(np.diag(pairwise_distances(points)) == 0)


def test_first_pick_is_the_medoid_for_both_rules() -> None:
    distances = pairwise_distances(_clusters())
    medoid = int(np.argmin(distances.sum(axis=1)))
    assert pick(distances, 1, "kcenter").indices.tolist() == [medoid]
    assert pick(distances, 1, "kmedoids").indices.tolist() == [medoid]


def test_kcenter_covers_the_outlier_and_kmedoids_the_groups() -> None:
    distances = pairwise_distances(_clusters())
    center = pick(distances, 2, "kcenter")
    medoids = pick(distances, 2, "kmedoids")
    assert 9 in center.indices  # the outlier: farthest from the first pick
    groups = {0: range(0, 5), 1: range(5, 9)}
    assert {next(g for g, members in groups.items() if i in members) for i in medoids.indices} == {0, 1}
    assert center.radius[-1] < medoids.radius[-1]  # each wins its own objective
    assert medoids.cost[-1] < center.cost[-1]


@pytest.mark.parametrize("seed", range(5))
def test_kcenter_radius_within_twice_the_optimum_and_kmedoids_a_local_optimum(seed: int) -> None:
    points = np.random.default_rng(seed).normal(size=(9, 4))
    distances = pairwise_distances(points)
    k = 3
    combos = [list(c) for c in itertools.combinations(range(9), k)]
    best_radius = min(distances[c].min(axis=0).max() for c in combos)
    center = pick(distances, k, "kcenter")
    assert center.radius[-1] <= 2 * best_radius + 1e-12  # Gonzalez's guarantee
    assert np.all(np.diff(center.radius) <= 1e-12)  # each pick can only shrink the radius
    medoids = pick(distances, k, "kmedoids")
    cost = distances[medoids.indices].min(axis=0).sum()
    chosen = set(medoids.indices.tolist())
    for slot, out in itertools.product(list(chosen), set(range(9)) - chosen):
        swapped = list(chosen - {slot} | {out})
        assert distances[swapped].min(axis=0).sum() >= cost - 1e-9
    assert medoids.cost[-1] == pytest.approx(cost / 9)
    assert len(chosen) == k


def test_pick_refuses_impossible_requests() -> None:
    distances = pairwise_distances(np.eye(3))
    with pytest.raises(ValueError, match="cannot pick 4 of 3"):
        pick(distances, 4)
    with pytest.raises(ValueError, match="unknown selection rule"):
        pick(distances, 1, "random")


def test_tissue_slices_spread_over_the_slices_that_hold_tissue() -> None:
    images = np.zeros((40, 3, 16, 16), np.float32)
    images[10:30, :, 4:12, 4:12] = 0.8  # tissue on slices 10..29 only
    chosen = tissue_slices(images, 4)
    assert chosen.tolist() == [12, 17, 22, 27]
    assert tissue_slices(np.zeros((5, 3, 8, 8), np.float32), 3).tolist() == [0, 2, 4]  # no tissue: all slices
    assert np.all(np.diff(tissue_slices(images, 30)) >= 0)  # more slices asked than held: repeats, in order


# --- end to end on small cohorts (tiny random-weight encoder: seconds) --------------------------

def _options(folder: Path, out: Path, cache: Path | None, **changes) -> SelectOptions:
    base = dict(folder=folder, shots=2, out=out, model="tiny", random_init=True, image_size=64, slices=3,
                cache_dir=cache)
    return SelectOptions(**{**base, **changes})


def _nifti_folder(root: Path, count: int = 5) -> Path:
    """A plain folder of NIfTI scans (no labels), of varied content."""
    for index in range(count):
        image, _ = phantom(shape=(16, 12, 6 + index), seed=index)
        write_nifti(root / f"scan_{index}.nii.gz", (image * (1 + index)).astype(np.int16))
    return root


def test_select_on_a_folder_of_nifti_files_writes_the_list_the_table_and_the_map(tmp_path: Path) -> None:
    folder = _nifti_folder(tmp_path / "scans")
    selection = select(_options(folder, tmp_path / "sel", tmp_path / "cache", shots=3))
    document = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert document["cases"] == selection.cases and len(set(selection.cases)) == 3
    assert set(selection.cases) <= {f"scan_{i}" for i in range(5)}
    assert (tmp_path / "sel" / "cases.txt").read_text().strip() == ",".join(selection.cases)
    with Image.open(tmp_path / "sel" / "cohort_map.png") as picture:
        assert picture.format == "PNG" and picture.width > 600 and picture.height > 600
    assert [row["rank"] for row in document["picks"]] == [1, 2, 3]
    assert document["picks"][0]["distance_to_earlier_picks"] is None
    assert all(row["distance_to_earlier_picks"] > 0 for row in document["picks"][1:])
    assert sum(row["stands_for"] for row in document["picks"]) == 5
    assert len(document["scan_table"]) == 5 and document["cache"]["hits"] == 0
    sizes = {row["case_id"]: row["shape"] for row in document["scan_table"]}
    assert sizes["scan_4"] == [16, 12, 10]
    assert document["embedding"]["descriptor_length"] == 3 * 256


def test_descriptors_are_cached_by_content_not_by_name(tmp_path: Path) -> None:
    folder = _nifti_folder(tmp_path / "scans", count=4)
    first = select(_options(folder, tmp_path / "a", tmp_path / "cache")).document
    shutil.move(folder / "scan_0.nii.gz", folder / "renamed.nii.gz")  # same bytes, new name
    image, _ = phantom(shape=(16, 12, 7), seed=9)
    write_nifti(folder / "scan_1.nii.gz", image)  # new bytes, same name
    second = select(_options(folder, tmp_path / "b", tmp_path / "cache")).document
    assert second["cache"]["hits"] == 3  # scan_0 (renamed), scan_2, scan_3; scan_1 recomputed
    without = select(_options(folder, tmp_path / "c", None)).document
    assert without["cases"] == second["cases"]  # the cache changes nothing but the time
    assert first["embedding"] == second["embedding"]


def test_select_on_nnunet_layout_without_labels(tmp_path: Path) -> None:
    data = make_nnunet(tmp_path / "data", n_cases=4)
    shutil.rmtree(data / "labelsTr")
    selection = select(_options(data, tmp_path / "sel", tmp_path / "cache", shots=2, rule="kcenter"))
    assert len(selection.cases) == 2 and set(selection.cases) <= {f"case_{i:03d}" for i in range(4)}
    assert selection.document["layout"] == "nnunet" and selection.document["rule"] == "kcenter"
    assert not any(row["labelled"] for row in selection.document["scan_table"])


def test_cli_select_then_finetune_takes_and_records_the_selection(tmp_path: Path) -> None:
    result = medsaga("select", SAMPLE, "--shots", "2", "--model", "tiny", "--random-init", "--image-size", "64",
                     "--slices", "2", "--out", tmp_path / "sel", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "2 of 8 scans" in result.stdout and "coverage radius" in result.stdout
    picks = json.loads((tmp_path / "sel" / "selection.json").read_text())["cases"]
    run = tmp_path / "run"
    result = medsaga("finetune", SAMPLE, "--cases", tmp_path / "sel" / "selection.json", "--model", "tiny",
                     "--image-size", "64", "--steps", "1", "--batch-size", "2", "--out", run)
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"]["train_cases"] == picks
    recorded = config["dataset"]["selection"]
    assert recorded["file"] == str((tmp_path / "sel" / "selection.json").resolve())
    assert recorded["rule"] == "kmedoids" and len(recorded["sha256"]) == 64  # kmedoids: the default rule
    assert config["options"]["selection"] == recorded  # and --resume rebuilds the options with it


def test_case_list_reads_ids_text_files_and_selections(tmp_path: Path) -> None:
    from medsaga.select.case_list import parse_cases

    assert parse_cases("a, b,c") == (("a", "b", "c"), None)
    assert parse_cases(None) == ((), None)
    text = tmp_path / "cases.txt"
    text.write_text("a,b\nc\n")
    cases, provenance = parse_cases(str(text))
    assert cases == ("a", "b", "c") and provenance["file"] == str(text.resolve())
    broken = tmp_path / "selection.json"
    broken.write_text("{}")
    with pytest.raises(InputError, match="not a medsaga selection"):
        parse_cases(str(broken))
    with pytest.raises(InputError, match="no such file"):
        parse_cases(str(tmp_path / "missing.json"))


# --- errors: one line, exit 2, before any scan is embedded -------------------------------------

def test_cli_errors_name_the_file(tmp_path: Path) -> None:
    folder = _nifti_folder(tmp_path / "scans", count=3)
    common = ("--model", "tiny", "--random-init", "--image-size", "64", "--no-cache")
    assert_one_line_error(medsaga("select", tmp_path / "nowhere", *common, "--out", tmp_path / "o"),
                          tmp_path / "nowhere", "not found")
    assert_one_line_error(medsaga("select", folder, "--shots", "4", *common, "--out", tmp_path / "o"),
                          folder, "--shots 4 is more than the 3 scans")
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert_one_line_error(medsaga("select", folder, "--shots", "1", *common, "--out", existing), existing,
                          "already exists")
    assert_one_line_error(medsaga("select", folder, "--shots", "1", *common, "--out", existing, "--force"),
                          existing, "not a medsaga selection folder")
    assert (existing / "notes.txt").read_text() == "mine"
    assert_one_line_error(medsaga("select", folder, "--shots", "1", *common, "--out", tmp_path),
                          tmp_path, "would contain the input folder")
    (folder / "scan_9.nii.gz").write_bytes(b"not a nifti file at all")
    assert_one_line_error(medsaga("select", folder, "--shots", "1", *common, "--out", tmp_path / "o"),
                          folder / "scan_9.nii.gz")
    assert not (tmp_path / "o").exists()
    result = medsaga("select", folder, "--shots", "1", "--rule", "best", *common, "--out", tmp_path / "o")
    assert result.returncode == 2 and result.stderr == "error: unknown --rule 'best'; choose one of: kcenter, kmedoids\n"


def test_cohort_map_marks_the_picks_where_the_principal_plane_puts_them() -> None:
    from matplotlib.colors import to_rgb

    from medsaga.select.cohort_map import PICK, SCAN, cohort_figure, principal_plane, render_cohort_map

    descriptors = np.array([[0.0, 0, 0], [10, 0, 0], [0, 5, 0], [10, 5, 0.1]])
    coordinates, explained = principal_plane(descriptors)
    assert explained[0] == pytest.approx(0.8, abs=0.01) and explained.sum() == pytest.approx(1.0, abs=1e-3)
    assert abs(coordinates[1, 0] - coordinates[0, 0]) == pytest.approx(10, abs=0.01)  # distances kept on PC 1
    arguments = (coordinates, explained, ["a", "b", "c", "d"], [1], np.zeros(4, int), "title")
    # The pick is drawn where the principal plane puts it, the three other scans where it puts them.
    axes = cohort_figure(*arguments).axes[0]
    drawn = {collection.get_label(): collection.get_offsets() for collection in axes.collections}
    np.testing.assert_allclose(drawn["picks"], coordinates[[1]])
    np.testing.assert_allclose(drawn["scans"], coordinates[[0, 2, 3]])
    texts = {text.get_text() for text in axes.texts}
    assert {"1: b", "a", "c", "d"} <= texts
    assert axes.get_xlabel() == "principal component 1 (80% of the variance)"
    # The PNG: the pick's vermillion square and the scans' grey dots are on it.
    with Image.open(io.BytesIO(render_cohort_map(*arguments))) as picture:
        assert picture.format == "PNG" and min(picture.size) > 600
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    for colour, least in ((PICK, 9 * 9), (SCAN, 3 * 5 * 5)):
        near = (np.abs(pixels - np.round(np.array(to_rgb(colour)) * 255)).max(axis=2) <= 8).sum()
        assert near >= least, (colour, near)