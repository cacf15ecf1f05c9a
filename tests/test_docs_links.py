"""The documentation holds together: every relative link in README.md, CHANGELOG.md and docs/*.md
points to a file that exists (and, with ``#anchor``, to a heading that exists there, by GitHub's
anchor rules), and every command's page names its ``--help``. Reads files only: no subprocess."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
COMMANDS = ("inspect", "select", "finetune", "predict", "evaluate", "benchmark", "plan")

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) and ![alt](target); the text may span lines, the target has no spaces.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:...


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]
    return [f for f in files if f.is_file()]


def prose(text: str) -> str:
    """The text outside fenced code blocks, inline code blanked out (links there are not links)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            kept.append("")
            continue
        kept.append("" if fenced else line)
    return INLINE_CODE.sub(lambda m: " " * len(m.group(0)), "\n".join(kept))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, every character that is not a
    letter, digit, space, hyphen or underscore dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; a repeated one gets -1, -2... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(prose(path.read_text(encoding="utf-8")))]


def test_github_slug_follows_githubs_rules() -> None:
    assert github_slug("The report page (`--report`)") == "the-report-page---report"
    assert github_slug("Selected against random shots (`medsaga select` on MALF)") == \
        "selected-against-random-shots-medsaga-select-on-malf"
    assert github_slug("LiteMedSAM's encoder on a CPU") == "litemedsams-encoder-on-a-cpu"
    assert github_slug("Few-shot quality: every method on LiteMedSAM, MALF brain MRI") == \
        "few-shot-quality-every-method-on-litemedsam-malf-brain-mri"


def test_links_are_found_and_code_is_not_a_link() -> None:
    text = "see [a\npage](docs/x.md#y) and ![pic](report.png)\n`[not](a link)`\n```\n[nor](this)\n```\n"
    assert [m.group(1) for m in LINK.finditer(prose(text))] == ["docs/x.md#y", "report.png"]


def test_there_is_a_page_per_command_and_the_readme_links_them() -> None:
    readme = links(ROOT / "README.md")
    for command in COMMANDS:
        assert (DOCS / f"{command}.md").is_file(), f"docs/{command}.md is missing"
        assert f"docs/{command}.md" in readme, f"README.md does not link docs/{command}.md"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    broken = []
    for target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target}: no such file ({destination})")
            continue
        if anchor and destination.suffix == ".md" and unquote(anchor) not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor in {destination.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_page_names_its_help(command: str) -> None:
    page = DOCS / f"{command}.md"
    assert f"medsaga {command} --help" in page.read_text(encoding="utf-8"), \
        f"docs/{command}.md does not mention `medsaga {command} --help`"
