"""`transcache ca`: the root CA."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._options import add_ca_dir

if TYPE_CHECKING:
    from ._options import Commands


def add_parsers(commands: Commands) -> None:
    ca = commands.add_parser("ca", help="the root CA")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    path = ca_commands.add_parser("path", help="print the CA certificate's path")
    add_ca_dir(path)
    path.set_defaults(handler=_command_path)


def _command_path(args: argparse.Namespace) -> int:
    from .._ca import CertificateAuthority

    print(CertificateAuthority.load_or_create(args.ca_dir).cert_path)
    return 0
