"""Command line. The only code that prints or exits."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from . import _paths
from ._ca import CAError, CertificateAuthority
from ._config import DEFAULT_CONNECT_PORTS, DEFAULT_PORT, Config, parse_resolve
from .api import RunningProxy, open_proxy


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _resolve(text: str) -> tuple[tuple[str, int], str]:
    try:
        return parse_resolve(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _add_ca_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-dir",
        type=Path,
        default=_paths.default_ca_dir(),
        help="where the root CA and minted leaves live (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcache", description="A caching HTTPS forward proxy for package installs."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the proxy in the foreground")
    run.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"address to listen on; port 0 picks a free port (default: 127.0.0.1:{DEFAULT_PORT})",
    )
    _add_ca_dir(run)
    run.add_argument(
        "--cache-dir",
        type=Path,
        default=_paths.default_cache_dir(),
        help="where cached responses live (default: %(default)s)",
    )
    run.add_argument(
        "--upstream-ca",
        type=_existing_file,
        action="append",
        default=[],
        metavar="FILE",
        help="extra CA certificates (PEM) trusted when verifying origins; repeatable",
    )
    run.add_argument(
        "--resolve",
        type=_resolve,
        action="append",
        default=[],
        metavar="HOST:PORT:ADDR",
        help="connect to ADDR for HOST:PORT instead of resolving HOST (as curl); repeatable",
    )
    run.add_argument(
        "--passthrough",
        action="append",
        default=[],
        metavar="PATTERN",
        help="hosts (shell patterns) tunnelled without interception; repeatable",
    )
    run.add_argument(
        "--connect-port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="ports CONNECT may reach besides 443 and the --resolve ports; repeatable",
    )
    run.add_argument(
        "--header-timeout",
        type=float,
        default=Config.header_timeout,
        metavar="SECONDS",
        help="time a client has to send a request head (default: %(default)s)",
    )
    run.add_argument(
        "--upstream-timeout",
        type=float,
        default=Config.upstream_timeout,
        metavar="SECONDS",
        help="longest wait for an origin to answer or send more (default: %(default)s)",
    )
    run.add_argument(
        "--access-log",
        type=Path,
        metavar="FILE",
        help="append the access log to FILE instead of stderr",
    )

    ca = commands.add_parser("ca", help="the root CA")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    ca_path = ca_commands.add_parser("path", help="print the CA certificate's path")
    _add_ca_dir(ca_path)
    return parser


def _config_from(args: argparse.Namespace) -> Config:
    host, port = args.listen
    return Config(
        listen_host=host,
        listen_port=port,
        ca_dir=args.ca_dir.absolute(),
        cache_dir=args.cache_dir.absolute(),
        upstream_ca=tuple(args.upstream_ca),
        resolve=dict(args.resolve),
        passthrough=tuple(args.passthrough),
        connect_ports=DEFAULT_CONNECT_PORTS | frozenset(args.connect_port),
        header_timeout=args.header_timeout,
        upstream_timeout=args.upstream_timeout,
    )


def _setup_logging(access_log: Path | None) -> None:
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger("transcache")
    root.addHandler(errors)
    root.setLevel(logging.INFO)
    access = logging.getLogger("transcache.access")
    access.propagate = False
    handler: logging.Handler = (
        logging.FileHandler(access_log) if access_log else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(formatter)
    access.addHandler(handler)


def _print_start(running: RunningProxy) -> None:
    print(f"transcache listening on {running.url}")
    print("# route clients through it (e.g. paste into your shell):")
    for name, value in running.env.items():
        print(f"export {name}={shlex.quote(value)}")
    sys.stdout.flush()


async def _run(config: Config) -> None:
    # Signals are caught before the listening line is printed: whoever waits for that line
    # may stop us right after it.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_proxy(config) as running:
            _print_start(running)
            async for signum in signals:
                name = signal.Signals(signum).name
                logging.getLogger("transcache").info("%s received, stopping", name)
                break


def _command_run(args: argparse.Namespace) -> int:
    config = _config_from(args)
    _setup_logging(args.access_log)
    try:
        trio.run(_run, config)
    except OSError as exc:
        host, port = args.listen
        print(f"transcache: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _command_run(args)
        if args.command == "ca" and args.ca_command == "path":
            print(CertificateAuthority.load_or_create(args.ca_dir).cert_path)
            return 0
    except CAError as exc:
        print(f"transcache: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args)


if __name__ == "__main__":
    sys.exit(main())
