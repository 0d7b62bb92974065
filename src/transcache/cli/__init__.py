"""Command line: `transcache COMMAND`. The only code that prints or exits.

One module per command group (run, ca, cache, install, exec, selftest) adds its parsers and sets a
`handler` on each command; `main` parses and calls it. Handlers import what their command
needs when they run, so `transcache --help` loads none of trio, h11 and cryptography."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._config import ConfigError
from .._errors import TranscacheError
from . import ca, cache, install, run, selftest
from . import exec as exec_
from ._options import EXIT_FAILURE, EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcache", description="A caching HTTPS forward proxy for package installs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run.add_parsers(commands)
    ca.add_parsers(commands)
    cache.add_parsers(commands)
    install.add_parsers(commands)
    exec_.add_parsers(commands)
    install.add_doctor_parser(commands)
    selftest.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"transcache: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if not _reported_in_one_line(exc):
            raise
        print(f"transcache: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _reported_in_one_line(error: Exception) -> bool:
    """Whether `error` is a failure the user can act on from its message (transcache's own
    errors, and the system's), rather than a bug that needs its traceback."""
    return isinstance(error, TranscacheError | OSError)
