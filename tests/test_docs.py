"""The documentation stays true to the code and to itself: the configuration reference is generated from the
settings and current, the README stays short, and every relative link leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from phi3_pipeline.cli.reference import REGENERATE, configuration_markdown, settings_rows

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 260
LINKED_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
               ROOT / "CHANGELOG.md"]

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text without code blocks and code spans (a `[x](y)` inside code is no link)."""
    return CODE_SPAN.sub("", FENCED_BLOCK.sub("", text))


def _relative_links(path: Path) -> list[str]:
    links = LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link, re.IGNORECASE)]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens kept), spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(heading) for heading in HEADING.findall(FENCED_BLOCK.sub("", path.read_text(encoding="utf-8")))}


def test_the_configuration_reference_is_current():
    current = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == configuration_markdown(), f"docs/configuration.md is stale; regenerate it: {REGENERATE}"


def test_the_configuration_reference_names_every_setting():
    markdown = configuration_markdown()
    missing = [".".join(path) for path, _ in settings_rows() if f"| `{'.'.join(path)}` |" not in markdown]
    assert missing == []


def test_the_configuration_reference_is_deterministic():
    assert configuration_markdown() == configuration_markdown()


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move depth into docs/")


def test_every_relative_link_points_to_an_existing_file():
    broken = []
    for doc in LINKED_DOCS:
        for link in _relative_links(doc):
            target = link.split("#", 1)[0]
            if target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {link}")
    assert broken == [], "links to files that do not exist:\n" + "\n".join(broken)


def test_every_link_to_a_heading_finds_it():
    broken = []
    for doc in LINKED_DOCS:
        for link in _relative_links(doc):
            target, _, anchor = link.partition("#")
            page = (doc.parent / target) if target else doc
            if anchor and page.suffix == ".md" and page.exists() and anchor not in _anchors(page):
                broken.append(f"{doc.relative_to(ROOT)}: {link}")
    assert broken == [], "links to headings that do not exist:\n" + "\n".join(broken)
