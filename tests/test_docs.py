"""The README stays a front page, and no link in it or in docs/ points at a file that is not there.
(`mkdocs build --strict` checks the site further, anchors included; this runs without mkdocs.)"""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md")), REPO / "data" / "README.md", REPO / "benchmarks" / "README.md"]

# [text](target) and [text](target "title"); images too. Fenced code and inline code are skipped.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _links_in(text: str) -> list[str]:
    return LINK.findall(INLINE_CODE.sub("", FENCE.sub("", text)))


def _links(page: Path) -> list[str]:
    return _links_in(page.read_text())


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, re.I)


def test_readme_is_a_front_page_of_at_most_250_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the detail into docs/"


def test_readme_keeps_the_two_commands():
    """CI runs the test command the README gives; a fresh machine starts from these two."""
    text = README.read_text()
    assert "bash scripts/demo.sh" in text
    assert "bash scripts/test.sh" in text


def test_the_docs_pages_exist_and_the_readme_links_to_them():
    assert (REPO / "mkdocs.yml").is_file()
    assert len(PAGES) > 10
    linked = {(README.parent / unquote(t.split("#")[0])).resolve() for t in _links(README) if _relative(t)}
    assert (REPO / "docs" / "getting-started.md").resolve() in linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file(page):
    broken = []
    for target in _links(page):
        if not _relative(target):
            continue
        path = unquote(target.split("#")[0])
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)} links to missing files: {broken}"


def test_the_link_check_sees_links():
    """A pattern that matched nothing would pass every page: check it on a known sample."""
    sample = '[a](x.md) ![b](img/y.png "t") [c](https://e.org) `[d](z.md)`\n```\n[e](w.md)\n```\n[f](#g)\n'
    assert _links_in(sample) == ["x.md", "img/y.png", "https://e.org", "#g"]
    assert [t for t in _links_in(sample) if _relative(t)] == ["x.md", "img/y.png"]
