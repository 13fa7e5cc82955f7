"""benchmarks.peers regenerates docs/benchmarks.md but keeps the sections written from other tools' runs."""

from __future__ import annotations

from pathlib import Path


def test_regenerating_the_page_keeps_the_hand_run_sections(tmp_path: Path) -> None:
    from benchmarks.peers import KEPT_SECTIONS, _kept_sections

    page = tmp_path / "benchmarks.md"
    assert _kept_sections(page) == []  # no page yet: nothing to keep
    kept = f"{KEPT_SECTIONS[0]}\n\nThe prototype ran at RTF 11.6.\n"
    page.write_text(f"# Benchmarks\n\nold generated text\n\n{kept}\n## Reproduce\n\nold commands\n")
    assert _kept_sections(page) == [kept]
    page.write_text(f"# Benchmarks\n\n{kept}")  # the last section runs to the end of the page
    assert _kept_sections(page) == [kept]
