"""Origins that behave like the package registries, for the real-client tests and selftest's.

Registries as reached from many networks (and most mirrors) send no `Cache-Control`, `ETag`
or `Last-Modified`: every route here answers with `Content-Type` and `Content-Length` only
(`serve_bare`). Each builder registers one registry's routes on an `Origin` and returns what
a client needs to use it:

- `add_pypi`: a PEP 503 index at /simple/ whose files live at
  /packages/<2 hex>/<2 hex>/<hash>/<file>, as PyPI lays them out: wheels (with PEP 658
  metadata) and one sdist with an in-tree build backend (so building it downloads nothing);
- `add_npm`: packuments at /<name> and tarballs at /<name>/-/<name>-<version>.tgz;
- `add_debian`: a signed Debian repository (dists/<suite>/InRelease and Release, Packages
  through by-hash, a pool/ .deb built with dpkg-deb) and the key that signs it;
- `add_goproxy`: a Go module proxy (/<module>/@v/list, <v>.info, <v>.mod, <v>.zip in the
  module zip layout);
- `add_crates`: a cargo registry in the form the cargo on PATH reads (a sparse index from
  1.68 on, a git index before), and .crate downloads under /api/v1/crates/.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .gitrepo import commit_file, git_env, make_repo, run_git
from .origin import Exchange, Origin
from .packages import ZIP_TIMESTAMP, build_wheel, in_tree_build

# One time for everything built here: archives are the same bytes on every run.
EPOCH = 1704067200  # 2024-01-01T00:00:00Z


def serve_bare(origin: Origin, path: str, data: bytes, content_type: str) -> None:
    """Serve `data` at `path` with no cache headers and no validators at all."""

    def route(exchange: Exchange) -> None:
        exchange.respond(200, {"Content-Type": content_type}, data)

    origin.add_route(path, route)


def _tar_gz(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=EPOCH) as compressed:
        with tarfile.open(fileobj=compressed, mode="w") as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- Python --------------------------------------------------------------------------------

SDIST_NAME, SDIST_VERSION = "tcsdist", "1.0"


def _sdist() -> tuple[str, bytes]:
    stem = f"{SDIST_NAME}-{SDIST_VERSION}"
    pkg_info = f"Metadata-Version: 2.1\nName: {SDIST_NAME}\nVersion: {SDIST_VERSION}\n"
    files = {f"{stem}/PKG-INFO": pkg_info.encode()}
    for name, data in in_tree_build(SDIST_NAME, SDIST_VERSION).items():
        files[f"{stem}/{name}"] = data
    return f"{stem}.tar.gz", _tar_gz(files)


def _host(origin: Origin, filename: str, data: bytes, metadata: bytes | None = None) -> str:
    """Serve a distribution file (and its PEP 658 metadata) where PyPI would: under its
    hash. Returns the project page's link to it."""
    digest = hashlib.sha256(data).hexdigest()
    path = f"/packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}"
    serve_bare(origin, path, data, "application/octet-stream")
    attributes = f'href="{path}#sha256={digest}"'
    if metadata is not None:
        serve_bare(origin, path + ".metadata", metadata, "application/octet-stream")
        value = f"sha256={hashlib.sha256(metadata).hexdigest()}"
        attributes += f' data-dist-info-metadata="{value}" data-core-metadata="{value}"'
    return f"<a {attributes}>{filename}</a>"


def add_pypi(origin: Origin, dist_dir: Path) -> list[str]:
    """A PyPI-like index: tcalpha (a wheel) needs tcbeta (a wheel) and tcsdist (an sdist).
    Returns the requirements to install."""
    wheels = [
        build_wheel(dist_dir, "tcalpha", "1.0", deps=["tcbeta", SDIST_NAME]),
        build_wheel(dist_dir, "tcbeta", "1.0"),
    ]
    links: dict[str, str] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            metadata = archive.read(name)
        links[wheel.name.split("-")[0]] = _host(origin, wheel.name, wheel.read_bytes(), metadata)
    links[SDIST_NAME] = _host(origin, *_sdist())
    for project, link in links.items():
        page = f"<!DOCTYPE html><html><body>{link}</body></html>\n"
        serve_bare(origin, f"/simple/{project}/", page.encode(), "text/html")
    return ["tcalpha"]


# --- npm -----------------------------------------------------------------------------------


def _npm_tarball(name: str, version: str, dependencies: Mapping[str, str]) -> bytes:
    manifest = {"name": name, "version": version, "dependencies": dict(dependencies)}
    return _tar_gz(
        {
            "package/package.json": json.dumps(manifest).encode(),
            "package/index.js": f"module.exports = {json.dumps(name)};\n".encode(),
        }
    )


