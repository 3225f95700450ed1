"""The documentation: README.md for a newcomer, docs/ as the reference, built as a site by MkDocs."""

import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

DOCS = REPO / "docs"
README = REPO / "README.md"
# [text](target) and ![alt](target); targets without a scheme are files in the repository.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def nav_pages(nav) -> list[str]:
    """The page files named in mkdocs.yml's nav, at any depth."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def heading_anchors(markdown: str) -> set[str]:
    """Anchors of the headings as GitHub makes them (lower case, punctuation dropped, spaces to '-')."""
    text = re.sub(r"^(```|    ).*$", "", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    in_nav = nav_pages(config["nav"])
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert len(in_nav) == len(set(in_nav)), f"a page is twice in mkdocs.yml's nav: {in_nav}"
    assert sorted(in_nav) == pages, "mkdocs.yml's nav and the pages in docs/ differ"


def test_readme_links_resolve_and_reach_every_docs_page():
    readme = README.read_text()
    linked = set()
    for target in LINK.findall(readme):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (REPO / path).resolve()
        assert file.is_file(), f"README.md links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_anchors(file.read_text()), f"README.md links to {target}: no such heading"
        linked.add(file)
    unlinked = sorted(p.name for p in DOCS.glob("*.md") if p.resolve() not in linked)
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_readme_keeps_the_two_commands():
    readme = README.read_text()
    assert "make run" in readme and "make test" in readme


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="building the site needs mkdocs (`make docs` installs advrun[docs])")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True,
    )
    problems = [line for line in proc.stderr.splitlines() if not line.startswith("INFO")]
    assert proc.returncode == 0, "\n".join(problems) or proc.stderr
    built = {p.stem for p in (tmp_path / "site").glob("*.html")}
    assert built >= {p.stem for p in DOCS.glob("*.md")}
    assert (tmp_path / "site" / "adversarial_gallery.png").is_file()
