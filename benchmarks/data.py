"""The upstream's content, built once into the benchmark cache directory (never the repo).

- `wheels/`: the W1 requirement set (requirements.txt), fetched once with `pip download`.
- `www-<variant>/`: the document root nginx serves: a PEP 503 index with PEP 658 `.metadata`
  files under `simple/` and `files/`, one large incompressible file under `big/`, small pages
  under `pages/`, and bare git repositories under `git/` built with `git fast-import`: a long
  history (`repo.git`) and one installable Python project (`pkg.git`, one commit with an
  in-tree build backend: uv and pip build it with nothing to download).

Every builder is idempotent: it writes into a temporary name and renames when complete, so an
interrupted build is redone on the next run rather than served half-made.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.packages import in_tree_build

BENCH_DIR = Path(__file__).resolve().parent
REQUIREMENTS = BENCH_DIR / "requirements.txt"
CACHE_ROOT = Path(
    os.environ.get("TRANSCACHE_BENCH_CACHE", Path.home() / ".cache" / "transcache-bench")
)
WRITE_BLOCK = 1024 * 1024
GIT_FILES = 200  # files the generated history keeps editing
GIT_BLOB_LINES = 48  # lines of 128 hex digits: ~6 KiB per commit, ~10 MB of pack for 3,000
GIT_VERSION = "2"  # bump when the generated history changes
GIT_PACKAGE = "benchpkg"  # the project in git/pkg.git (W7's git dependency)
GIT_PACKAGE_VERSION = "1"  # bump when pkg.git's content changes
GIT_DATE = 1_704_067_200  # 2024-01-01: fixed dates make the repository identical every time


@dataclass(frozen=True)
class Dataset:
    """Sizes of one build of the upstream's content."""

    variant: str
    big_bytes: int
    pages: int
    commits: int
    with_wheels: bool


FULL = Dataset("full", big_bytes=256 * 1024 * 1024, pages=2000, commits=3000, with_wheels=True)
SMOKE = Dataset("smoke", big_bytes=4 * 1024 * 1024, pages=50, commits=20, with_wheels=False)
SOAK = Dataset("soak", big_bytes=32 * 1024 * 1024, pages=500, commits=200, with_wheels=False)


@dataclass(frozen=True)
class Content:
    root: Path  # nginx document root
    git_root: Path  # GIT_PROJECT_ROOT for git http-backend
    dataset: Dataset
    requirements: Path | None  # what W1 installs; None when the dataset has no wheels

    @property
    def big_path(self) -> str:
        return "/big/file.bin"

    def page_path(self, number: int) -> str:
        return f"/pages/{number:05d}.html"

    @property
    def repo_path(self) -> str:
        return "/git/repo.git"

    @property
    def package_path(self) -> str:
        return "/git/pkg.git"

    def package_head(self) -> str:
        """The commit pkg.git's main branch points at (the git dependency pins it)."""
        result = subprocess.run(
            ["git", "rev-parse", "refs/heads/main"],
            cwd=self.git_root / "pkg.git",
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()


def build(dataset: Dataset) -> Content:
    root = CACHE_ROOT / f"www-{dataset.variant}"
    root.mkdir(parents=True, exist_ok=True)
    requirements = None
    if dataset.with_wheels:
        wheels = _fetch_wheels(CACHE_ROOT / "wheels")
        _build_index(root, wheels)
        requirements = REQUIREMENTS
    _build_big_file(root / "big", dataset.big_bytes)
    _build_pages(root / "pages", dataset.pages)
    _build_repo(root / "git", dataset.commits)
    _build_package_repo(root / "git" / "pkg.git")
    return Content(root, root / "git", dataset, requirements)


def _done(path: Path, version: str = "1") -> bool:
    marker = path / ".complete"
    return marker.exists() and marker.read_text().strip() == version


def _publish(tmp: Path, final: Path, version: str = "1") -> None:
    (tmp / ".complete").write_text(version + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


# --- wheels and the index ---------------------------------------------------------------------


def _fetch_wheels(dest: Path) -> list[Path]:
    stamp = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    marker = dest / f".complete-{stamp}"
    if not marker.exists():
        tmp = _fresh_tmp(dest)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--no-deps",
                "--dest",
                str(tmp),
                "-r",
                str(REQUIREMENTS),
            ],
            check=True,
        )
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        marker.write_text("ok\n")
    return sorted(dest.glob("*.whl"))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _core_metadata(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        (path,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return archive.read(path)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta name="pypi:repository-version" content="1.1">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}</body>\n</html>\n"
    )


