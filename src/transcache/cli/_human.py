"""How the command line writes numbers for people: sizes in binary units (1.2 MiB), counts
with the right plural (1 request, 2 requests), and ages (written 1 minute ago). Pure, so every
command formats the same way."""

from __future__ import annotations

SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
SIZE_STEP = 1024
# (seconds in the unit, its name), largest first: an age is given in the largest unit it
# reaches, rounded down, as `ls -l` and git do ("2 hours ago" for 2 h 59 min).
AGE_UNITS = ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second"))


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """ "1 request", "2 requests"; `nouns` for an irregular plural ("1 body", "2 bodies")."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def size(count: int) -> str:
    """A byte count as people read it: "512 bytes", "1 byte", "1.2 MiB", "20 GiB"."""
    if abs(count) < SIZE_STEP:
        return plural(count, "byte")
    value = float(count)
    for unit in SIZE_UNITS:
        value /= SIZE_STEP
        if abs(value) < SIZE_STEP or unit == SIZE_UNITS[-1]:
            break
    # One decimal below 10 of a unit, where it carries information; none above.
    text = f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"
    return f"{text.removesuffix('.0')} {unit}"


def age(seconds: float) -> str:
    """How long ago, in the largest whole unit: "just now", "1 minute ago", "3 days ago"."""
    if seconds < 1:
        return "just now"
    length, unit = next((length, unit) for length, unit in AGE_UNITS if seconds >= length)
    return f"{plural(int(seconds // length), unit)} ago"
