"""The README's label reference is the label table in labels.py, row for row."""

from __future__ import annotations

from pathlib import Path

from servicerouter.labels import LABELS, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_label_reference_is_generated_from_the_label_table() -> None:
    text = README.read_text()
    assert markdown_table() in text, (
        "README's label reference differs from servicerouter.labels.LABELS; regenerate it "
        "with markdown_table()")


def test_every_label_appears_in_the_readme() -> None:
    text = README.read_text()
    for spec in LABELS:
        assert f"`{spec.label}`" in text, spec.label
