"""`transcache install`, `uninstall`, `status`, `env` and `doctor`: the always-on service, the
shells and trust stores it configures, and whether clients go through it."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import TYPE_CHECKING

from .._config import DEFAULT_PORT
from ..install.settings import TRUST_CHOICES, Settings
from ._human import age, plural
from ._options import add_ca_dir, add_cache_dir, existing_file, listen_address
from ._tier import add_shared_cache_options, shared_cache_flags

if TYPE_CHECKING:
    from ..install.installer import Machine
    from ..install.status import Status
    from ._options import Commands

ENV_SHELLS = ("sh", "fish", "json")
# `status` when the service is installed but nothing answers: LSB's "program is not running".
EXIT_NOT_RUNNING = 3


def add_parsers(commands: Commands) -> None:
    """install, uninstall, status and env (doctor comes after exec: `add_doctor_parser`)."""
    _add_install_parser(commands)
    uninstall = commands.add_parser("uninstall", help="undo everything `install` did")
    uninstall.add_argument("--purge", action="store_true", help="also delete the CA and the cache")
    uninstall.add_argument(
        "--dry-run", action="store_true", help="print what would be undone; change nothing"
    )
    uninstall.set_defaults(handler=_command_uninstall)
    status = commands.add_parser(
        "status",
        help=f"what is installed, and whether it works (exit {EXIT_NOT_RUNNING}: installed, "
        "not answering)",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_command_status)
    env = commands.add_parser("env", help='print the variables, for eval "$(transcache env)"')
    env.add_argument("--shell", choices=ENV_SHELLS, default="sh")
    env.set_defaults(handler=_command_env)


def add_doctor_parser(commands: Commands) -> None:
    doctor = commands.add_parser(
        "doctor", help="check that pip, uv, git, curl, cargo and npm go through the proxy"
    )
    doctor.set_defaults(handler=_command_doctor)


def _add_install_parser(commands: Commands) -> None:
    install = commands.add_parser(
        "install", help="run as a user service and configure shells (and trust stores)"
    )
    install.add_argument(
        "--listen",
        type=listen_address,
        default=("127.0.0.1", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"where the service listens (default: 127.0.0.1:{DEFAULT_PORT})",
    )
    add_ca_dir(install)
    add_cache_dir(install)
    install.add_argument(
        "--no-proxy",
        action="append",
        default=[],
        metavar="HOST",
        help="also bypass the proxy for HOST (added to NO_PROXY); repeatable",
    )
    install.add_argument(
        "--upstream-proxy",
        metavar="URL",
        help="the service reaches origins through this proxy, http://[USER:PASS@]HOST:PORT, "
        "or `none` (default: the https_proxy / http_proxy install runs with, else the earlier "
        "install's); credentials go in a file only you can read",
    )
    install.add_argument(
        "--upstream-proxy-file",
        type=existing_file,
        metavar="FILE",
        help="as --upstream-proxy, the URL read from FILE (keeps credentials out of argv)",
    )
    install.add_argument(
        "--upstream-proxy-bypass",
        metavar="PATTERNS",
        help="hosts the service reaches directly, NO_PROXY syntax (default: the NO_PROXY "
        "install runs with)",
    )
    add_shared_cache_options(install)
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
        choices=TRUST_CHOICES,
        default=[],
        help="also trust the CA in the system store, NSS databases or Java; repeatable",
    )
    install.add_argument(
        "--apt",
        action="store_true",
        help="also make apt (under sudo too) use the proxy: an /etc/apt/apt.conf.d snippet",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="print the plan (diffs, commands); change nothing"
    )
    install.set_defaults(handler=_command_install)


def _command_install(args: argparse.Namespace) -> int:
    import dataclasses

    from ..install import installer, parent
    from ..install.plan import needs_root
    from ..install.runner import SubprocessRunner

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
        apt=args.apt,
        shared_cache=shared_cache_flags(args),
    )
    settings = installer.with_user_node_ca(settings, os.environ)
    previous = installer.installed_settings()
    settings = dataclasses.replace(
        settings,
        upstream_proxy=parent.chosen_parent(
            args.upstream_proxy, args.upstream_proxy_file, os.environ, settings, previous
        ),
        upstream_proxy_bypass=parent.chosen_bypass(
            args.upstream_proxy_bypass, os.environ, settings, previous
        ),
    )
    machine = installer.Machine.detect()
    if args.dry_run:
        return _print_dry_run(settings, machine)
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
    if settings.upstream_proxy is not None:
        print(f"the service reaches origins through {settings.upstream_proxy}")
    for note in plan.notes:
        print(f"transcache: note: {note}", file=sys.stderr)
    if outcome.changed:
        print('installed: new shells use the proxy; in this one, run eval "$(transcache env)"')
    else:
        print("already installed; nothing changed")
    return 0


def _print_dry_run(settings: Settings, machine: Machine) -> int:
    from ..install import installer
    from ..install.plan import Manifest, describe
    from ..install.settings import manifest_path

    plan = installer.preview(settings, machine)
    if not settings.ca_path.exists():
        print(f"create the CA in {settings.ca_dir}")
    lines = describe(plan.steps, Manifest.load(manifest_path()))
    print("\n".join(lines) if lines else "nothing to change")
    for note in plan.notes:
        print(f"note: {note}")
    return 0


def _command_uninstall(args: argparse.Namespace) -> int:
    from ..install import installer
    from ..install.runner import SubprocessRunner

    if args.dry_run:
        lines = installer.uninstall_preview(purge=args.purge)
        print("\n".join(lines) if lines else "nothing to uninstall")
        return 0
    outcome = installer.uninstall(SubprocessRunner(), purge=args.purge)
    for change in outcome.changed:
        print(change)
    for warning in outcome.warnings:
        print(f"transcache: warning: {warning}", file=sys.stderr)
    if not outcome.changed and not outcome.warnings:
        print("nothing to uninstall")
    return 0


def _command_status(args: argparse.Namespace) -> int:
    from ..install import status as install_status

    status = install_status.collect(os.environ)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        _print_status(status)
    if status.down:
        print(
            f"transcache: the service is installed but does not answer at {status.url}: "
            f"start it with `{status.start}`",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    return 0


def _print_status(status: Status) -> None:
    bundle_age = status.bundle_age_seconds
    shell = "all variables set"
    if status.missing_variables or status.wrong_variables:
        shell = "missing: " + (", ".join(status.missing_variables) or "-")
        shell += "; different: " + (", ".join(status.wrong_variables) or "-")
    rows: list[tuple[str, str]] = [
        ("installed", "yes" if status.installed else "no"),
        (
            "service",
            ("file present" if status.service_file else "no service file")
            + (", enabled" if status.enabled else ", not enabled"),
        ),
        ("proxy", f"{status.url} " + ("answers /healthz" if status.answering else "not answering")),
        ("upstream proxy", status.upstream_proxy or "none (direct)"),
        ("CA", f"{status.ca_path} (expires {status.ca_expires or 'unknown: not created yet'})"),
        (
            "bundle",
            f"{status.bundle_path} "
            + ("(missing)" if bundle_age is None else f"(written {age(bundle_age)})"),
        ),
        ("trust stores", ", ".join(status.trust_stores) or "none"),
        ("this shell", shell),
    ]
    if status.logs:
        rows.append(("logs", status.logs))
    for name, value in rows:
        print(f"{name:<14} {value}")
    if status.cache:
        cache = status.cache
        print(
            f"{'cache':<14} {cache.get('entries')} entries, {cache.get('bytes')} bytes; "
            f"{cache.get('hits')} hits, {cache.get('misses')} misses"
        )
        if cache.get("shared_cache"):
            print(f"{'shared cache':<14} {cache['shared_cache']}")
    for host, seen in status.tls_rejections.items():
        clients = ", ".join(seen["clients"])
        handshakes = plural(seen["count"], "handshake")
        print(f"{'rejected by':<14} {host}: {handshakes} by {clients}")


def _command_env(args: argparse.Namespace) -> int:
    from ..install.environment import render_fish, render_json, render_sh

    variables = installed_settings().environment()
    render = {"sh": render_sh, "fish": render_fish, "json": render_json}[args.shell]
    print(render(variables), end="")
    return 0


def installed_settings() -> Settings:
    """What `install` recorded, or the defaults when nothing is installed."""
    from ..install import installer

    return installer.installed_settings() or Settings()


def _command_doctor(args: argparse.Namespace) -> int:
    from ..install import doctor

    findings = doctor.run(os.environ)
    for finding in findings:
        verdict = finding.verdict
        shown = f"FAIL: {finding.message}" if verdict is doctor.Verdict.FAIL else verdict.value
        print(f"{finding.client:<6} {shown}")
    return 0 if all(f.ok for f in findings) else 1
