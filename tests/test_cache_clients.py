"""pip and uv, with their own caches off, install the same set twice through the proxy: the
second run takes every body from the proxy's cache (the origin sees at most conditional
revalidations of index pages), and installs byte-identical files."""

from __future__ import annotations

from pathlib import Path

import pytest

from .clients import PIP, run, uv_pip_install
from .origin import Origin, RecordedRequest
from .packages import build_wheel, write_simple_index
from .proxyproc import ProxyProcess

PROJECTS = [f"pkg{i:02d}" for i in range(10)]


def make_ten_package_index(origin: Origin, dist_dir: Path, *, metadata: bool = True) -> None:
    wheels = [
        # a chain of dependencies, so resolution needs every index page
        build_wheel(dist_dir, name, "1.0", deps=[PROJECTS[i + 1]] if i + 1 < 10 else [])
        for i, name in enumerate(PROJECTS)
    ]
    write_simple_index(origin, wheels, metadata=metadata)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def is_conditional_index_request(request: RecordedRequest) -> bool:
    return request.path.startswith("/simple/") and (
        "if-none-match" in request.headers or "if-modified-since" in request.headers
    )


def pip_install(env: dict[str, str], index: str, target: Path) -> None:
    run(
        [
            *PIP,
            "install",
            "--no-compile",
            "--index-url",
            index,
            "--target",
            str(target),
            PROJECTS[0],
        ],
        env,
    )


def uv_install(env: dict[str, str], index: str, target: Path) -> None:
    uv_pip_install(env, index, target, PROJECTS[0])


@pytest.mark.parametrize("installer", [pip_install, uv_install], ids=["pip", "uv"])
@pytest.mark.parametrize("metadata", [True, False], ids=["pep658", "no-metadata"])
def test_second_install_takes_every_body_from_the_cache(
    origin: Origin,
    proxy: ProxyProcess,
    proxied_env: dict[str, str],
    tmp_path: Path,
    installer: object,
    metadata: bool,
) -> None:
    assert callable(installer)
    make_ten_package_index(origin, tmp_path / "dists", metadata=metadata)
    index = origin.url("index.test", "/simple/")
    installer(proxied_env, index, tmp_path / "cold")
    cold_requests = len(origin.requests)
    assert cold_requests >= 10
    installer(proxied_env, index, tmp_path / "warm")
    warm = origin.requests[cold_requests:]
    assert all(is_conditional_index_request(r) for r in warm), [
        (r.method, r.path, sorted(r.headers)) for r in warm
    ]
    assert tree(tmp_path / "cold") == tree(tmp_path / "warm")
    assert len(tree(tmp_path / "warm")) >= 10
