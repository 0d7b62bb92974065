"""Package registries known by the shape of their URLs, never by host name, so mirrors and
private indexes get the same treatment (pure; table-tested in tests/test_registries.py).

For a request path this says which ecosystem it belongs to and what kind of resource it is:

- ARTIFACT: content that never changes once published (a wheel, a .deb, a crate, a Go module
  zip at an exact version, a Maven release, ...): cached as immutable;
- INDEX: a page that lists what exists (a PEP 503/691 project page, an npm packument, a Debian
  Release file, a crates sparse-index file): fresh for the index window, then served
  stale-while-revalidate (see docs/caching.md);
- OTHER: ordinary HTTP caching.

Each shape names the convention behind it. Configured rules (`--immutable`, `--min-ttl`,
`--never-cache`, `[[rule]]`) are tried first and override all of this.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass


class Ecosystem(enum.Enum):
    PYPI = "pypi"
    NPM = "npm"
    DEBIAN = "debian"
    CRATES = "crates"
    GO = "go"
    MAVEN = "maven"
    CONDA = "conda"
    RUBYGEMS = "rubygems"
    NUGET = "nuget"
    GIT = "git"
    OTHER = "other"


class Kind(enum.Enum):
    ARTIFACT = "artifact"
    INDEX = "index"
    OTHER = "other"


@dataclass(frozen=True)
class Shape:
    ecosystem: Ecosystem
    kind: Kind
    convention: str  # what makes it so, for Cache-Status and the docs


OTHER = Shape(Ecosystem.OTHER, Kind.OTHER, "")

# A package version as registries write it: digits first, then anything but a path separator.
_VERSION = r"v?\d[^/]*"
_SHAPES: tuple[tuple[re.Pattern[str], Shape], ...] = tuple(
    (re.compile(pattern), shape)
    for pattern, shape in [
        # PyPI-style file hosting: /packages/<2 hex>/<2 hex>/<hash>/<file> (wheels, sdists,
        # PEP 658 .metadata): the path embeds the content's hash.
        (
            r"/packages/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{16,}/[^/]+$",
            Shape(Ecosystem.PYPI, Kind.ARTIFACT, "pypi-file"),
        ),
        # Wheels and their PEP 658 metadata anywhere: a wheel's name pins its version.
        (r"\.whl(\.metadata)?$", Shape(Ecosystem.PYPI, Kind.ARTIFACT, "wheel")),
        # PEP 503 / 691 project pages: .../simple/<project>/ (devpi's +simple too).
        (r"/\+?simple/[^/]+/?$", Shape(Ecosystem.PYPI, Kind.INDEX, "pypi-project-page")),
        # npm tarballs: /<name>/-/<name>-<version>.tgz, scoped or not.
        (r"/-/[^/]+-" + _VERSION + r"\.tgz$", Shape(Ecosystem.NPM, Kind.ARTIFACT, "npm-tarball")),
        # Debian and Ubuntu: pool files are named by version and never replaced; by-hash
        # files are named by their content's hash (apt fetches Packages through them).
        (
            r"/pool/.+\.(deb|udeb|dsc|orig\.tar\.[a-z0-9]+|debian\.tar\.[a-z0-9]+)$",
            Shape(Ecosystem.DEBIAN, Kind.ARTIFACT, "debian-pool"),
        ),
        (
            r"/by-hash/(MD5Sum|SHA1|SHA256|SHA512)/[0-9a-f]{32,}$",
            Shape(Ecosystem.DEBIAN, Kind.ARTIFACT, "debian-by-hash"),
        ),
        (r"/dists/[^/]+/(In)?Release$", Shape(Ecosystem.DEBIAN, Kind.INDEX, "debian-release")),
        # Debian Packages files outside by-hash are OTHER: a window on them could pair a new
        # Release with old Packages (hash mismatches).
        # crates: the download API and the static file shape; sparse-index files.
        (
            r"/api/v1/crates/[^/]+/" + _VERSION + r"/download$",
            Shape(Ecosystem.CRATES, Kind.ARTIFACT, "crate-download"),
        ),
        (r"\.crate$", Shape(Ecosystem.CRATES, Kind.ARTIFACT, "crate-file")),
        # Go module proxy: @v/<exact version>.zip|.mod|.info (not @latest, not the list).
        (
            r"/@v/v\d+\.\d+\.\d+[^/]*\.(zip|mod|info)$",
            Shape(Ecosystem.GO, Kind.ARTIFACT, "go-module"),
        ),
        # Conda packages in a channel's platform subdir: name-version-build.conda|.tar.bz2.
        (
            r"/(noarch|(linux|osx|win|emscripten|wasi|zos)-[a-z0-9_]+)/[^/]+-[^/-]+-[^/-]+"
            r"\.(conda|tar\.bz2)$",
            Shape(Ecosystem.CONDA, Kind.ARTIFACT, "conda-package"),
        ),
        (r"/gems/[^/]+-" + _VERSION + r"\.gem$", Shape(Ecosystem.RUBYGEMS, Kind.ARTIFACT, "gem")),
        (r"\.nupkg$", Shape(Ecosystem.NUGET, Kind.ARTIFACT, "nupkg")),
    ]
)
# Maven / Gradle release artifacts: .../<artifact>/<version>/<artifact>-<version>[-x].<ext>,
# the version a release (not -SNAPSHOT); maven-metadata.xml lists versions and changes.
_MAVEN = re.compile(r"/([^/]+)/(\d[^/]*)/([^/]+)$")
MAVEN_ARTIFACT = Shape(Ecosystem.MAVEN, Kind.ARTIFACT, "maven-release")
# A crates sparse-index file: 1/<n>, 2/<nn>, 3/<n>/<nnn>, or <nn>/<nn>/<name> where the
# directories are the name's first characters (cargo's index layout).
_CRATE_NAME = re.compile(r"^[a-z0-9_-]+$")
CRATES_INDEX = Shape(Ecosystem.CRATES, Kind.INDEX, "crates-sparse-index")
# An npm packument: /<name>, /@scope/<name> or /@scope%2f<name>, asked for as npm asks:
# with the abbreviated-metadata Accept type (npm before 10, pnpm, yarn), or, since npm 10
# asks for full packuments with a plain `Accept: application/json`, by the request type its
# fetcher (pacote) names in `pacote-req-type`.
_NPM_PACKUMENT = re.compile(r"^/(@[^/]+(/|%2[fF]))?[^/@][^/]*$")
NPM_ACCEPT = "application/vnd.npm.install-v1+json"
NPM_PACKUMENT = Shape(Ecosystem.NPM, Kind.INDEX, "npm-packument")
# A sparse index's config.json (where crates download from), asked for by cargo, which sends
# `cargo-protocol` with every sparse-index request; any other config.json is someone else's.
CRATES_CONFIG = Shape(Ecosystem.CRATES, Kind.INDEX, "crates-sparse-config")
# Paths whose shape is remembered (a dict entry each; a warm install asks for a few hundred).
ROUTE_SHAPES_REMEMBERED = 4096
# The request headers (lower-case) a shape may depend on besides the path.
HINT_HEADERS = ("accept", "pacote-req-type", "cargo-protocol")


def shape_of(path: str, hints: Mapping[str, str] | None = None) -> Shape:
    """What the resource at `path` (path and query) is. `hints` are the request's
    HINT_HEADERS that it has: how npm and cargo ask tells a packument or an index's
    config.json from any other path of that shape."""
    route = path.partition("?")[0]
    shape = _route_shape(route)
    if shape is not OTHER:
        return shape
    hints = hints or {}
    if _asked_as_npm(hints) and _NPM_PACKUMENT.match(route):
        return NPM_PACKUMENT
    if "cargo-protocol" in hints and route.endswith("/config.json"):
        return CRATES_CONFIG
    return OTHER


@functools.lru_cache(maxsize=ROUTE_SHAPES_REMEMBERED)
def _route_shape(route: str) -> Shape:
    """The shape the path alone tells (every request asks: warm installs repeat paths, so the
    patterns run once per path)."""
    for pattern, shape in _SHAPES:
        if pattern.search(route):
            return shape
    if _maven_release(route):
        return MAVEN_ARTIFACT
    if _sparse_index_file(route):
        return CRATES_INDEX
    return OTHER


def _asked_as_npm(hints: Mapping[str, str]) -> bool:
    return NPM_ACCEPT in hints.get("accept", "") or hints.get("pacote-req-type") == "packument"


def _maven_release(route: str) -> bool:
    match = _MAVEN.search(route)
    if match is None:
        return False
    artifact, version, filename = match.groups()
    return (
        not version.endswith("-SNAPSHOT")
        and filename.startswith(f"{artifact}-{version}")
        and not filename.startswith("maven-metadata")
    )


def _sparse_index_file(route: str) -> bool:
    parts = route.rsplit("/", 3)
    name = parts[-1]
    if not _CRATE_NAME.match(name):
        return False
    if len(name) <= 2:
        expected = [str(len(name)), name]
    elif len(name) == 3:
        expected = ["3", name[0], name]
    else:
        expected = [name[:2], name[2:4], name]
    return parts[-len(expected) :] == expected and len(parts) > len(expected)
