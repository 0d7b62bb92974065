"""Command line: `transcache COMMAND`. The only code that prints or exits.

One module per command group (run, ca, cache, install, exec, selftest) adds its parsers and sets a
`handler` on each command; `main` parses and calls it. Handlers import what their command
needs when they run, so `transcache --help` loads none of trio, h11 and cryptography.

A reader that stops early (`transcache cache ls | head`) closes the pipe: the command ends
there, silently, with the status a shell gives a tool that SIGPIPE ended (128 + 13), as
`set -o pipefail` expects of cat or ls."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import sys
from collections.abc import Sequence

from .._config import ConfigError
from .._errors import TranscacheError
from . import ca, cache, install, run, selftest
from . import exec as exec_
from ._options import EXIT_FAILURE, EXIT_USAGE

PACKAGE = "transcache"

# What a shell reports for a process that SIGPIPE ended.
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcache", description="A caching HTTPS forward proxy for package installs."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {importlib.metadata.version(PACKAGE)}"
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = argv  # what `run --workers N` starts each worker with
    try:
        status = int(args.handler(args))
        # Written now, while a closed pipe can still be told apart from a bug.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        return _closed_pipe()
    except ConfigError as exc:
        print(f"transcache: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if not _reported_in_one_line(exc):
            raise
        print(f"transcache: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _closed_pipe() -> int:
    """Send what stdout still buffers nowhere: flushing it at exit would fail again, and
    Python would print that failure."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


def _reported_in_one_line(error: Exception) -> bool:
    """Whether `error` is a failure the user can act on from its message (transcache's own
    errors, and the system's), rather than a bug that needs its traceback."""
    return isinstance(error, TranscacheError | OSError)
