"""Helpers for the report tests and for docs/report.png: plausible predictions made from the sample
data's reference labels, and headless Chromium (Debian's ``chromium``) to open the pages.

The predictions are the reference with the mistakes a model makes (a structure one voxel too thin,
one shifted, a slab of one missed, a false blob), so the page has errors to show and the tests
need no model: writing them takes well under a second.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
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
