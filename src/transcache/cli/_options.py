"""What more than one command group shares: exit statuses, argument types and options. Each
type turns a parse error into argparse's usage error (exit 2, the usage line, the reason)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .. import _paths
from .._config import parse_listen, parse_resolve
from .._reach import Destination, parse_destination

if TYPE_CHECKING:
    # What `add_subparsers` returns: each command group adds its commands to it.
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

# Exit statuses besides a command's own: a setting that cannot be used is a usage error.
EXIT_FAILURE = 1
EXIT_USAGE = 2

T = TypeVar("T")
Number = TypeVar("Number", int, float)


def cli_value(convert: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a converter that raises ValueError (ConfigError included)."""

    def parse(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = convert.__name__
    return parse


listen_address: Callable[[str], tuple[str, int]] = cli_value(parse_listen)
resolve_entry: Callable[[str], tuple[tuple[str, int], str]] = cli_value(parse_resolve)
destination: Callable[[str], Destination] = cli_value(parse_destination)


def positive(convert: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse type for a number above 0."""

    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
        return value

    parse.__name__ = convert.__name__
    return parse


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def add_ca_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-dir",
        type=Path,
        default=_paths.default_ca_dir(),
        help="where the root CA and minted leaves live (default: %(default)s)",
    )


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=_paths.default_cache_dir(),
        help="where cached responses live (default: %(default)s)",
    )


def add_origin_options(parser: argparse.ArgumentParser) -> None:
    """How the proxy reaches origins: extra trusted CAs and curl-style address overrides
    (`run` and `selftest` take them alike)."""
    parser.add_argument(
        "--upstream-ca",
        type=existing_file,
        action="append",
        default=[],
        metavar="FILE",
        help="extra CA certificates (PEM) trusted when verifying origins; repeatable",
    )
    parser.add_argument(
        "--resolve",
        type=resolve_entry,
        action="append",
        default=[],
        metavar="HOST:PORT:ADDR",
        help="connect to ADDR for HOST:PORT instead of resolving HOST (as curl); repeatable",
    )
