"""`benchmarks/run`'s options. Apart from the harness, and importing nothing outside the
standard library, so that `benchmarks/run --help` answers with a bare python3, before anything
is installed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_REPEATS = 3
ALL_PEERS = ["direct", "transcache", "squid", "nginx-rc", "mitmproxy"]
SMOKE_PEERS = ["direct", "transcache"]
# What --slow does to the upstream.
SLOW_DELAY_MS = 10  # each way: about 20 ms per round trip
SLOW_RATE_MIB = 10  # nginx limit_rate per connection, MiB/s
# Every workload's table. --workloads takes these, or a group without its letter (W3: W3a, W3b).
WORKLOAD_KEYS = ("W1a", "W1b", "W2", "W3a", "W3b", "W4", "W5", "W6", "W7", "W8")
# W8, the soak: minutes by default, with --quick, with --smoke.
SOAK_MINUTES, QUICK_SOAK_MINUTES, SMOKE_SOAK_MINUTES = 10.0, 2.0, 1 / 3


def group(key: str) -> str:
    """W3 for W3a."""
    return key.rstrip("ab")


def workload_names(text: str) -> set[str]:
    """--workloads: comma-separated table keys or groups, any case; unknown ones are an error."""
    known = {key.upper() for key in WORKLOAD_KEYS} | {group(key).upper() for key in WORKLOAD_KEYS}
    names = {name.strip().upper() for name in text.split(",") if name.strip()}
    unknown = sorted(names - known)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown workloads: {', '.join(unknown)} (known: {', '.join(WORKLOAD_KEYS)})"
        )
    return names


def selects(wanted: set[str], key: str) -> bool:
    """Whether --workloads (`wanted`, from `workload_names`; empty: all) selects `key`."""
    return not wanted or key.upper() in wanted or group(key).upper() in wanted


def add_transcache_option(parser: argparse.ArgumentParser) -> None:
    """--transcache-option, for `benchmarks/run` and `python -m benchmarks.soak`."""
    parser.add_argument(
        "--transcache-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="one more `transcache run` option (repeatable), e.g. --transcache-option=--workers=2",
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Build the content, start the upstream, run the selected workloads against "
        "the selected peers, print the tables and write them to a results file "
        "(see benchmarks/README.md).",
    )
    parser.add_argument("--quick", action="store_true", help="one repetition instead of three")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: tiny content, direct and transcache only, one repetition",
    )
    parser.add_argument(
        "--slow",
        action="store_true",
        help=f"slow upstream: +{2 * SLOW_DELAY_MS} ms per round trip, "
        f"{SLOW_RATE_MIB} MiB/s per connection",
    )
    parser.add_argument(
        "--workloads",
        type=workload_names,
        default=set(),
        help=f"comma-separated of {','.join(WORKLOAD_KEYS)}; W1 and W3 name both their "
        "variants (default: all)",
    )
    parser.add_argument("--peers", default="", help=f"comma-separated of {','.join(ALL_PEERS)}")
    parser.add_argument(
        "--repeats", type=int, default=0, help="repetitions (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--output", type=Path, help="results file (default benchmarks/results/<time>.md)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graphs of transcache per workload, next to the results file",
    )
    parser.add_argument(
        "--transcache-ref",
        metavar="REF",
        help="run transcache as of this commit (default: the working tree)",
    )
    add_transcache_option(parser)
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=0.0,
        help=f"W8's length (default {SOAK_MINUTES:g}; {QUICK_SOAK_MINUTES:g} with --quick, "
        f"{SMOKE_SOAK_MINUTES * 60:.0f} s with --smoke)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (logs, configs)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":  # `benchmarks/run --help` (and a bad option) end here
    parse_args(sys.argv[1:])
