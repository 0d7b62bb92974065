"""The shared tier's options (docs/team.md) for `run`, `exec` and `install`, and its
maintenance:
`cache prune --shared --older-than DAYS` and `cache keygen`. Credentials are never options:
they come from the AWS variables and files."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _paths
from .._config import SHARED_CACHE_SETTINGS
from ._options import EXIT_FAILURE, existing_file, positive

if TYPE_CHECKING:
    from ..store import Store

DAY = 86400.0


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
    return {name: getattr(args, name, None) for name in SHARED_CACHE_SETTINGS}


def shared_cache_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The `transcache run` flags that pass the shared tier's options on (`install` writes
    them into the service's command line; key files as absolute paths)."""
    return flags_for(shared_cache_options(args))


def flags_for(options: Mapping[str, object]) -> tuple[str, ...]:
    """`transcache run` flags for shared-tier options by their config names (None: unset)."""
    flags: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(flag)
        elif name == "shared_cache" and value == "none":
            flags.append("--no-shared-cache")
        else:
            flags += [flag, str(value.absolute() if isinstance(value, Path) else value)]
    return tuple(flags)


def add_shared_prune_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shared",
        action="store_true",
        help="prune the shared cache instead: delete what was written before --older-than",
    )
    parser.add_argument("--older-than", type=positive(float), metavar="DAYS")
    parser.add_argument(
        "--shared-cache",
        metavar="s3://BUCKET/PREFIX",
        help="the shared cache to prune (default: the config file's shared_cache)",
    )
    parser.add_argument("--config", type=Path, default=_paths.default_config_file())


def prune_shared(store: Store, args: argparse.Namespace) -> int:
    """`cache prune --shared --older-than DAYS`: delete the bucket's old metadata and bodies."""
    import trio

    from .._config import build_config
    from ..tiers.shared import open_shared_tier

    if args.older_than is None:
        print("transcache: --shared needs --older-than DAYS", file=sys.stderr)
        return EXIT_FAILURE
    config = build_config({"shared_cache": args.shared_cache}, args.config)
    tier = open_shared_tier(config, store)
    if tier is None:
        print("transcache: no shared cache: give --shared-cache s3://...", file=sys.stderr)
        return EXIT_FAILURE

    async def prune() -> int:
        try:
            return await tier.prune(time.time() - args.older_than * DAY)
        finally:
            await tier.aclose()

    removed = trio.run(prune)
    print(f"deleted {removed} objects older than {args.older_than:g} days from {tier.bucket}")
    return 0


def add_keygen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("private", type=Path, help="the signing key to write (kept 0600)")
    parser.add_argument("public", type=Path, help="the verify key to write (give to readers)")
    parser.set_defaults(handler=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    from ..tiers.trust import generate_pair

    generate_pair(args.private, args.public)
    print(f"wrote {args.private} (--shared-cache-signing-key, writers only)")
    print(f"wrote {args.public} (--shared-cache-verify-key, every reader)")
    return 0
