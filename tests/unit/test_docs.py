"""The repository carries its own design: documents link only to files inside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from carebus.runtime.config import PROJECT_ROOT

DOCUMENTS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
# [text](target) with a relative target (not a URL, not an in-page anchor).
_LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_name_files_of_the_repository(document: Path) -> None:
    """Every relative link resolves to a file inside the repository."""
    for target in _LINK.findall(document.read_text(encoding="utf-8")):
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(PROJECT_ROOT), (document.name, target)
        assert resolved.exists(), (document.name, target)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_no_document_sends_readers_outside_the_repository(document: Path) -> None:
    """The design and the sources are in docs/, not in a folder beside the clone."""
    assert "../shared" not in document.read_text(encoding="utf-8"), document.name


def test_the_design_and_its_sources_are_in_docs() -> None:
    """docs/design.md and docs/sources.md exist and the README links to both."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("design.md", "sources.md", "authority.md"):
        assert (PROJECT_ROOT / "docs" / name).exists()
        assert f"docs/{name}" in readme