def add_npm(origin: Origin, registry: str) -> list[str]:
    """An npm registry at `registry` (its URL, with a trailing slash): tc-alpha depends on
    tc-beta. Returns the packages to install."""
    packages = {"tc-alpha": {"tc-beta": "^1.0.0"}, "tc-beta": {}}
    for name, dependencies in packages.items():
        version = "1.0.0"
        tarball = _npm_tarball(name, version, dependencies)
        tarball_path = f"/{name}/-/{name}-{version}.tgz"
        serve_bare(origin, tarball_path, tarball, "application/octet-stream")
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
        packument = {
            "name": name,
            "dist-tags": {"latest": version},
            "versions": {
                version: {
                    "name": name,
                    "version": version,
                    "dependencies": dependencies,
                    "dist": {
                        "tarball": registry.rstrip("/") + tarball_path,
                        "shasum": hashlib.sha1(tarball).hexdigest(),
                        "integrity": integrity,
                    },
                }
            },
        }
        serve_bare(origin, f"/{name}", json.dumps(packument).encode(), "application/json")
    return ["tc-alpha"]


# --- Debian --------------------------------------------------------------------------------

DEB_SUITE = "stable"
DEB_PACKAGE = "tc-hello"


@dataclass(frozen=True)
class DebianRepository:
    keyring: Path  # the public key that signs InRelease (for signed-by=)
    architecture: str


def _build_deb(workdir: Path, architecture: str) -> bytes:
    root = workdir / "deb-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/doc" / DEB_PACKAGE).mkdir(parents=True)
    (root / "usr/share/doc" / DEB_PACKAGE / "README").write_text("hello\n")
    (root / "DEBIAN/control").write_text(
        f"Package: {DEB_PACKAGE}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Test <test@example.test>\nDescription: a test package\n"
    )
    output = workdir / f"{DEB_PACKAGE}_1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(output)],
        check=True,
        capture_output=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)},
    )
    return output.read_bytes()


def _signing_key(workdir: Path) -> tuple[dict[str, str], Path]:
    """A throwaway gpg home with one signing key; returns gpg's env and the exported key."""
    home = workdir / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", "Test Repo <repo@example.test>", "ed25519", "sign", "never"],
        check=True,
        capture_output=True,
        env=env,
    )
    keyring = workdir / "repo-key.gpg"
    subprocess.run([*gpg, "--output", str(keyring), "--export"], check=True, env=env)
    return env, keyring


def add_debian(origin: Origin, workdir: Path, prefix: str = "/debian") -> DebianRepository:
    """A signed repository at `prefix` with one suite, one component and one package."""
    architecture = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    workdir.mkdir(parents=True, exist_ok=True)
    deb = _build_deb(workdir, architecture)
    pool_path = f"pool/main/t/{DEB_PACKAGE}/{DEB_PACKAGE}_1.0_all.deb"
    serve_bare(origin, f"{prefix}/{pool_path}", deb, "application/vnd.debian.binary-package")
    packages = (
        f"Package: {DEB_PACKAGE}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Test <test@example.test>\n"
        f"Filename: {pool_path}\nSize: {len(deb)}\n"
        f"SHA256: {hashlib.sha256(deb).hexdigest()}\nDescription: a test package\n\n"
    ).encode()
    listing = f"main/binary-{architecture}"
    dists = f"{prefix}/dists/{DEB_SUITE}"
    digest = hashlib.sha256(packages).hexdigest()
    serve_bare(origin, f"{dists}/{listing}/by-hash/SHA256/{digest}", packages, "text/plain")
    release = (
        f"Origin: transcache tests\nSuite: {DEB_SUITE}\nCodename: {DEB_SUITE}\n"
        f"Date: {email.utils.formatdate(EPOCH, usegmt=True)}\n"
        f"Architectures: {architecture}\nComponents: main\nAcquire-By-Hash: yes\n"
        f"SHA256:\n {digest} {len(packages)} {listing}/Packages\n"
    )
    env, keyring = _signing_key(workdir)
    signed = subprocess.run(
        ["gpg", "--batch", "--quiet", "--clearsign", "--output", "-"],
        input=release.encode(),
        check=True,
        capture_output=True,
        env=env,
    ).stdout
    serve_bare(origin, f"{dists}/Release", release.encode(), "text/plain")
    serve_bare(origin, f"{dists}/InRelease", signed, "text/plain")
    return DebianRepository(keyring, architecture)


# --- Go ------------------------------------------------------------------------------------

GO_MODULE, GO_VERSION = "example.test/tchello", "v1.0.0"


