"""`transcache cache ...`: inspect and maintain the cache directory."""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .._config import DEFAULT_MAX_SIZE, parse_size
from ._human import plural, size
from ._options import EXIT_FAILURE, add_cache_dir, cli_value, existing_file
from ._progress import of_entries, progress
from ._tier import add_keygen_options, add_shared_prune_options, prune_shared

if TYPE_CHECKING:
    from ..store import Store
    from ..store.archive import ArchiveResult
    from ._options import Commands

LS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

StoreCommand = Callable[["Store", argparse.Namespace], int]


def add_parsers(commands: Commands) -> None:
    cache = commands.add_parser("cache", help="inspect and maintain the cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    stats = cache_commands.add_parser("stats", help="entries, bytes, hits and misses")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_on_store(_stats))
    ls = cache_commands.add_parser("ls", help="list stored responses")
    ls.add_argument("pattern", nargs="?", default="*", help="shell pattern on the URL")
    ls.set_defaults(handler=_on_store(_ls))
    prune = cache_commands.add_parser("prune", help="evict down to --max-size, drop orphans")
    prune.add_argument(
        "--max-size", type=cli_value(parse_size), default=DEFAULT_MAX_SIZE, metavar="SIZE"
    )
    add_shared_prune_options(prune)
    prune.set_defaults(handler=_on_store(_prune))
    keygen = cache_commands.add_parser(
        "keygen", help="make an Ed25519 key pair to sign and check shared cache entries"
    )
    add_keygen_options(keygen)
    purge = cache_commands.add_parser(
        "purge", help="forget the responses for a URL (or a shell pattern on URLs)"
    )
    purge.add_argument("pattern", help="a URL, or a shell pattern such as '*/simple/pkg/*'")
    purge.set_defaults(handler=_on_store(_purge))
    clear = cache_commands.add_parser("clear", help="delete every stored response")
    clear.set_defaults(handler=_on_store(_clear))
    verify = cache_commands.add_parser("verify", help="re-hash every body; remove corrupt ones")
    verify.set_defaults(handler=_on_store(_verify))
    _add_export_import(cache_commands)
    for sub in cache_commands.choices.values():
        add_cache_dir(sub)


def _add_export_import(cache_commands: Commands) -> None:
    export = cache_commands.add_parser(
        "export", help="write cached responses to a compressed archive (for CI caches)"
    )
    export.add_argument("file", type=Path, help="the archive to write (tar.gz)")
    export.add_argument("pattern", nargs="?", default="*", help="shell pattern on the URL")
    export.add_argument(
        "--since",
        type=_since,
        metavar="TIME",
        help="only entries stored or served since TIME (epoch seconds or ISO 8601), e.g. "
        "the start of a CI run: the entries that run used",
    )
    export.set_defaults(handler=_on_store(_export))
    import_ = cache_commands.add_parser(
        "import", help="add an archive's responses to the cache, checking every body"
    )
    import_.add_argument("file", type=existing_file, help="an archive from `cache export`")
    import_.set_defaults(handler=_on_store(_import))


def _since(text: str) -> float:
    """A time as seconds since the epoch, or ISO 8601 (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected seconds since the epoch or an ISO 8601 time, got {text!r}"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _on_store(command: StoreCommand) -> Callable[[argparse.Namespace], int]:
    """A handler that runs `command` on the store in --cache-dir, closed afterwards."""

    def handler(args: argparse.Namespace) -> int:
        from ..store import Store

        store = Store(args.cache_dir.absolute(), getattr(args, "max_size", DEFAULT_MAX_SIZE))
        try:
            return command(store, args)
        finally:
            store.close()

    return handler


def _stats(store: Store, args: argparse.Namespace) -> int:
    from .._launch import STATS_PAGE
    from ..install.health import fetch
    from ..store import Counter, maintenance
    from ..store.counters import by_ecosystem
    from ..store.store import announced_urls

    # Proxies running on this cache dir flush their counts when asked for their live stats:
    # then the store's counters are exact, not up to a flush interval behind.
    for url in announced_urls(store.layout):
        fetch(url, STATS_PAGE)
    stats = maintenance.stats(store)
    # Every counter the proxy records, in the Counter enum's order.
    counters = {str(name): stats.counters.get(name, 0) for name in Counter}
    ecosystems = by_ecosystem(stats.counters)
    if args.json:
        print(
            json.dumps(
                {
                    "entries": stats.entries,
                    "bytes": stats.bytes,
                    **counters,
                    "ecosystems": ecosystems,
                }
            )
        )
        return 0
    print(f"entries              {stats.entries}")
    print(f"bytes stored         {size(stats.bytes)}")
    for name, value in counters.items():
        print(f"{name.replace('_', ' '):<20} {value}")
    if ecosystems:
        print()
        print(
            f"{'ecosystem':<10} {'hits':>8} {'misses':>8} {'from cache':>14} {'from upstream':>14}"
        )
        for ecosystem, count in ecosystems.items():
            print(
                f"{ecosystem:<10} {count['hits']:>8} {count['misses']:>8} "
                f"{count['bytes_from_cache']:>14} {count['bytes_from_upstream']:>14}"
            )
    return 0


def _ls(store: Store, args: argparse.Namespace) -> int:
    from ..store import maintenance

    for entry in sorted(maintenance.entries(store), key=lambda e: e.url):
        if fnmatch.fnmatchcase(entry.url, args.pattern):
            stored = time.strftime(LS_TIME_FORMAT, time.gmtime(entry.response_time))
            ecosystem = entry.ecosystem.value
            print(f"{size(entry.size):>10} {entry.status} {stored} {ecosystem:<8} {entry.url}")
    return 0


def _prune(store: Store, args: argparse.Namespace) -> int:
    from ..store import maintenance

    if args.shared:
        return prune_shared(store, args)
    with progress("prune", of_entries) as shown:
        removed, freed = maintenance.prune(store, shown)
    print(f"removed {plural(removed, 'entry', 'entries')} without a body, evicted {size(freed)}")
    return 0


def _purge(store: Store, args: argparse.Namespace) -> int:
    from ..store import maintenance

    purged = maintenance.purge(store, args.pattern)
    for url in purged:
        print(f"purged {url}")
    if not purged:
        print(f"transcache: nothing stored matches {args.pattern!r}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _clear(store: Store, args: argparse.Namespace) -> int:
    from ..store import maintenance

    maintenance.clear(store)
    print(f"cleared {args.cache_dir}")
    return 0


def _verify(store: Store, args: argparse.Namespace) -> int:
    from ..store import maintenance

    with progress("verify") as shown:
        checked, corrupt = maintenance.verify(store, shown)
    for path in corrupt:
        print(f"removed corrupt body {path}")
    print(f"verified {plural(checked, 'body', 'bodies')}, {len(corrupt)} corrupt")
    return 1 if corrupt else 0


def _export(store: Store, args: argparse.Namespace) -> int:
    import tarfile

    from ..store.archive import export_archive

    try:
        with progress("export") as shown:
            result = export_archive(store, args.file, args.pattern, args.since, shown)
    except tarfile.TarError as exc:
        return _not_an_archive(args.file, exc)
    _print_archive_result(result, "exported", f"to {args.file}")
    return 0


def _import(store: Store, args: argparse.Namespace) -> int:
    import tarfile

    from ..store.archive import import_archive

    try:
        with progress("import") as shown:
            result = import_archive(store, args.file, shown)
    except tarfile.TarError as exc:
        return _not_an_archive(args.file, exc)
    _print_archive_result(result, "imported", f"from {args.file}")
    return 1 if result.skipped else 0


def _not_an_archive(path: Path, error: Exception) -> int:
    print(f"transcache: {path}: not a cache archive: {error}", file=sys.stderr)
    return EXIT_FAILURE


def _print_archive_result(result: ArchiveResult, verb: str, where: str) -> None:
    for reason in result.skipped:
        print(f"skipped {reason}")
    entries = plural(result.entries, "entry", "entries")
    bodies = plural(result.bodies, "body", "bodies")
    print(f"{verb} {entries} ({bodies}, {size(result.bytes)}) {where}")
