"""Command line. The only code that prints or exits."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from . import _notify, _paths
from ._ca import CAError, CertificateAuthority
from ._config import (
    DEFAULT_MAX_SIZE,
    DEFAULT_PORT,
    Config,
    ConfigError,
    load_config_file,
    parse_listen,
    parse_min_ttl,
    parse_resolve,
    parse_size,
)
from ._limits import BODY_RATE_WINDOW
from ._policy import Rule, RuleAction
from ._reach import Destination, parse_destination
from .api import RunningProxy, open_proxy
from .install import doctor, execute, installer
from .install import status as install_status
from .install.environment import render_fish, render_json, render_sh
from .install.health import answers
from .install.plan import InstallError, Manifest, describe, needs_root
from .install.runner import CommandError, SubprocessRunner
from .install.settings import Settings, manifest_path
from .store import Counter, Store, archive, maintenance

T = TypeVar("T")
Number = TypeVar("Number", int, float)

# A shell's answer when the command to run does not exist.
EXIT_NOT_FOUND = 127

# Counters `cache stats` shows, as the proxy records them in the store.
STAT_COUNTERS = tuple(Counter)


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _resolve(text: str) -> tuple[tuple[str, int], str]:
    try:
        return parse_resolve(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _destination(text: str) -> Destination:
    try:
        return parse_destination(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(convert: Callable[[str], Number]) -> Callable[[str], Number]:
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


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The proxy's options, shared by `run` and `exec`."""
    parser.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"address to listen on; port 0 picks a free port (default: 127.0.0.1:{DEFAULT_PORT})",
    )
    _add_ca_dir(parser)
    _add_cache_dir(parser)
    parser.add_argument(
        "--upstream-ca",
        type=_existing_file,
        action="append",
        default=[],
        metavar="FILE",
        help="extra CA certificates (PEM) trusted when verifying origins; repeatable",
    )
    parser.add_argument(
        "--resolve",
        type=_resolve,
        action="append",
        default=[],
        metavar="HOST:PORT:ADDR",
        help="connect to ADDR for HOST:PORT instead of resolving HOST (as curl); repeatable",
    )
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
        type=_destination,
        action="append",
        default=[],
        metavar="CIDR_OR_HOST",
        help="let the proxy reach these loopback, link-local or own addresses (an address, a "
        "CIDR network or a host pattern); repeatable",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen beyond loopback although transcache has no authentication yet (isolated "
        "networks only)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive(int),
        metavar="N",
        help="client connections served at once (default: from the open file limit)",
    )
    parser.add_argument(
        "--header-timeout",
        type=_positive(float),
        default=Config.header_timeout,
        metavar="SECONDS",
        help="time a client has to send a request head (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive(float),
        metavar="SECONDS",
        help=f"time a connection may wait between requests (default: {Config.idle_timeout:g})",
    )
    parser.add_argument(
        "--body-timeout",
        type=_positive(float),
        metavar="SECONDS",
        help="longest pause in a request body before it is cut with 408 "
        f"(default: {Config.body_timeout:g})",
    )
    parser.add_argument(
        "--min-body-rate",
        type=_cli_value(parse_size),
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
    parser.add_argument(
        "--access-log",
        type=Path,
        metavar="FILE",
        help="append the access log to FILE instead of stderr",
    )
    _add_cache_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcache", description="A caching HTTPS forward proxy for package installs."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    _add_run_options(commands.add_parser("run", help="run the proxy in the foreground"))

    ca = commands.add_parser("ca", help="the root CA")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    ca_path = ca_commands.add_parser("path", help="print the CA certificate's path")
    _add_ca_dir(ca_path)
    _add_cache_parser(commands)
    for add in (
        _add_install_parser,
        _add_uninstall_parser,
        _add_status_parser,
        _add_env_parser,
        _add_exec_parser,
        _add_doctor_parser,
    ):
        add(commands)
    return parser


# -- caching: `run` options and the `cache` commands -----------------------------------------


def _cli_value(convert: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a converter that raises ConfigError."""

    def parse(text: str) -> T:
        try:
            return convert(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = convert.__name__
    return parse


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=_paths.default_cache_dir(),
        help="where cached responses live (default: %(default)s)",
    )


def _add_cache_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--config",
        type=Path,
        default=_paths.default_config_file(),
        metavar="FILE",
        help="settings and freshness rules (TOML; default: %(default)s, if it exists)",
    )
    run.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="answer only from the cache; a miss is a 504 naming the URL",
    )
    run.add_argument(
        "--max-size",
        type=_cli_value(parse_size),
        metavar="SIZE",
        help=f"largest cache size, e.g. 500M or 20G (default: {DEFAULT_MAX_SIZE // 1024**3}G)",
    )
    run.add_argument(
        "--min-ttl",
        type=_cli_value(parse_min_ttl),
        action="append",
        default=[],
        metavar="PATTERN=SECONDS",
        help="URLs matching PATTERN stay fresh at least SECONDS; repeatable",
    )
    run.add_argument(
        "--immutable",
        type=lambda pattern: Rule(pattern, RuleAction.IMMUTABLE),
        action="append",
        default=[],
        metavar="PATTERN",
        help="URLs matching PATTERN are never revalidated once stored; repeatable",
    )
    run.add_argument(
        "--never-cache",
        type=lambda pattern: Rule(pattern, RuleAction.NEVER),
        action="append",
        default=[],
        metavar="PATTERN",
        help="URLs matching PATTERN are never stored; repeatable",
    )


# Settings a flag replaces when given (argparse default None), by Config field name.
FLAG_OVERRIDES = (
    "offline",
    "max_size",
    "max_connections",
    "idle_timeout",
    "body_timeout",
    "min_body_rate",
)


def _file_and_flag_options(args: argparse.Namespace) -> dict[str, Any]:
    """Config options from the config file, overridden by flags given on the command line;
    for lists, the flags' items come first and the file's follow."""
    options = load_config_file(args.config)
    file_rules = options.pop("rules", ())
    options["rules"] = (*args.min_ttl, *args.immutable, *args.never_cache, *file_rules)
    for name in FLAG_OVERRIDES:
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    options["upstream_ca"] = (*args.upstream_ca, *options.get("upstream_ca", ()))
    options["passthrough"] = (*args.passthrough, *options.get("passthrough", ()))
    options["connect_ports"] = frozenset(args.connect_port) | options.get(
        "connect_ports", frozenset()
    )
    options["allow_destinations"] = (
        *args.allow_destination,
        *options.get("allow_destinations", ()),
    )
    return options


def _add_cache_parser(commands: Any) -> None:
    cache = commands.add_parser("cache", help="inspect and maintain the cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    stats = cache_commands.add_parser("stats", help="entries, bytes, hits and misses")
    stats.add_argument("--json", action="store_true", help="print JSON")
    ls = cache_commands.add_parser("ls", help="list stored responses")
    ls.add_argument("pattern", nargs="?", default="*", help="shell pattern on the URL")
    prune = cache_commands.add_parser("prune", help="evict down to --max-size, drop orphans")
    prune.add_argument(
        "--max-size", type=_cli_value(parse_size), default=DEFAULT_MAX_SIZE, metavar="SIZE"
    )
    cache_commands.add_parser("clear", help="delete every stored response")
    cache_commands.add_parser("verify", help="re-hash every body; remove corrupt ones")
    _add_cache_export_import(cache_commands)
    for sub in cache_commands.choices.values():
        _add_cache_dir(sub)


def _command_cache(args: argparse.Namespace) -> int:
    store = Store(args.cache_dir.absolute(), getattr(args, "max_size", DEFAULT_MAX_SIZE))
    try:
        if args.cache_command == "stats":
            _print_stats(store, args.json)
        elif args.cache_command == "ls":
            for entry in sorted(maintenance.entries(store), key=lambda e: e.url):
                if fnmatch.fnmatchcase(entry.url, args.pattern):
                    stored = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry.response_time))
                    print(f"{entry.size:>12} {entry.status} {stored} {entry.url}")
        elif args.cache_command == "prune":
            removed, freed = maintenance.prune(store)
            print(f"removed {removed} entries without a body, evicted {freed} bytes")
        elif args.cache_command == "clear":
            maintenance.clear(store)
            print(f"cleared {args.cache_dir}")
        elif args.cache_command == "verify":
            checked, corrupt = maintenance.verify(store)
            for path in corrupt:
                print(f"removed corrupt body {path}")
            print(f"verified {checked} bodies, {len(corrupt)} corrupt")
            return 1 if corrupt else 0
        elif args.cache_command in ("export", "import"):
            return _command_cache_archive(store, args)
    finally:
        store.close()
    return 0


def _since(text: str) -> float:
    """A time as seconds since the epoch, or ISO 8601 (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds since the epoch or an ISO 8601 time, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _add_cache_export_import(cache_commands: Any) -> None:
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
    import_ = cache_commands.add_parser(
        "import", help="add an archive's responses to the cache, checking every body"
    )
    import_.add_argument("file", type=_existing_file, help="an archive from `cache export`")


def _command_cache_archive(store: Store, args: argparse.Namespace) -> int:
    try:
        if args.cache_command == "export":
            result = archive.export_archive(store, args.file, args.pattern, args.since)
            verb, preposition = "exported", "to"
        else:
            result = archive.import_archive(store, args.file)
            verb, preposition = "imported", "from"
    except tarfile.TarError as exc:
        print(f"transcache: {args.file}: not a cache archive: {exc}", file=sys.stderr)
        return 1
    for reason in result.skipped:
        print(f"skipped {reason}")
    print(
        f"{verb} {result.entries} entries ({result.bodies} bodies, {result.bytes} bytes) "
        f"{preposition} {args.file}"
    )
    return 1 if result.skipped and args.cache_command == "import" else 0


def _print_stats(store: Store, as_json: bool) -> None:
    stats = maintenance.stats(store)
    counters = {name: stats.counters.get(name, 0) for name in STAT_COUNTERS}
    if as_json:
        print(json.dumps({"entries": stats.entries, "bytes": stats.bytes, **counters}))
        return
    print(f"entries              {stats.entries}")
    print(f"bytes stored         {stats.bytes}")
    for name in STAT_COUNTERS:
        print(f"{name.replace('_', ' '):<20} {counters[name]}")


def _config_from(args: argparse.Namespace) -> Config:
    host, port = args.listen
    return Config(
        **_file_and_flag_options(args),
        listen_host=host,
        listen_port=port,
        ca_dir=args.ca_dir.absolute(),
        cache_dir=args.cache_dir.absolute(),
        resolve=dict(args.resolve),
        header_timeout=args.header_timeout,
        upstream_timeout=args.upstream_timeout,
        allow_unauthenticated=args.allow_unauthenticated,
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
    # Under socket activation the service manager's sockets replace --listen.
    listeners = _notify.trio_listeners(_notify.inherited_sockets()) or None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_proxy(config, listeners=listeners) as running:
            _print_start(running)
            _notify.notify("READY=1")
            async for signum in signals:
                name = signal.Signals(signum).name
                logging.getLogger("transcache").info("%s received, stopping", name)
                _notify.notify("STOPPING=1")
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


# -- adoption: install, uninstall, status, env, exec, doctor -----------------------------------


def _add_install_parser(commands: Any) -> None:
    install = commands.add_parser(
        "install", help="run as a user service and configure shells (and trust stores)"
    )
    install.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"where the service listens (default: 127.0.0.1:{DEFAULT_PORT})",
    )
    _add_ca_dir(install)
    _add_cache_dir(install)
    install.add_argument(
        "--no-proxy",
        action="append",
        default=[],
        metavar="HOST",
        help="also bypass the proxy for HOST (added to NO_PROXY); repeatable",
    )
    install.add_argument(
        "--socket-activation",
        action="store_true",
        help="systemd: a .socket unit listens and starts the service on first connection",
    )
    install.add_argument(
        "--at-boot", action="store_true", help="systemd: start at boot, not login (linger)"
    )
    install.add_argument(
        "--trust",
        action="append",
        choices=installer.TRUST_CHOICES,
        default=[],
        help="also trust the CA in the system store, NSS databases or Java; repeatable",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="print the plan (diffs, commands); change nothing"
    )
    install.set_defaults(handler=_command_install)


def _command_install(args: argparse.Namespace) -> int:
    host, port = args.listen
    settings = Settings(
        listen_host=host,
        listen_port=port,
        ca_dir=args.ca_dir.absolute(),
        cache_dir=args.cache_dir.absolute(),
        no_proxy=tuple(args.no_proxy),
        socket_activation=args.socket_activation,
        at_boot=args.at_boot,
        trust=tuple(args.trust),
    )
    machine = installer.Machine.detect()
    if args.dry_run:
        plan = installer.preview(settings, machine)
        if not settings.ca_path.exists():
            print(f"create the CA in {settings.ca_dir}")
        lines = describe(plan.steps, Manifest.load(manifest_path()))
        print("\n".join(lines) if lines else "nothing to change")
        for note in plan.notes:
            print(f"note: {note}")
        return 0
    plan = installer.prepare(settings, machine)
    root_commands = needs_root(plan.steps)
    if root_commands:
        print("these commands need root; sudo will ask for your password:")
        for argv in root_commands:
            print(f"  $ {shlex.join(argv)}")
        sys.stdout.flush()
    outcome = installer.install(settings, plan, SubprocessRunner())
    for change in outcome.changed:
        print(change)
    for note in plan.notes:
        print(f"transcache: note: {note}", file=sys.stderr)
    if outcome.changed:
        print('installed: new shells use the proxy; in this one, run eval "$(transcache env)"')
    else:
        print("already installed; nothing changed")
    return 0


def _add_uninstall_parser(commands: Any) -> None:
    uninstall = commands.add_parser("uninstall", help="undo everything `install` did")
    uninstall.add_argument("--purge", action="store_true", help="also delete the CA and the cache")
    uninstall.set_defaults(handler=_command_uninstall)


def _command_uninstall(args: argparse.Namespace) -> int:
    outcome = installer.uninstall(SubprocessRunner(), purge=args.purge)
    for change in outcome.changed:
        print(change)
    for warning in outcome.warnings:
        print(f"transcache: warning: {warning}", file=sys.stderr)
    if not outcome.changed and not outcome.warnings:
        print("nothing to uninstall")
    return 0


def _add_status_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="what is installed, and whether it works")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_command_status)


def _command_status(args: argparse.Namespace) -> int:
    status = install_status.collect(os.environ)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
        return 0
    age = status.bundle_age_seconds
    shell = "all variables set"
    if status.missing_variables or status.wrong_variables:
        shell = "missing: " + (", ".join(status.missing_variables) or "-")
        shell += "; different: " + (", ".join(status.wrong_variables) or "-")
    rows = (
        ("installed", "yes" if status.installed else "no"),
        (
            "service",
            ("file present" if status.service_file else "no service file")
            + (", enabled" if status.enabled else ", not enabled"),
        ),
        ("proxy", f"{status.url} " + ("answers /healthz" if status.answering else "not answering")),
        ("CA", f"{status.ca_path} (expires {status.ca_expires or 'unknown: not created yet'})"),
        (
            "bundle",
            f"{status.bundle_path} "
            + ("(missing)" if age is None else f"(written {age / 60:.0f} minutes ago)"),
        ),
        ("trust stores", ", ".join(status.trust_stores) or "none"),
        ("this shell", shell),
        ("logs", status.logs),
    )
    for name, value in rows:
        print(f"{name:<14} {value}")
    for host, seen in status.tls_rejections.items():
        clients = ", ".join(seen["clients"])
        print(f"{'rejected by':<14} {host}: {seen['count']} handshake(s) by {clients}")
    return 0


def _add_env_parser(commands: Any) -> None:
    env = commands.add_parser("env", help='print the variables, for eval "$(transcache env)"')
    env.add_argument("--shell", choices=("sh", "fish", "json"), default="sh")
    env.set_defaults(handler=_command_env)


def _command_env(args: argparse.Namespace) -> int:
    variables = (installer.installed_settings() or Settings()).environment()
    render = {"sh": render_sh, "fish": render_fish, "json": render_json}[args.shell]
    print(render(variables), end="")
    return 0


def _add_exec_parser(commands: Any) -> None:
    exec_ = commands.add_parser(
        "exec",
        help="run a command through the service, or through a proxy started for it",
        usage="transcache exec [run options] -- CMD [ARGS...]",
    )
    _add_run_options(exec_)
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    exec_.set_defaults(handler=_command_exec)


def _command_exec(args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        print("transcache exec: no command given (transcache exec -- CMD ...)", file=sys.stderr)
        return 2
    if shutil.which(command[0]) is None:
        print(f"transcache exec: command not found: {command[0]}", file=sys.stderr)
        return EXIT_NOT_FOUND
    defaults = build_parser().parse_args(["exec", "--", command[0]])
    options_given = any(
        getattr(args, name) != value for name, value in vars(defaults).items() if name != "argv"
    )
    settings = installer.installed_settings() or Settings()
    if not options_given and answers(settings.url):
        status = trio.run(execute.run_with_service, command, settings.environment())
        summary = execute.summary_line(settings.url, None)
    else:
        config = _config_from(args)
        if args.listen == defaults.listen:
            config = dataclasses.replace(config, listen_port=0)
        try:
            status, summary = trio.run(execute.run_in_process, command, config)
        except OSError as exc:
            print(f"transcache exec: cannot start the proxy: {exc}", file=sys.stderr)
            return 1
    print(summary, file=sys.stderr)
    return status


def _add_doctor_parser(commands: Any) -> None:
    doctor_ = commands.add_parser(
        "doctor", help="check that pip, uv, git, curl, cargo and npm go through the proxy"
    )
    doctor_.set_defaults(handler=_command_doctor)


def _command_doctor(args: argparse.Namespace) -> int:
    findings = doctor.run(os.environ)
    if not findings:
        print("none of pip, uv, git, curl, cargo, npm is installed")
    for finding in findings:
        print(f"{finding.client:<6} {'OK' if finding.ok else 'FAIL: ' + finding.message}")
    return 0 if all(f.ok for f in findings) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
        if args.command == "run":
            return _command_run(args)
        if args.command == "ca" and args.ca_command == "path":
            print(CertificateAuthority.load_or_create(args.ca_dir).cert_path)
            return 0
        if args.command == "cache":
            return _command_cache(args)
    except CAError as exc:
        print(f"transcache: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"transcache: {exc}", file=sys.stderr)
        return 2
    except (InstallError, CommandError, OSError) as exc:
        print(f"transcache: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args)


if __name__ == "__main__":
    sys.exit(main())
