"""The documentation is a map that leads somewhere (issue 30, item 8): the README stays short, every
relative link in it and in ``docs/*.md`` reaches a file of the repository (and a heading there, when it
names one), and no link leaves the repository. No database, no Spark."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

#: [text](target) and ![alt](target); the target ends at the first space or closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def unfenced(text: str) -> str:
    """``text`` without fenced code blocks (a ``#`` or a link there is code)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def prose(text: str) -> str:
    """``text`` without code blocks and inline code (a link there is an example, not a link)."""
    return re.sub(r"`[^`\n]*`", "", unfenced(text))


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in unfenced(page.read_text(encoding="utf-8")).splitlines():
        if m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(pages: list[Path], root: Path) -> list[str]:
    """Every link of ``pages`` that leaves ``root`` or reaches no file (or no heading) there."""
    wrong = []
    for page in pages:
        for target in links(page):
            where = f"{page.relative_to(root)}: {target}"
            if SCHEME.match(target) or target.startswith(("/", "//")):
                wrong.append(f"{where}: leaves the repository")
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_relative_to(root):
                wrong.append(f"{where}: leaves the repository")
            elif not file.exists():
                wrong.append(f"{where}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                wrong.append(f"{where}: no heading #{anchor} in {file.relative_to(root)}")
    return wrong


def test_every_link_reaches_a_file_of_the_repository():
    assert PAGES[1:], "no pages under docs/"
    assert sum(len(links(p)) for p in PAGES) > 20        # the map has links to check at all
    assert broken_links(PAGES, ROOT) == []


def test_the_readme_is_a_short_map():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move sections to docs/"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text          # CI runs the README's two commands
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in text, f"the README's map does not link docs/{page.name}"


@pytest.mark.parametrize("target, problem", [
    ("missing.md", "no such file"),
    ("../../shared/DESIGN.md", "leaves the repository"),
    ("https://example.com/DESIGN.md", "leaves the repository"),
    ("design.md#no-such-heading", "no heading"),
])
def test_a_broken_link_is_found(tmp_path, target, problem):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "design.md").write_text("# Design\n\n## Semantics\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(f"# Page\n\nSee [it]({target}) and [the rules](design.md#semantics).\n"
                    f"```\n[in a code block](nowhere.md)\n```\n")
    wrong = broken_links([page], tmp_path.resolve())
    assert len(wrong) == 1 and problem in wrong[0], wrong
