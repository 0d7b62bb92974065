"""`transcache run`: the proxy in the foreground. Its options are also `exec`'s, and the
pytest plugin's (`config_from_flags`).

SIGINT and SIGTERM stop it. SIGHUP (`systemctl --user reload transcache`) reopens the access
log file, so logrotate can move it away, and re-reads the config file: the same flags over
the file's new settings, applied by `ProxyServer.reload` (which names what needs a restart).
A config file that no longer parses is reported and the running settings stay."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _paths
from .._config import (
    DEFAULT_INDEX_TTL,
    DEFAULT_MAX_SIZE,
    DEFAULT_PORT,
    Config,
    ConfigError,
    build_config,
    parse_min_ttl,
    parse_size,
)
from .._launch import listening_line
from .._limits import BODY_RATE_WINDOW
from .._policy import Rule, RuleAction
from ._options import (
    EXIT_FAILURE,
    add_ca_dir,
    add_cache_dir,
    add_origin_options,
    cli_value,
    destination,
    existing_file,
    listen_address,
    positive,
)
from ._tier import add_shared_cache_options, shared_cache_options

if TYPE_CHECKING:
    from ..api import RunningProxy
    from ._options import Commands

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class AccessLogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"  # one object per line (_access.JsonAccessFormatter)


def add_parsers(commands: Commands) -> None:
    run = commands.add_parser("run", help="run the proxy in the foreground")
    add_run_options(run)
    # `run` only: `exec` and the pytest plugin serve in their own process.
    run.add_argument(
        "--workers",
        type=positive(int),
        metavar="N",
        help="serving processes, sharing the port, the cache and the CA (default: one per "
        "usable core; 1 serves in this process)",
    )
    run.set_defaults(handler=_command_run)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The proxy's options, shared by `run` and `exec`."""
    parser.add_argument(
        "--listen",
        type=listen_address,
        default=("127.0.0.1", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"address to listen on; port 0 picks a free port (default: 127.0.0.1:{DEFAULT_PORT})",
    )
    add_ca_dir(parser)
    add_cache_dir(parser)
    add_origin_options(parser)
    add_shared_cache_options(parser)
    parser.add_argument(
        "--passthrough",
        action="append",
        default=[],
        metavar="PATTERN",
        help="hosts (shell patterns) tunnelled without interception; repeatable",
    )
    parser.add_argument(
        "--connect-port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="ports origins may be reached on besides 443 (CONNECT, https) and 80 (http); "
        "repeatable",
    )
    parser.add_argument(
        "--allow-destination",
        type=destination,
        action="append",
        default=[],
        metavar="CIDR_OR_HOST",
        help="let the proxy reach these loopback, link-local or own addresses (an address, a "
        "CIDR network or a host pattern); repeatable",
    )
    parser.add_argument(
        "--auth-file",
        type=Path,
        metavar="FILE",
        help="users who may use the proxy, one user:token per line (mode 600); every proxy "
        "request then needs Proxy-Authorization: Basic (see docs/team.md)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve the proxy itself over TLS with this certificate chain (PEM): clients use "
        "an https:// proxy URL",
    )
    parser.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the private key for --tls-cert (PEM)"
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen beyond loopback without --auth-file (isolated networks only)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive(int),
        metavar="N",
        help="client connections served at once (default: from the open file limit)",
    )
    parser.add_argument(
        "--header-timeout",
        type=positive(float),
        default=Config.header_timeout,
        metavar="SECONDS",
        help="time a client has to send a request head (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=positive(float),
        metavar="SECONDS",
        help=f"time a connection may wait between requests (default: {Config.idle_timeout:g})",
    )
    parser.add_argument(
        "--body-timeout",
        type=positive(float),
        metavar="SECONDS",
        help="longest pause in a request body before it is cut with 408 "
        f"(default: {Config.body_timeout:g})",
    )
    parser.add_argument(
        "--min-body-rate",
        type=cli_value(parse_size),
        metavar="BYTES",
        help=f"slowest request body accepted, per second over {BODY_RATE_WINDOW:g} s, e.g. 1K; "
        f"0 for none (default: {Config.min_body_rate // 1024}K)",
    )
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=Config.upstream_timeout,
        metavar="SECONDS",
        help="longest wait for an origin to answer or send more (default: %(default)s)",
    )
    _add_parent_options(parser)
    parser.add_argument(
        "--access-log",
        type=Path,
        metavar="FILE",
        help="append the access log to FILE instead of stderr",
    )
    parser.add_argument(
        "--access-log-format",
        type=AccessLogFormat,
        choices=list(AccessLogFormat),
        default=AccessLogFormat.TEXT,
        help="text lines, or one JSON object per line (fields: docs/usage.md); "
        "default: %(default)s",
    )
    _add_cache_options(parser)


