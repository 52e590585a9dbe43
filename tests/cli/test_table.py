"""The README's command table is the parser's (``python -m monai_pipeline.cli.table`` writes it)."""

from __future__ import annotations

from monai_pipeline.cli.table import END, START, command_table
from tests.conftest import REPO


def test_readme_command_table_equals_the_parser():
    text = (REPO / "README.md").read_text()
    assert START in text and END in text
    shown = text[text.index(START) + len(START):text.index(END)].strip()
    assert shown == command_table().strip(), "README's table is stale: python -m monai_pipeline.cli.table"
