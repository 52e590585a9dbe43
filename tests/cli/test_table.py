"""The README's command table is the parser's (``python -m monai_pipeline.cli.table`` writes it)."""

from __future__ import annotations

from monai_pipeline.cli.table import END, START, command_table
from tests.conftest import REPO


def test_readme_command_table_equals_the_parser():
    text = (REPO / "README.md").read_text()
    assert START in text and END in text
    shown = text[text.index(START) + len(START):text.index(END)].strip()
    assert shown == command_table().strip(), "README's table is stale: python -m monai_pipeline.cli.table"


def test_readme_opens_with_install_and_segmenting_a_scan():
    """A new user's first screen: install and "segment your own scans"; the developers' reference data
    (``../shared``) only in the developer section."""
    text = (REPO / "README.md").read_text()
    first_screen = "\n".join(text.splitlines()[:60])
    assert "## Install" in first_screen and "## Segment your own scans" in first_screen
    assert "pip install" in first_screen and "monai-pipeline infer" in first_screen
    before_developers = text[:text.index("## For developers")]
    assert "../shared" not in before_developers
