"""Numbers as people read them (pure)."""

from __future__ import annotations

SIZE_UNITS = ("B", "KiB", "MiB", "GiB")


def human_size(count: int) -> str:
    """Bytes in binary units: "512 B", "1.5 KiB", "20.0 GiB"."""
    size = float(count)
    for unit in SIZE_UNITS[:-1]:
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {SIZE_UNITS[-1]}"