def _add_parent_options(parser: argparse.ArgumentParser) -> None:
    parent = parser.add_mutually_exclusive_group()
    parent.add_argument(
        "--upstream-proxy",
        metavar="URL",
        help="reach origins through this proxy, http://[USER:PASS@]HOST:PORT, or `none` "
        "(default: the environment's https_proxy / http_proxy)",
    )
    parent.add_argument(
        "--upstream-proxy-file",
        type=existing_file,
        metavar="FILE",
        help="as --upstream-proxy, the URL read from FILE, which keeps credentials out of the "
        "command line (mode 0600 when it holds any)",
    )
    parser.add_argument(
        "--upstream-proxy-bypass",
        metavar="PATTERNS",
        help="hosts reached directly, not through the upstream proxy, in NO_PROXY syntax "
        "(default: the environment's NO_PROXY)",
    )


def _add_cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=_paths.default_config_file(),
        metavar="FILE",
        help="settings and freshness rules (TOML; default: %(default)s, if it exists)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="answer only from the cache; a miss is a 504 naming the URL",
    )
    parser.add_argument(
        "--max-size",
        type=cli_value(parse_size),
        metavar="SIZE",
        help=f"largest cache size, e.g. 500M or 20G (default: {DEFAULT_MAX_SIZE // 1024**3}G)",
    )
    parser.add_argument(
        "--min-ttl",
        type=cli_value(parse_min_ttl),
        action="append",
        default=[],
        metavar="PATTERN=SECONDS",
        help="URLs matching PATTERN stay fresh at least SECONDS; repeatable",
    )
    parser.add_argument(
        "--immutable",
        type=lambda pattern: Rule(pattern, RuleAction.IMMUTABLE),
        action="append",
        default=[],
        metavar="PATTERN",
        help="URLs matching PATTERN are never revalidated once stored; repeatable",
    )
    parser.add_argument(
        "--index-ttl",
        type=positive(float),
        metavar="SECONDS",
        help="how long an index page (a project page, a packument, a Release file) stays "
        "fresh when its origin says less or nothing; then it is refreshed in the background "
        f"(default: {DEFAULT_INDEX_TTL:g})",
    )
    parser.add_argument(
        "--strict-client-reload",
        action="store_true",
        default=None,
        help="honour a client's Cache-Control: max-age=0 or no-cache even inside the index "
        "window (strict RFC 9111)",
    )
    parser.add_argument(
        "--never-cache",
        type=lambda pattern: Rule(pattern, RuleAction.NEVER),
        action="append",
        default=[],
        metavar="PATTERN",
        help="URLs matching PATTERN are never stored; repeatable",
    )


def config_from(args: argparse.Namespace, workers: int | None = None) -> Config:
    """The Config that `run` (or `exec`) options and the config file they name ask for."""
    options = {
        "workers": workers,
        "listen": args.listen,
        "ca_dir": args.ca_dir,
        "cache_dir": args.cache_dir,
        "upstream_ca": args.upstream_ca,
        "resolve": args.resolve,
        "passthrough": args.passthrough,
        "connect_ports": args.connect_port,
        "allow_destinations": args.allow_destination,
        "allow_unauthenticated": args.allow_unauthenticated,
        "auth_file": args.auth_file,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "max_connections": args.max_connections,
        "header_timeout": args.header_timeout,
        "idle_timeout": args.idle_timeout,
        "body_timeout": args.body_timeout,
        "min_body_rate": args.min_body_rate,
        "upstream_timeout": args.upstream_timeout,
        "offline": args.offline,
        "max_size": args.max_size,
        "rules": [*args.min_ttl, *args.immutable, *args.never_cache],
        "index_ttl": args.index_ttl,
        "strict_client_reload": args.strict_client_reload,
        "upstream_proxy": args.upstream_proxy,
        "upstream_proxy_file": args.upstream_proxy_file,
        "upstream_proxy_bypass": args.upstream_proxy_bypass,
        **shared_cache_options(args),
    }
    return build_config(options, args.config, os.environ)


