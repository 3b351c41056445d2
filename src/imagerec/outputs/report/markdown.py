"""A report section as Markdown (the model card written beside report.html): its tables, notes and text; figures
and galleries are the page's alone."""

from __future__ import annotations

from typing import Any

from imagerec.outputs.report.blocks import Notes, Section, Table, Text, cell


def section_markdown(section: Section) -> str:
    """`section` as a Markdown document: its title, then each table, list of notes and paragraph in order."""
    parts = [f"# {section.title}"]
    for block in section.blocks:
        if isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Notes):
            parts.append(f"## {block.title}\n\n" + "\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Text):
            parts.append(block.text)
    return "\n\n".join(parts) + "\n"


def _table(table: Table) -> str:
    lines = [_row(table.columns), "|" + "---|" * len(table.columns)]
    lines += [_row(row) for row in table.rows]
    if table.caption:
        lines += ["", f"*{table.caption}*"]
    return "\n".join(lines)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(cell(v).replace("|", "\\|").replace("\n", " ") for v in cells) + " |"
