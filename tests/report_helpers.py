"""Helpers for the report tests and for docs/report.png: plausible predictions made from the sample
data's reference labels, headless Chromium (Debian's ``chromium``) to open the pages, and a
reader of the pages' tables, pictures and links (:class:`Page`).

The predictions are the reference with the mistakes a model makes (a structure one voxel too thin,
one shifted, a slab of one missed, a false blob), so the page has errors to show and the tests
need no model: writing them takes well under a second.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
CASES = ("phantom_006", "phantom_007", "phantom_008")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def write_sample_predictions(folder: Path, cases: tuple[str, ...] = CASES) -> list[Path]:
    """Write ``folder/CASE.nii.gz`` for ``cases``: the sample reference with a mistake per case."""
    import nibabel as nib
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, case in enumerate(cases):
        reference = nib.load(SAMPLE / "labelsTr" / f"{case}.nii.gz")
        labels = np.asarray(reference.dataobj).astype(np.uint8)
        predicted = labels.copy()
        if number % 3 == 0:  # the liver one voxel too thin, and a false spleen blob beside it
            liver = labels == 1
            predicted[liver & ~ndimage.binary_erosion(liver)] = 0
            centre = np.array(labels.shape) // 2
            blob = tuple(slice(c - 2, c + 2) for c in centre)
            predicted[blob] = np.where(predicted[blob] == 0, 3, predicted[blob])
        elif number % 3 == 1:  # the kidney shifted by three voxels along the first axis
            kidney = labels == 2
            predicted[kidney] = 0
            predicted[np.roll(kidney, 3, axis=0) & (predicted == 0)] = 2
        else:  # the spleen missed on a slab of slices
            spleen = np.argwhere(labels == 3)
            if spleen.size:
                top = int(spleen[:, 2].max())
                slab = predicted[:, :, max(top - 3, 0):top + 1]
                slab[slab == 3] = 0
        image = nib.Nifti1Image(predicted, reference.affine, reference.header)
        image.set_data_dtype(np.uint8)
        path = folder / f"{case}.nii.gz"
        nib.save(image, path)
        written.append(path)
    return written


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable on PATH, or ``None``."""
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def chromium_command(chromium: str, profile: Path, *options: str) -> list[str]:
    """A headless Chromium command line that needs no display, no sandbox (CI runs as root), no
    network and writes its profile into ``profile``."""
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            f"--user-data-dir={profile}", *options]


def dump_dom(chromium: str, page: Path, timeout: float = 120) -> str:
    """The page's DOM after it loaded and its scripts ran (``--dump-dom``)."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(chromium_command(chromium, Path(profile), "--virtual-time-budget=5000",
                                                 "--dump-dom", page.resolve().as_uri()),
                                capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or "<body" not in result.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def screenshot(chromium: str, page: Path, png: Path, size: tuple[int, int] = (1400, 2400),
               timeout: float = 120) -> Path:
    """Write a screenshot of ``page`` (``size`` = window width, height in CSS pixels) to ``png``."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(chromium_command(chromium, Path(profile), "--virtual-time-budget=5000",
                                                 f"--window-size={size[0]},{size[1]}", f"--screenshot={png}",
                                                 page.resolve().as_uri()),
                                capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium --screenshot failed ({result.returncode}): {result.stderr[-2000:]}")
    return png


class Page(HTMLParser):
    """A page's elements as data: every ``<img>``'s attributes, every element with an ``id``, the
    rows of each table (``tr`` attributes, then each cell's attributes and text), and every
    ``src``/``href`` value."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tables: dict[str, list[tuple[dict[str, str], list[tuple[dict[str, str], str]]]]] = {}
        self.body: dict[str, str] = {}
        self.meta: list[dict[str, str]] = []
        self.ids: set[str] = set()
        self._table: str | None = None
        self._cell: tuple[dict[str, str], list[str]] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag == "img":
            self.images.append(a)
        elif tag == "body":
            self.body = a
        elif tag == "meta":
            self.meta.append(a)
        elif tag == "table":
            self._table = a.get("id", f"table-{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append((a, []))
        elif tag in ("td", "th") and self._table is not None and self.tables[self._table]:
            self._cell = (a, [])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1][1].append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1].append(data)

    def cells(self, table: str, **row: str) -> dict[str, tuple[str, str]]:
        """``metric → (data-value, text)`` of the first row of ``table`` whose attributes include ``row``
        (``data_case="x"`` matches ``data-case="x"``)."""
        wanted = {key.replace("_", "-"): value for key, value in row.items()}
        for attrs, cells in self.tables[table]:
            if all(attrs.get(k) == v for k, v in wanted.items()):
                return {a["data-metric"]: (a["data-value"], text) for a, text in cells if "data-metric" in a}
        raise AssertionError(f"no row {wanted} in {table}")


def fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def assert_number(cell: tuple[str, str], value: float | None, digits: int) -> None:
    """A table cell holds ``value``: exactly in ``data-value``, rounded as the terminal in its text."""
    data, text = cell
    if value is None:
        assert (data, text) == ("", "–")
    else:
        assert float(data) == value and text == fmt(value, digits), (cell, value)


def assert_offline(page: Page, text: str) -> None:
    """Nothing on the page is fetched: every picture is a data: URI, no link leaves the page, and a
    Content-Security-Policy forbids any other source."""
    from medsaga.report.page import CSP

    assert page.images and all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert all(link.startswith(("data:", "#")) for link in page.links), [link[:60] for link in page.links]
    assert {"http-equiv": "Content-Security-Policy", "content": CSP} in page.meta
    assert "default-src 'none'" in CSP
    assert not re.search(r"https?://|//cdn|<link\b|<script[^>]*\bsrc=", text)
