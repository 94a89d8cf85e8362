"""The one place that renders measured figures as text for people: the table of ``deblur bench
perf`` and the README blocks that commands rewrite with what they measured.

A README block lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; ``deblur bench perf
--readme`` writes ``bench:perf``, ``scripts/bundle_model.py`` writes ``bundle:model``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["PERF_BLOCK", "perf_table", "replace_marked_block", "write_perf_table"]

PERF_BLOCK = "bench:perf"  # the README block of ``deblur bench perf``'s table


def perf_table(machine: str, rows: Iterable[tuple[str, str, str]], *, date: str | None = None) -> str:
    """The Markdown table of (figure, measured, goal) rows, headed by the machine and the date."""
    return "\n".join(
        [
            f"Measured by `deblur bench perf` on {date or time.strftime('%Y-%m-%d')}: {machine}.",
            "",
            "| figure | measured | goal |",
            "|---|---|---|",
            *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        ]
    )


def write_perf_table(readme: str | Path, table: str) -> None:
    """Put ``table`` into ``readme``'s ``bench:perf`` block."""
    replace_marked_block(Path(readme), PERF_BLOCK, table)


def replace_marked_block(path: Path, name: str, content: str) -> None:
    """Rewrite what lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a text file.

    How measured figures get into the README: written by the command that measured them.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path}: markers {begin} and {end} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{content}\n{end}{tail}")