def _build_index(root: Path, wheels: list[Path]) -> None:
    """PEP 503 pages at simple/<project>/index.html, wheels and PEP 658 metadata in files/."""
    final = root / "index"
    stamp = hashlib.sha256("\n".join(w.name for w in wheels).encode()).hexdigest()[:16]
    if _done(final) and (final / f".wheels-{stamp}").exists():
        return
    tmp = _fresh_tmp(final)
    (tmp / "files").mkdir()
    projects: dict[str, list[str]] = {}
    for wheel in wheels:
        data = wheel.read_bytes()
        metadata = _core_metadata(wheel)
        shutil.copyfile(wheel, tmp / "files" / wheel.name)
        (tmp / "files" / f"{wheel.name}.metadata").write_bytes(metadata)
        digest = hashlib.sha256(data).hexdigest()
        meta_digest = hashlib.sha256(metadata).hexdigest()
        href = html.escape(f"../../files/{wheel.name}#sha256={digest}")
        meta = f"sha256={meta_digest}"
        link = (
            f'<a href="{href}" data-dist-info-metadata="{meta}" data-core-metadata="{meta}">'
            f"{html.escape(wheel.name)}</a><br>\n"
        )
        projects.setdefault(_normalize(wheel.name.split("-")[0]), []).append(link)
    for project, links in projects.items():
        page_dir = tmp / "simple" / project
        page_dir.mkdir(parents=True)
        (page_dir / "index.html").write_text(_page(f"Links for {project}", "".join(links)))
    listing = "".join(f'<a href="{p}/">{p}</a><br>\n' for p in sorted(projects))
    (tmp / "simple" / "index.html").write_text(_page("Simple index", listing))
    (tmp / f".wheels-{stamp}").write_text("ok\n")
    _publish(tmp, final)
    for name in ("simple", "files"):
        alias = root / name
        if not alias.is_symlink():
            alias.symlink_to(Path("index") / name)


# --- the big file and the small pages ---------------------------------------------------------


def _build_big_file(directory: Path, size: int) -> None:
    if _done(directory) and (directory / "file.bin").stat().st_size == size:
        return
    tmp = _fresh_tmp(directory)
    with (tmp / "file.bin").open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(WRITE_BLOCK, left))  # incompressible, as wheels and packs
            out.write(block)
            left -= len(block)
    _publish(tmp, directory)


def _build_pages(directory: Path, count: int) -> None:
    if _done(directory) and len(list(directory.glob("*.html"))) == count:
        return
    tmp = _fresh_tmp(directory)
    for number in range(count):
        size = 1024 + (number * 7919) % 7168  # 1 to 8 KiB, like index pages and API answers
        filler = hashlib.sha256(str(number).encode()).hexdigest() * (size // 64 + 1)
        (tmp / f"{number:05d}.html").write_text(_page(f"page {number}", filler[:size] + "\n"))
    _publish(tmp, directory)


# --- the git repository -----------------------------------------------------------------------


def _fast_import_stream(commits: int) -> bytes:
    lines: list[bytes] = []
    for number in range(1, commits + 1):
        path = f"src/module{number % GIT_FILES:03d}.py"
        seed = hashlib.sha256(b"%d" % number).hexdigest()
        body = "".join(
            f"DATA_{k} = '{hashlib.sha512(f'{seed}{k}'.encode()).hexdigest()}'\n"
            for k in range(GIT_BLOB_LINES)
        ).encode()
        message = f"Change {path} ({number})\n".encode()
        when = f"{GIT_DATE + number * 60} +0000".encode()
        lines += [
            b"commit refs/heads/main",
            b"committer Bench <bench@example.test> " + when,
            b"data %d" % len(message),
            message,
        ]
        lines += [b"M 644 inline " + path.encode(), b"data %d" % len(body), body]
    return b"\n".join(lines) + b"\n"


def _package_stream() -> bytes:
    message = b"An installable project\n"
    lines = [
        b"commit refs/heads/main",
        b"committer Bench <bench@example.test> %d +0000" % GIT_DATE,
        b"data %d" % len(message),
        message,
    ]
    for path, body in in_tree_build(GIT_PACKAGE, "1.0").items():
        lines += [b"M 644 inline " + path.encode(), b"data %d" % len(body), body]
    return b"\n".join(lines) + b"\n"


def _import_bare(bare: Path, stream: bytes) -> None:
    """A bare repository at `bare` with `stream` (git fast-import) as its history."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(bare.parent)}
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    subprocess.run(
        ["git", "init", "--quiet", "--bare", "-b", "main", str(bare)], check=True, env=env
    )
    subprocess.run(["git", "fast-import", "--quiet"], input=stream, cwd=bare, check=True, env=env)
    subprocess.run(["git", "gc", "--quiet"], cwd=bare, check=True, env=env)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True, env=env)


def _build_repo(directory: Path, commits: int) -> None:
    if _done(directory, GIT_VERSION):
        return
    tmp = _fresh_tmp(directory)
    _import_bare(tmp / "repo.git", _fast_import_stream(commits))
    _publish(tmp, directory, GIT_VERSION)


def _build_package_repo(bare: Path) -> None:
    """pkg.git inside the published git/ directory (rebuilt with it: `_build_repo` first)."""
    if _done(bare, GIT_PACKAGE_VERSION):
        return
    tmp = _fresh_tmp(bare)
    _import_bare(tmp, _package_stream())
    _publish(tmp, bare, GIT_PACKAGE_VERSION)
