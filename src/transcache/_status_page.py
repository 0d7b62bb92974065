"""The status page at GET / (pure: a `StatusView` in, HTML out).

One self-contained document: inline style, no script, no external asset and no favicon
request (an empty data: icon), so it works offline and leaves a browser console clean. It
reloads itself every REFRESH_SECONDS (a meta refresh: no script needed)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from ._activity import Activity, Recent, Tally
from ._metrics import Gauges
from ._units import human_size

REFRESH_SECONDS = 5
TIME_FORMAT = "%H:%M:%S"
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}
td,th{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}progress{width:12em}
"""


@dataclass(frozen=True)
class Download:
    url: str
    received: int
    total: int | None  # from Content-Length, when the origin sent one


@dataclass(frozen=True)
class StatusView:
    version: str
    activity: Activity
    gauges: Gauges
    downloads: Sequence[Download]
    passthrough_patterns: Sequence[str]
    shared: str | None = None  # the shared tier: where, its trust, whether skipped now


def render(view: StatusView, now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    activity, gauges = view.activity, view.gauges
    total = activity.total
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<link rel="icon" href="data:,">',
        f"<title>transcache {escape(view.version)}</title><style>{STYLE}</style></head><body>",
        f"<h1>transcache {escape(view.version)}</h1>",
        f'<p class="muted" id="uptime">up {_duration(now - activity.started)}; '
        f"this page reloads every {REFRESH_SECONDS} s</p>",
        "<h2>Summary</h2>",
        _table(
            ("", ""),
            [
                ("requests", str(total.requests)),
                ("hit ratio (requests)", _percent(total.hit_ratio)),
                ("hit ratio (bytes)", _percent(total.byte_ratio)),
                ("served from cache", human_size(total.bytes_from_cache)),
                ("upstream time saved", _duration(total.saved_seconds)),
                ("cache size", _cache_size(gauges)),
                ("entries", "-" if gauges.cache_entries is None else str(gauges.cache_entries)),
                ("connections open", str(gauges.connections_open)),
            ],
            row_id="summary",
        ),
        "<h2>By ecosystem</h2>",
        _tallies("ecosystems", ((e.value, t) for e, t in activity.by_ecosystem.items())),
        "<h2>By host</h2>",
        _tallies("hosts", activity.by_host.items()),
        *(
            ["<h2>By user</h2>", _tallies("users", activity.by_user.items())]
            if activity.by_user
            else []
        ),
        *_shared(view),
        f"<h2>Downloads in flight ({len(view.downloads)})</h2>",
        _downloads(view.downloads),
        "<h2>Recent misses</h2>",
        _recent("misses", activity.misses, "outcome"),
        "<h2>Recent errors</h2>",
        _recent("errors", activity.errors, "reason"),
        "<h2>Passthrough</h2>",
        _passthrough(view.passthrough_patterns, activity.passthrough),
        "</body></html>",
    ]
    return "\n".join(parts).encode()


def _shared(view: StatusView) -> list[str]:
    """The shared cache's section (none without one): what it is and this process's counts."""
    if view.shared is None:
        return []
    counts = view.gauges.shared or {}
    rows = [("bucket", view.shared)] + [
        (name.removeprefix("shared_").replace("_", " "), str(value))
        for name, value in counts.items()
    ]
    return ["<h2>Shared cache</h2>", _table(("", ""), rows, row_id="shared")]


def _table(
    head: Sequence[str], rows: Iterable[Sequence[str]], *, row_id: str, numeric_from: int = 1
) -> str:
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(
            f'<{tag} class="n">{escape(v)}</{tag}>'
            if i >= numeric_from
            else f"<{tag}>{escape(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    header = f"<tr>{cells('th', head)}</tr>" if any(head) else ""
    return f'<table id="{row_id}">{header}{body}</table>'


def _tallies(table_id: str, tallies: Iterable[tuple[str, Tally]]) -> str:
    rows = [
        (
            name,
            str(t.requests),
            str(t.hits),
            _percent(t.hit_ratio),
            _percent(t.byte_ratio),
            human_size(t.bytes_from_cache),
            _duration(t.saved_seconds),
        )
        for name, t in sorted(tallies, key=lambda item: (-item[1].requests, item[0]))
    ]
    if not rows:
        return '<p class="muted">no requests yet</p>'
    head = ("", "requests", "hits", "hit ratio", "byte hit ratio", "from cache", "time saved")
    return _table(head, rows, row_id=table_id)


def _downloads(downloads: Sequence[Download]) -> str:
    if not downloads:
        return '<p class="muted">none</p>'
    rows = []
    for d in downloads:
        if d.total:
            bar = f'<progress value="{d.received}" max="{d.total}"></progress> '
            done = f"{human_size(d.received)} of {human_size(d.total)}"
        else:
            bar, done = "", human_size(d.received)
        rows.append(f"<tr><td>{escape(d.url)}</td><td>{bar}{escape(done)}</td></tr>")
    return f'<table id="downloads">{"".join(rows)}</table>'


def _recent(table_id: str, recent: Iterable[Recent], detail: str) -> str:
    rows = [
        (time.strftime(TIME_FORMAT, time.localtime(r.when)), r.url, str(r.status), r.detail)
        for r in recent
    ]
    if not rows:
        return '<p class="muted">none</p>'
    return _table(("time", "url", "status", detail), rows, row_id=table_id, numeric_from=9)


def _passthrough(patterns: Sequence[str], seen: dict[str, int]) -> str:
    if not patterns:
        return '<p class="muted">no passthrough hosts: every tunnel is intercepted and cached</p>'
    rows = [
        (pattern, "configured (--passthrough): tunnelled blind, never cached")
        for pattern in patterns
    ]
    rows += [
        (host, f"matched a passthrough pattern: {count} tunnel(s)") for host, count in seen.items()
    ]
    return _table(("host", "why"), rows, row_id="passthrough", numeric_from=9)


def _cache_size(gauges: Gauges) -> str:
    if gauges.cache_bytes is None or gauges.cache_max_bytes is None:
        return "no cache"
    share = gauges.cache_bytes / gauges.cache_max_bytes if gauges.cache_max_bytes else 0.0
    used = human_size(gauges.cache_bytes)
    return f"{used} of {human_size(gauges.cache_max_bytes)} ({_percent(share)})"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"
