"""Installable wheels and a package index, built offline, for the pip and uv tests.

Provides:

- `build_wheel(dist_dir, name, version, deps, files)`: a real pure-Python wheel
  (py3-none-any) with METADATA, WHEEL and a hashed RECORD, and a module `<name>_pkg` whose
  `__init__.py` sets `__version__`. Wheels are byte-for-byte reproducible (fixed timestamps,
  sorted entries), so their hashes are stable across runs.
- `write_simple_index(origin, wheels, metadata=True)`: registers on an `Origin` a simple
  repository at /simple/ (PEP 503 HTML and PEP 691 JSON, chosen by the Accept header, with
  `Vary: Accept` on both), the wheels under /files/ and, with `metadata=True`, their core
  metadata at /files/<wheel>.metadata announced as PEP 658/714 attributes.
- `make_index(origin, dist_dir, metadata=True)`: a ready index of four projects in which alpha
  depends on beta and delta depends on gamma.
- `in_tree_build(name, version)`: the pyproject.toml and backend.py of a project that builds
  with an in-tree backend (for git dependencies and sdists: no build tools to download).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .origin import Exchange, Origin, StaticFile, serve_file

ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest zip date: reproducible wheels

HTML_TYPE = "text/html"
HTML_V1_TYPE = "application/vnd.pypi.simple.v1+html"
JSON_V1_TYPE = "application/vnd.pypi.simple.v1+json"
API_VERSION = "1.1"


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name (the /simple/<name>/ path component)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name_part(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel(
    dist_dir: Path,
    name: str,
    version: str,
    deps: Sequence[str] = (),
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write `<name>-<version>-py3-none-any.whl` into `dist_dir` and return its path.

    `deps` become Requires-Dist lines; `files` maps extra paths inside the wheel to contents.
    """
    stem = f"{_wheel_name_part(name)}-{version}"
    dist_info = f"{stem}.dist-info"
    module = f"{_wheel_name_part(name)}_pkg"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name}\n",
            f"Version: {version}\n",
            f"Summary: {name}, a test package\n",
            *(f"Requires-Dist: {dep}\n" for dep in deps),
        ]
    )
    wheel = (
        "Wheel-Version: 1.0\n"
        "Generator: transcache-tests\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    entries = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n'.encode(),
        **(files or {}),
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": wheel.encode(),
    }
    record_path = f"{dist_info}/RECORD"
    record = (
        "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in entries.items())
        + f"{record_path},,\n"
    )
    entries[record_path] = record.encode()

    dist_dir.mkdir(parents=True, exist_ok=True)
    wheel_path = dist_dir / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as archive:
        for path, data in entries.items():  # RECORD last, as the spec recommends
            info = zipfile.ZipInfo(path, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return wheel_path


# An in-tree PEP 517 backend (see in_tree_build).
_BACKEND = """
import base64, hashlib, zipfile

NAME, VERSION = @NAME@, @VERSION@
DIST = f"{NAME}-{VERSION}.dist-info"
FILES = {
    f"{NAME}/__init__.py": b"VALUE = 42\\n",
    f"{DIST}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n".encode(),
    f"{DIST}/WHEEL": (
        b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    ),
}


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(f"{wheel_directory}/{name}", "w") as wheel:
        for path, data in FILES.items():
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{DIST}/RECORD,,")
        wheel.writestr(f"{DIST}/RECORD", "\\n".join(record) + "\\n")
    return name
"""
_PYPROJECT = """[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "@NAME@"
version = "@VERSION@"
"""


def in_tree_build(name: str, version: str) -> dict[str, bytes]:
    """pyproject.toml and backend.py of a project `name` that builds into a wheel with an
    in-tree PEP 517 backend: nothing to download, so pip and uv build it through the proxy
    with no index of build tools."""
    backend = _BACKEND.replace("@NAME@", repr(name)).replace("@VERSION@", repr(version))
    pyproject = _PYPROJECT.replace("@NAME@", name).replace("@VERSION@", version)
    return {"pyproject.toml": pyproject.encode(), "backend.py": backend.encode()}


@dataclass(frozen=True)
class _Distribution:
    project: str  # normalized
    filename: str
    data: bytes
    metadata: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def metadata_sha256(self) -> str:
        return hashlib.sha256(self.metadata).hexdigest()


def _read_distribution(wheel: Path) -> _Distribution:
    data = wheel.read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        (metadata_path,) = [
            path for path in archive.namelist() if path.endswith(".dist-info/METADATA")
        ]
        metadata = archive.read(metadata_path)
    return _Distribution(
        project=normalize_name(wheel.name.split("-")[0]),
        filename=wheel.name,
        data=data,
        metadata=metadata,
    )


def _file_url(dist: _Distribution) -> str:
    return f"../../files/{dist.filename}"


def _project_list_html(projects: Iterable[str]) -> str:
    links = "".join(f'<a href="{name}/">{name}</a><br>\n' for name in projects)
    return _html_page("Simple index", links)


def _project_page_html(project: str, dists: Sequence[_Distribution], metadata: bool) -> str:
    links = []
    for dist in dists:
        href = html.escape(f"{_file_url(dist)}#sha256={dist.sha256}")
        attributes = f'href="{href}"'
        if metadata:
            value = f"sha256={dist.metadata_sha256}"
            attributes += f' data-dist-info-metadata="{value}" data-core-metadata="{value}"'
        links.append(f"<a {attributes}>{html.escape(dist.filename)}</a><br>\n")
    return _html_page(f"Links for {project}", "".join(links))


def _html_page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}</body>\n</html>\n"
    )