def add_goproxy(origin: Origin) -> str:
    """A module proxy serving one module at one version; returns `module@version`."""
    base = f"/{GO_MODULE}/@v"
    go_mod = f"module {GO_MODULE}\n\ngo 1.19\n".encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        prefix = f"{GO_MODULE}@{GO_VERSION}/"
        for name, data in {
            "go.mod": go_mod,
            "hello.go": b'package tchello\n\nconst Hello = "hello"\n',
        }.items():
            archive.writestr(zipfile.ZipInfo(prefix + name, date_time=ZIP_TIMESTAMP), data)
    info = json.dumps({"Version": GO_VERSION, "Time": "2024-01-01T00:00:00Z"}).encode()
    serve_bare(origin, f"{base}/list", f"{GO_VERSION}\n".encode(), "text/plain")
    serve_bare(origin, f"{base}/{GO_VERSION}.info", info, "application/json")
    serve_bare(origin, f"{base}/{GO_VERSION}.mod", go_mod, "text/plain")
    serve_bare(origin, f"{base}/{GO_VERSION}.zip", buffer.getvalue(), "application/zip")
    return f"{GO_MODULE}@{GO_VERSION}"


# --- cargo ---------------------------------------------------------------------------------

CRATE, CRATE_VERSION = "tcfoo", "1.0.0"
CARGO_SPARSE_SINCE = (1, 68)


def _crate() -> bytes:
    stem = f"{CRATE}-{CRATE_VERSION}"
    manifest = f'[package]\nname = "{CRATE}"\nversion = "{CRATE_VERSION}"\nedition = "2021"\n'
    return _tar_gz(
        {f"{stem}/Cargo.toml": manifest.encode(), f"{stem}/src/lib.rs": b"pub fn foo() {}\n"}
    )


def _crate_index_entry(crate: bytes) -> bytes:
    entry = {
        "name": CRATE,
        "vers": CRATE_VERSION,
        "deps": [],
        "cksum": hashlib.sha256(crate).hexdigest(),
        "features": {},
        "yanked": False,
    }
    return json.dumps(entry).encode() + b"\n"


def _crate_index_path() -> str:
    return f"{CRATE[:2]}/{CRATE[2:4]}/{CRATE}"


def _add_crate_download(origin: Origin) -> bytes:
    crate = _crate()
    path = f"/api/v1/crates/{CRATE}/{CRATE_VERSION}/download"
    serve_bare(origin, path, crate, "application/gzip")
    return crate


def add_crates_sparse(origin: Origin, base_url: str) -> str:
    """A sparse registry (cargo 1.68+); returns its `sparse+` index URL."""
    crate = _add_crate_download(origin)
    config = json.dumps({"dl": f"{base_url}/api/v1/crates"}).encode()
    serve_bare(origin, "/index/config.json", config, "application/json")
    serve_bare(origin, f"/index/{_crate_index_path()}", _crate_index_entry(crate), "text/plain")
    return f"sparse+{base_url}/index/"


def add_crates_git(origin: Origin, base_url: str, workdir: Path) -> str:
    """A registry with a git index (every cargo); returns the index's URL."""
    crate = _add_crate_download(origin)
    bare, _ = make_repo(workdir / "repos", "index.git", commits=1)
    work = workdir / "index-work"
    env = git_env(workdir)
    run_git("clone", "--quiet", str(bare), str(work), cwd=workdir, env=env)
    config = json.dumps({"dl": f"{base_url}/api/v1/crates"}).encode()
    commit_file(work, "config.json", config, "config", env)
    commit_file(work, _crate_index_path(), _crate_index_entry(crate), CRATE, env)
    run_git("push", "--quiet", "origin", "HEAD:main", cwd=work, env=env)
    origin.add_git("git", bare.parent)
    return f"{base_url}/git/index.git"


def cargo_reads_sparse() -> bool:
    """Whether the cargo on PATH reads sparse registries (1.68 and later); before, only git
    indexes (Debian 12's cargo is 1.65)."""
    output = subprocess.run(
        ["cargo", "--version"], check=True, capture_output=True, text=True
    ).stdout
    match = re.match(r"cargo (\d+)\.(\d+)", output)
    assert match is not None, output
    return (int(match.group(1)), int(match.group(2))) >= CARGO_SPARSE_SINCE


def add_crates(origin: Origin, crates_url: str, git_url: str, workdir: Path) -> str:
    """The registry form the cargo on PATH reads: sparse at `crates_url`, else a git index
    at `git_url`. Returns the index URL for cargo's configuration."""
    if cargo_reads_sparse():
        return add_crates_sparse(origin, crates_url)
    return add_crates_git(origin, git_url, workdir)
