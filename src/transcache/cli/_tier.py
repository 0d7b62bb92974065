"""The shared tier's options (docs/team.md), shared by `run`, `exec` and `install`.
Credentials are never options: they come from the AWS variables and files."""

from __future__ import annotations

import argparse
from typing import Any

from ._options import existing_file, positive

SHARED_OPTIONS = (
    "shared_cache",
    "shared_cache_timeout",
    "shared_cache_failures",
    "shared_cache_skip",
    "shared_cache_signing_key",
    "shared_cache_verify_key",
    "shared_cache_readonly",
)


def add_shared_cache_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shared cache (an S3-compatible bucket; docs/team.md)")
    group.add_argument(
        "--shared-cache",
        metavar="s3://BUCKET/PREFIX",
        help="read after a local miss, write after a store; endpoint and credentials by the "
        "AWS variables and files (AWS_ENDPOINT_URL, AWS_PROFILE, ...)",
    )
    group.add_argument(
        "--no-shared-cache",
        dest="shared_cache",
        action="store_const",
        const="none",
        help="no shared cache, whatever the config file says (with --offline: nothing "
        "leaves the machine)",
    )
    group.add_argument(
        "--shared-cache-timeout",
        type=positive(float),
        metavar="SECONDS",
        help="wait this long for the bucket's first byte, then ask the origin (default: 2)",
    )
    group.add_argument(
        "--shared-cache-failures",
        type=positive(int),
        metavar="N",
        help="after N failures in a row, skip the bucket for a while (default: 5)",
    )
    group.add_argument(
        "--shared-cache-skip",
        type=positive(float),
        metavar="SECONDS",
        help="how long a failing bucket is skipped before it is tried again (default: 30)",
    )
    group.add_argument(
        "--shared-cache-signing-key",
        type=existing_file,
        metavar="FILE",
        help="sign the metadata this proxy uploads (Ed25519 PEM; `transcache cache keygen`)",
    )
    group.add_argument(
        "--shared-cache-verify-key",
        type=existing_file,
        metavar="FILE",
        help="ignore entries not signed by this key's private half (Ed25519 PEM)",
    )
    group.add_argument(
        "--shared-cache-readonly",
        action="store_true",
        default=None,
        help="read the bucket, upload nothing (untrusted jobs, pull requests from forks)",
    )


def shared_cache_options(args: argparse.Namespace) -> dict[str, Any]:
    """The shared tier's options as `build_config` takes them (None: not given)."""
    return {name: getattr(args, name, None) for name in SHARED_OPTIONS}