def _project_list_json(projects: Iterable[str]) -> str:
    return json.dumps(
        {"meta": {"api-version": API_VERSION}, "projects": [{"name": name} for name in projects]}
    )


def _project_page_json(project: str, dists: Sequence[_Distribution], metadata: bool) -> str:
    files = []
    for dist in dists:
        entry: dict[str, object] = {
            "filename": dist.filename,
            "url": _file_url(dist),
            "hashes": {"sha256": dist.sha256},
            "size": len(dist.data),
            "yanked": False,
        }
        if metadata:
            entry["core-metadata"] = {"sha256": dist.metadata_sha256}
            entry["dist-info-metadata"] = {"sha256": dist.metadata_sha256}
        files.append(entry)
    versions = sorted({dist.filename.split("-")[1] for dist in dists})
    return json.dumps(
        {
            "meta": {"api-version": API_VERSION},
            "name": project,
            "versions": versions,
            "files": files,
        }
    )


def _accepted_quality(accept: str, media_type: str) -> float:
    """The q value `accept` gives `media_type` (exact type or */*); 0 when not accepted."""
    best = 0.0
    for item in accept.split(","):
        kind, *parameters = (part.strip() for part in item.split(";"))
        if kind not in (media_type, "*/*"):
            continue
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip() == "q":
                quality = float(value)
        best = max(best, quality)
    return best


def _serve_negotiated(exchange: Exchange, representations: Mapping[str, StaticFile]) -> None:
    """Serve the representation (keyed by media type) the Accept header rates highest; ties,
    `*/*` and a missing Accept header go to the first one (HTML)."""
    accept = exchange.headers.get("accept", "")
    best = max(representations, key=lambda media_type: _accepted_quality(accept, media_type))
    serve_file(exchange, representations[best])


def _add_negotiated_page(origin: Origin, path: str, html_text: str, json_text: str) -> None:
    vary = {"Vary": "Accept"}
    html_bytes = html_text.encode()
    representations = {  # in order of preference when the client does not say
        HTML_TYPE: StaticFile.of(html_bytes, f"{HTML_TYPE}; charset=utf-8", vary),
        HTML_V1_TYPE: StaticFile.of(html_bytes, HTML_V1_TYPE, vary),
        JSON_V1_TYPE: StaticFile.of(json_text.encode(), JSON_V1_TYPE, vary),
    }
    origin.add_route(path, lambda exchange: _serve_negotiated(exchange, representations))


def write_simple_index(origin: Origin, wheels: Sequence[Path], *, metadata: bool = True) -> None:
    """Serve `wheels` from `origin` as a simple repository at /simple/ with files at /files/."""
    projects: dict[str, list[_Distribution]] = {}
    for wheel in wheels:
        dist = _read_distribution(wheel)
        projects.setdefault(dist.project, []).append(dist)
        origin.add_file(f"/files/{dist.filename}", dist.data)
        if metadata:
            origin.add_file(f"/files/{dist.filename}.metadata", dist.metadata)
    names = sorted(projects)
    _add_negotiated_page(origin, "/simple/", _project_list_html(names), _project_list_json(names))
    for project in names:
        dists = sorted(projects[project], key=lambda dist: dist.filename)
        _add_negotiated_page(
            origin,
            f"/simple/{project}/",
            _project_page_html(project, dists, metadata),
            _project_page_json(project, dists, metadata),
        )


def make_index(origin: Origin, dist_dir: Path, *, metadata: bool = True) -> list[Path]:
    """Build four projects (alpha -> beta, delta -> gamma), serve them, return the wheels."""
    wheels = [
        build_wheel(dist_dir, "alpha", "1.0", deps=["beta>=1.0"]),
        build_wheel(dist_dir, "beta", "1.0"),
        build_wheel(dist_dir, "gamma", "1.0"),
        build_wheel(dist_dir, "delta", "1.0", deps=["gamma"]),
    ]
    write_simple_index(origin, wheels, metadata=metadata)
    return wheels
