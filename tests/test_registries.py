"""Registries known by URL shape (pure): which ecosystem a path belongs to, and whether it is
an artifact that never changes, an index page that gets the index window, or neither."""

from __future__ import annotations

import pytest

from transcache._registries import NPM_ACCEPT, Ecosystem, Kind, shape_of

NPM = f"{NPM_ACCEPT}; q=1.0, application/json; q=0.8, */*"
HASH = "3d5f8c0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5"


@pytest.mark.parametrize(
    ("path", "accept", "ecosystem", "kind"),
    [
        # Python: hash-addressed files, wheels anywhere, PEP 503/691 project pages
        (f"/packages/3d/5f/{HASH[4:]}/pkg-1.0.tar.gz", None, "pypi", "artifact"),
        (f"/packages/3d/5f/{HASH[4:]}/pkg-1.0-py3-none-any.whl.metadata", None, "pypi", "artifact"),
        ("/files/pkg-1.0-py3-none-any.whl", None, "pypi", "artifact"),
        ("/simple/pkg/", None, "pypi", "index"),
        ("/root/pypi/+simple/pkg/", None, "pypi", "index"),
        ("/simple/", None, "other", "other"),
        # npm: tarballs; packuments only when asked for as npm asks
        ("/left-pad/-/left-pad-1.3.0.tgz", None, "npm", "artifact"),
        ("/@scope/pkg/-/pkg-2.0.0-beta.1.tgz", None, "npm", "artifact"),
        ("/left-pad", NPM, "npm", "index"),
        ("/@scope%2fpkg", NPM, "npm", "index"),
        ("/@scope/pkg", NPM, "npm", "index"),
        ("/left-pad", "text/html", "other", "other"),
        # Debian: pool files and by-hash are artifacts; (In)Release is an index; Packages is not
        ("/debian/pool/main/c/curl/curl_7.88.1-10_amd64.deb", None, "debian", "artifact"),
        ("/debian/pool/main/c/curl/curl_7.88.1.orig.tar.gz", None, "debian", "artifact"),
        ("/debian/pool/main/c/curl/curl_7.88.1-10.debian.tar.xz", None, "debian", "artifact"),
        (f"/debian/dists/stable/main/by-hash/SHA256/{HASH}", None, "debian", "artifact"),
        ("/debian/dists/bookworm/InRelease", None, "debian", "index"),
        ("/debian/dists/bookworm-updates/Release", None, "debian", "index"),
        ("/debian/dists/bookworm/main/binary-amd64/Packages.xz", None, "other", "other"),
        # crates: downloads and the sparse index (directories are the name's first letters)
        ("/api/v1/crates/serde/1.0.200/download", None, "crates", "artifact"),
        ("/crates/serde/serde-1.0.200.crate", None, "crates", "artifact"),
        ("/se/rd/serde", None, "crates", "index"),
        ("/3/l/log", None, "crates", "index"),
        ("/2/cc", None, "crates", "index"),
        ("/1/a", None, "crates", "index"),
        ("/ab/cd/serde", None, "other", "other"),  # not the name's own letters
        # Go module proxy: exact versions only
        ("/example.test/mod/@v/v1.2.3.zip", None, "go", "artifact"),
        ("/example.test/mod/@v/v1.2.3-pre.1.mod", None, "go", "artifact"),
        ("/example.test/mod/@v/v0.0.0-20240101000000-abcdef123456.info", None, "go", "artifact"),
        ("/example.test/mod/@v/list", None, "other", "other"),
        ("/example.test/mod/@latest", None, "other", "other"),
        # Maven: releases, not snapshots or metadata
        ("/maven2/org/example/lib/1.2.0/lib-1.2.0.jar", None, "maven", "artifact"),
        ("/maven2/org/example/lib/1.2.0/lib-1.2.0-sources.jar", None, "maven", "artifact"),
        ("/maven2/org/example/lib/1.3-SNAPSHOT/lib-1.3-20240101.jar", None, "other", "other"),
        ("/maven2/org/example/lib/maven-metadata.xml", None, "other", "other"),
        # conda, RubyGems, NuGet
        ("/conda-forge/linux-64/numpy-1.26.4-py311h64a7726_0.conda", None, "conda", "artifact"),
        ("/main/noarch/six-1.16.0-pyhd3eb1b0_1.tar.bz2", None, "conda", "artifact"),
        ("/gems/rake-13.1.0.gem", None, "rubygems", "artifact"),
        ("/v3-flatcontainer/lib/13.0.3/lib.13.0.3.nupkg", None, "nuget", "artifact"),
        # anything else
        ("/", None, "other", "other"),
        ("/pages/0001.html", None, "other", "other"),
        ("/archive.tar.bz2", None, "other", "other"),
    ],
)  # fmt: skip
def test_a_path_is_known_by_its_shape(
    path: str, accept: str | None, ecosystem: str, kind: str
) -> None:
    shape = shape_of(path, {"accept": accept} if accept else {})
    assert (shape.ecosystem, shape.kind) == (Ecosystem(ecosystem), Kind(kind))


def test_the_query_does_not_change_the_shape() -> None:
    assert shape_of("/simple/pkg/?format=json").kind is Kind.INDEX


@pytest.mark.parametrize(
    ("path", "hints", "ecosystem", "kind"),
    [
        # npm 10+ asks for full packuments with Accept: application/json; its fetcher
        # (pacote) names the request type
        ("/left-pad", {"pacote-req-type": "packument"}, "npm", "index"),
        ("/@scope%2fpkg", {"pacote-req-type": "packument"}, "npm", "index"),
        ("/left-pad", {"accept": "application/json"}, "other", "other"),
        ("/left-pad", {"pacote-req-type": "tarball"}, "other", "other"),
        ("/a/b/c", {"pacote-req-type": "packument"}, "other", "other"),
        # a sparse index's config.json, as cargo asks for it (it sends cargo-protocol)
        ("/index/config.json", {"cargo-protocol": "version=1"}, "crates", "index"),
        ("/config.json", {"cargo-protocol": "version=1"}, "crates", "index"),
        ("/index/config.json", {"accept": "application/json"}, "other", "other"),
    ],
)
def test_how_npm_and_cargo_ask_tells_their_index_pages(
    path: str, hints: dict[str, str], ecosystem: str, kind: str
) -> None:
    shape = shape_of(path, hints)
    assert (shape.ecosystem, shape.kind) == (Ecosystem(ecosystem), Kind(kind))
