"""Markdown tables: one per workload, a row per peer, medians over the repetitions, and each
value's ratio to transcache's in the same run (peer / transcache)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

TRANSCACHE = "transcache"


@dataclass(frozen=True)
class Column:
    key: str  # a metric in the workload's samples
    label: str
    digits: int = 1
    ratio: bool = True  # show peer / transcache next to the value
    # A value computed from the table's medians (of this peer and others), for a peer; None
    # when it does not apply. Such a column reads no samples of its own.
    derive: Callable[[Table, str], float | None] | None = None


@dataclass
class Table:
    title: str
    columns: list[Column]
    note: str = ""
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # peer -> why the workload is n/a
    failures: dict[str, list[str]] = field(default_factory=dict)  # peer -> one line per failure

    def add(self, peer: str, sample: dict[str, float]) -> None:
        self.samples.setdefault(peer, []).append(sample)

    def skip(self, peer: str, why: str) -> None:
        self.skipped[peer] = why

    def fail(self, peer: str, why: str) -> None:
        self.failures.setdefault(peer, []).append(why)

    def median(self, peer: str, key: str) -> float | None:
        values = [s[key] for s in self.samples.get(peer, []) if key in s]
        return statistics.median(values) if values else None

    def render(self, peers: list[str]) -> str:
        head = "| peer | " + " | ".join(c.label for c in self.columns) + " |"
        rule = "| --- |" + " ---: |" * len(self.columns)
        rows = [head, rule]
        blank = " |" * (len(self.columns) - 1)
        for peer in peers:
            if peer in self.skipped:
                rows.append(f"| {peer} | n/a ({self.skipped[peer]}) |{blank}")
            elif peer in self.samples:
                cells = [self._cell(peer, column) for column in self.columns]
                rows.append(f"| {peer} | " + " | ".join(cells) + " |")
            elif peer in self.failures:
                rows.append(f"| {peer} | failed |{blank}")
        text = f"### {self.title}\n\n" + "\n".join(rows) + "\n"
        runs = {len(s) for s in self.samples.values()}
        notes = [self.note] if self.note else []
        if runs:
            notes.append(f"Medians of {max(runs)} run(s).")
        for peer, whys in self.failures.items():
            done = len(self.samples.get(peer, []))
            notes.append(
                f"**{peer}: {len(whys)} of {done + len(whys)} run(s) failed** ({whys[0]})."
            )
        return text + ("\n" + " ".join(notes) + "\n" if notes else "")

    def _cell(self, peer: str, column: Column) -> str:
        if column.derive is not None:
            value = column.derive(self, peer)
            return "—" if value is None else f"{value:,.{column.digits}f}"
        value = self.median(peer, column.key)
        if value is None:
            return "—"
        text = f"{value:,.{column.digits}f}"
        base = self.median(TRANSCACHE, column.key)
        if column.ratio and peer != TRANSCACHE and base:
            text += f" ({value / base:.2f}x)"
        return text


def document(title: str, preamble: str, tables: list[Table], peers: list[str]) -> str:
    parts = [f"## {title}\n", preamble.strip() + "\n"]
    parts += [table.render(peers) for table in tables if table.samples or table.failures]
    return "\n".join(parts)
