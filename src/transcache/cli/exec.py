"""`transcache exec -- CMD`: run one command through a proxy (see `transcache._exec`). The
installed service is used when it answers /healthz and no run option asks for something it
cannot do; otherwise a proxy runs in this process, on a free loopback port unless --listen
names one. The summary line on stderr gives the in-process proxy's counters."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from typing import TYPE_CHECKING

from ._human import plural, size
from ._options import EXIT_FAILURE, EXIT_USAGE
from .install import installed_settings
from .run import add_run_options, config_from

if TYPE_CHECKING:
    from .._exec import ExecResult
    from ._options import Commands

# A shell's answer when the command to run does not exist.
EXIT_NOT_FOUND = 127
MISSES_SHOWN = 10


def add_parsers(commands: Commands) -> None:
    exec_ = commands.add_parser(
        "exec",
        help="run a command through the service, or through a proxy started for it",
        usage="transcache exec [run options] -- CMD [ARGS...]",
    )
    add_run_options(exec_)
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    exec_.set_defaults(handler=_command_exec)


def _run_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_options(parser)
    return parser.parse_args([])


def _command_exec(args: argparse.Namespace) -> int:
    import trio

    from .. import _exec
    from ..install.health import answers

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        print("transcache exec: no command given (transcache exec -- CMD ...)", file=sys.stderr)
        return EXIT_USAGE
    if shutil.which(command[0]) is None:
        print(f"transcache exec: command not found: {command[0]}", file=sys.stderr)
        return EXIT_NOT_FOUND
    defaults = _run_defaults()
    options_given = any(getattr(args, name) != value for name, value in vars(defaults).items())
    settings = installed_settings()
    if not options_given and answers(settings.url):
        result = trio.run(_exec.run_with_service, command, settings.url, settings.environment())
    else:
        config = config_from(args)
        if args.listen == defaults.listen:
            config = dataclasses.replace(config, listen_port=0)
        try:
            result = trio.run(_exec.run_in_process, command, config)
        except OSError as exc:
            print(f"transcache exec: cannot start the proxy: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    print(summary_line(result), file=sys.stderr)
    return result.status


def summary_line(result: ExecResult) -> str:
    """exec's last words on stderr: what went through the proxy (the service's counters are
    not ours to read, so for it only its address)."""
    counters = result.counters
    if counters is None:
        return f"transcache: through the service at {result.proxy_url}"
    line = (
        f"transcache: {plural(counters.requests, 'request')} through {result.proxy_url}, "
        f"{counters.hits} from cache, {size(counters.bytes_from_cache)} from cache, "
        f"{size(counters.upstream_bytes)} from upstream"
    )
    if counters.offline_misses:
        shown = ", ".join(counters.offline_misses[:MISSES_SHOWN])
        misses = len(counters.offline_misses)
        more = misses - MISSES_SHOWN
        line += f"; {plural(misses, 'offline miss', 'offline misses')}: {shown}"
        line += f" (+{more} more)" if more > 0 else ""
    return line
