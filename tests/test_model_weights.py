"""``medsaga weights``: the table of known files and ``verify`` on small synthetic files."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from cli import weights_cmd
from medsaga.errors import InputError
from medsaga.model import weights
from medsaga.model.build import build_sam
from medsaga.model.weights import KNOWN_WEIGHTS, KnownWeights, file_digests, identify, verify_weights

HEX = re.compile(r"[0-9a-f]+")


@lru_cache(maxsize=1)
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_sam("tiny", num_classes=3, image_size=256).state_dict()


def tiny_file(path: Path) -> Path:
    torch.save(tiny_state(), path)
    return path


def app() -> typer.Typer:
    """A local app with the command registered as cli/main.py will register it."""
    root = typer.Typer()

    @root.callback()
    def main() -> None:
        """medsaga"""

    weights_cmd.register(root)
    return root


def test_known_files_are_well_formed() -> None:
    names = [known.filename for known in KNOWN_WEIGHTS]
    assert names == ["sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth", "medsam_vit_b.pth",
                     "lite_medsam.pth"]
    for known in KNOWN_WEIGHTS:
        assert known.model_type in ("vit_b", "vit_l", "vit_h", "litemedsam")
        assert known.sha256 is None or (len(known.sha256) == 64 and HEX.fullmatch(known.sha256))
        assert known.md5 is None or (len(known.md5) == 32 and HEX.fullmatch(known.md5))
        assert known.url.startswith("https://") and known.checksum_source
        if known.filename.startswith("sam_"):
            assert known.url == "https://dl.fbaipublicfiles.com/segment_anything/" + known.filename
            # The official names end in the first 6 hex digits of the file's MD5.
            assert known.md5 is not None and known.md5.startswith(known.filename[-10:-4])
    assert len({known.sha256 for known in KNOWN_WEIGHTS}) == len(KNOWN_WEIGHTS)


def test_digests_are_streamed_and_match_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 40_000  # ~10 MB: more than one 8 MiB read
    path.write_bytes(data)
    seen: list[int] = []
    digests = file_digests(path, progress=seen.append)
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.md5 == hashlib.md5(data).hexdigest()
    assert digests.size_bytes == len(data) == sum(seen) and len(seen) == 2


def test_verify_an_unknown_sam_file(tmp_path: Path) -> None:
    result = verify_weights(tiny_file(tmp_path / "my_model.pth"))
    assert result.known is None and result.named_as is None and not result.mismatch
    assert result.model_type == "tiny" and result.num_masks == 4
    assert result.md5_matches_name is None
    assert result.digests.sha256 == hashlib.sha256((tmp_path / "my_model.pth").read_bytes()).hexdigest()


def test_verify_recognises_a_known_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tiny_file(tmp_path / "renamed.pth")
    digests = file_digests(path)
    entry = KnownWeights(filename="sam_tiny_test.pth", model_type="vit_b", publisher="test", url="https://example",
                         size_bytes=digests.size_bytes, sha256=digests.sha256, md5=None, checksum_source="test")
    monkeypatch.setattr(weights, "KNOWN_WEIGHTS", (entry,))
    assert identify(digests) is entry
    result = verify_weights(path)
    assert result.known is entry and not result.mismatch  # renamed, still recognised by content
    md5_only = KnownWeights(**{**entry.__dict__, "sha256": None, "md5": digests.md5})
    monkeypatch.setattr(weights, "KNOWN_WEIGHTS", (md5_only,))
    assert identify(digests) is md5_only


def test_an_official_name_on_other_content_is_a_mismatch(tmp_path: Path) -> None:
    result = verify_weights(tiny_file(tmp_path / "sam_vit_b_01ec64.pth"))
    assert result.named_as is not None and result.named_as.model_type == "vit_b"
    assert result.known is None and result.mismatch
    assert result.md5_matches_name is (result.digests.md5.startswith("01ec64"))


def test_a_broken_file_named_like_an_official_one(tmp_path: Path) -> None:
    path = tmp_path / "sam_vit_h_4b8939.pth"
    path.write_bytes(tiny_file(tmp_path / "x.pth").read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated or corrupt.*the name says sam_vit_h_4b8939.pth"):
        verify_weights(path)
    only_hashes = verify_weights(path, load=False)
    assert only_hashes.mismatch and only_hashes.model_type is None


def test_a_file_that_is_not_sam_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(3, 3).state_dict(), path)
    with pytest.raises(InputError, match="not a SAM state dict"):
        verify_weights(path)
    with pytest.raises(InputError, match="no such file"):
        verify_weights(tmp_path / "absent.pth")


def test_cli_lists_the_known_files() -> None:
    result = CliRunner().invoke(app(), ["weights"])
    assert result.exit_code == 0, result.output
    for known in KNOWN_WEIGHTS:
        for value in (known.filename, known.sha256 or "unknown (not published)", known.url,
                      known.md5 or "unknown (not published)", f"{known.size_bytes:,} bytes"):
            assert value in result.output, value
    assert "never downloads" in result.output


def test_cli_verify_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app(), ["weights", "verify", str(tiny_file(tmp_path / "mine.pth"))])
    assert unknown.exit_code == 0, unknown.output
    assert "unknown: not one of the published files" in unknown.output
    assert "SAM tiny state dict, 4 mask outputs" in unknown.output

    mislabeled = runner.invoke(app(), ["weights", "verify", str(tiny_file(tmp_path / "sam_vit_l_0b3195.pth"))])
    assert mislabeled.exit_code == 1
    assert "named sam_vit_l_0b3195.pth but its SHA-256 differs" in mislabeled.output
    assert "not published by Meta" in mislabeled.output

    bad = tmp_path / "bad.pth"
    bad.write_text("not weights")
    refused = runner.invoke(app(), ["weights", "verify", str(bad)])
    # InputError propagates to cli.main.run, which prints one line and exits 2.
    assert isinstance(refused.exception, InputError) and "not a PyTorch checkpoint" in str(refused.exception)
