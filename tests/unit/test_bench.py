from __future__ import annotations

import pytest

from deblur.bench import replace_marked_block


def test_replace_marked_block_rewrites_only_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- a:begin -->\nold a\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nold b\n<!-- b:end -->\ntail\n"
    )
    replace_marked_block(readme, "a", "new a\nsecond line")
    replace_marked_block(readme, "a", "newer a")  # a second run replaces, never appends
    assert readme.read_text() == (
        "intro\n<!-- a:begin -->\nnewer a\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nold b\n<!-- b:end -->\ntail\n"
    )


def test_replace_marked_block_names_the_file_when_markers_are_missing(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n<!-- a:begin -->\n")
    with pytest.raises(ValueError, match=r"README\.md.*a:end"):
        replace_marked_block(readme, "a", "x")
    assert readme.read_text() == "no markers here\n<!-- a:begin -->\n"