def config_from_flags(flags: Sequence[str]) -> Config:
    """The Config `transcache run FLAGS` would serve with. Raises SystemExit when argparse
    rejects a flag (it has printed why), ConfigError for a bad config file."""
    parser = argparse.ArgumentParser(prog="transcache run")
    add_run_options(parser)
    return config_from(parser.parse_args(flags))


def _setup_logging(
    access_log: Path | None, access_format: AccessLogFormat
) -> logging.FileHandler | None:
    """Errors to stderr, the access log to its file (returned: SIGHUP reopens it) or stderr."""
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", TIME_FORMAT))
    root = logging.getLogger("transcache")
    root.addHandler(errors)
    root.setLevel(logging.INFO)
    access = logging.getLogger("transcache.access")
    access.propagate = False
    handler: logging.StreamHandler[Any] = (
        logging.FileHandler(access_log) if access_log else logging.StreamHandler(sys.stderr)
    )
    if access_format is AccessLogFormat.JSON:
        from .._access import JsonAccessFormatter

        handler.setFormatter(JsonAccessFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", TIME_FORMAT))
    from .._access import BatchedAccessHandler

    access.addHandler(BatchedAccessHandler(handler))
    return handler if isinstance(handler, logging.FileHandler) else None


def _reopen(handler: logging.FileHandler) -> None:
    """Write to a new file at the handler's path, as logrotate expects after moving it."""
    for batched in logging.getLogger("transcache.access").handlers:
        batched.flush()  # the lines logged so far go to the file that was moved
    stream = Path(handler.baseFilename).open("a", encoding=handler.encoding)
    old = handler.setStream(stream)
    if old is not None:
        old.close()


def _reload(
    running: RunningProxy, load: Callable[[], Config], access_log: logging.FileHandler | None
) -> None:
    """SIGHUP: reopen the access log, then serve what `load` returns. A failure of either
    is logged, and what runs stays as it was."""
    log = logging.getLogger("transcache")
    if access_log is not None:
        try:
            _reopen(access_log)
        except OSError as exc:
            log.error("SIGHUP: keeping the access log open as it was: %s", exc)
    try:
        config = load()
    except ConfigError as exc:
        log.error("SIGHUP: keeping the running settings: %s", exc)
        return
    ignored = running.server.reload(config)
    if ignored:
        log.warning("SIGHUP: a restart is needed to change %s", ", ".join(ignored))
    log.info("SIGHUP: settings reloaded")


def _print_start(running: RunningProxy) -> None:
    print(listening_line(running.url))
    print("# route clients through it (e.g. paste into your shell):")
    for name, value in running.env.items():
        print(f"export {name}={shlex.quote(value)}")
    sys.stdout.flush()


async def _serve(
    config: Config, load: Callable[[], Config], access_log: logging.FileHandler | None
) -> None:
    """Serve `config` until SIGINT or SIGTERM; on SIGHUP, serve what `load` returns."""
    import trio

    from .. import _notify, _workers
    from ..api import open_proxy

    # Signals are caught before the listening line is printed: whoever waits for that line
    # may stop us right after it.
    # A worker's sockets come from its supervisor; under socket activation the service
    # manager's replace --listen.
    inherited = _workers.worker_sockets() or _notify.inherited_sockets()
    listeners = _notify.trio_listeners(inherited) or None
    shared = _workers.run_dir()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with open_proxy(config, listeners=listeners) as running, trio.open_nursery() as tasks:
            if shared is not None:  # a worker: one view of the proxy with the others
                tasks.start_soon(running.server.observer.share, shared)
                tasks.start_soon(_workers.stop_with_supervisor)
            _print_start(running)
            _notify.notify("READY=1")
            async for signum in signals:
                if signum == signal.SIGHUP:
                    _reload(running, load, access_log)
                    continue
                name = signal.Signals(signum).name
                logging.getLogger("transcache").info("%s received, stopping", name)
                _notify.notify("STOPPING=1")
                break
            tasks.cancel_scope.cancel()


def _command_run(args: argparse.Namespace) -> int:
    import trio

    from .._workers import supervise, usable_cores

    config = config_from(args, args.workers)
    access_log = _setup_logging(args.access_log, args.access_log_format)
    workers = config.workers or usable_cores()
    try:
        if workers > 1:  # the supervisor re-runs this command line for each worker
            return trio.run(supervise, config, args.command_line, workers)
        trio.run(_serve, config, lambda: config_from(args, args.workers), access_log)
    except OSError as exc:
        host, port = args.listen
        print(f"transcache: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    return 0
