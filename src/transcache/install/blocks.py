"""Our fenced block in files that belong to the user (~/.bashrc, ~/.profile, ~/.zshenv).

The block is three or more lines between two marker lines. Inserting appends it (after a
newline when the file does not end with one) or replaces a block already there; the returned
`BlockRecord` remembers exactly what was added or replaced, so `remove_block` restores the
original text byte for byte: CRLF files, a missing final newline and an older block included.
Pure text functions; the caller reads and writes the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BEGIN_MARKER = "# >>> transcache >>>"
END_MARKER = "# <<< transcache <<<"
# The last begin marker before the first end marker, each at the start of a line; the block
# ends after the end marker's line (newline included when there is one).
_BLOCK = re.compile(
    rf"(?ms)^{re.escape(BEGIN_MARKER)}[^\n]*\n"
    rf"(?:(?!^{re.escape(BEGIN_MARKER)}).)*?"
    rf"^{re.escape(END_MARKER)}[^\n]*(?:\n|\Z)"
)


@dataclass(frozen=True)
class BlockRecord:
    """What inserting changed: the newline added before the block (or ""), and the block
    that was there before (None when the block was appended)."""

    separator: str
    previous: str | None


def render_block(body: str) -> str:
    return f"{BEGIN_MARKER}\n{body.rstrip(chr(10))}\n{END_MARKER}\n"


def find_block(text: str) -> tuple[int, int] | None:
    match = _BLOCK.search(text)
    return match.span() if match else None


def insert_block(text: str, block: str) -> tuple[str, BlockRecord]:
    span = find_block(text)
    if span is not None:
        start, end = span
        return text[:start] + block + text[end:], BlockRecord("", text[start:end])
    separator = "\n" if text and not text.endswith("\n") else ""
    return text + separator + block, BlockRecord(separator, None)


def remove_block(text: str, record: BlockRecord) -> str:
    """Undo `insert_block`; text without a block is returned unchanged."""
    span = find_block(text)
    if span is None:
        return text
    start, end = span
    if record.previous is not None:
        return text[:start] + record.previous + text[end:]
    if record.separator and text[:start].endswith(record.separator):
        start -= len(record.separator)
    return text[:start] + text[end:]
