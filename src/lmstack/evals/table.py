"""Plain-text tables for the terminal (`eval run`'s scores, `eval compare`): each column as wide as its longest cell.
Fixed widths cut long names (`hallucination_detectio`) or pushed a row's numbers off their headers."""

from __future__ import annotations


def column_widths(header: tuple[str, ...], rows: list[list[str]]) -> list[int]:
    return [max(len(row[i]) for row in [list(header), *rows]) for i in range(len(header))]


def table_row(header: tuple[str, ...], cells: list[str], widths: list[int], text_columns: set[str]) -> str:
    """`cells` under `header`: text columns left-aligned, the others (numbers) right-aligned."""
    aligned = [cell.ljust(width) if column in text_columns else cell.rjust(width)
               for column, cell, width in zip(header, cells, widths)]
    return "  ".join(aligned).rstrip()
