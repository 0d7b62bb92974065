"""The distributions, built offline from a copy of this checkout as `python -m build` does
(an sdist, then the wheel from it): the wheel holds every module of src/ and the service
templates of the top-level service/ directory, code imported from the installed wheel (its
files unpacked on sys.path, as an installer lays them out) reads the templates through
importlib.resources, `twine check` passes both, and the wheel installs into a clean venv
and runs there (what docs/install.md tells users to do)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the build reads: pyproject.toml and what it names.
BUILD_INPUTS = ("pyproject.toml", "README.md", "src", "service")
TEMPLATES = ("transcache.service", "transcache.socket", "launchd.plist")
BUILD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the sdist and the wheel."""
    # A copy, so the build's own files (build/, *.egg-info) stay out of the checkout.
    tree = tmp_path_factory.mktemp("tree")
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy2(source, tree / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist)],
        cwd=tree,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
        check=True,
    )
    return dist


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (built,) = dist.glob("transcache-*.whl")
    return built


def test_twine_check_passes_the_sdist_and_the_wheel(dist: Path) -> None:
    built = sorted(dist.iterdir())
    assert sorted(p.suffix for p in built) == [".gz", ".whl"]  # the sdist (.tar.gz), the wheel
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, built)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_wheel_installs_into_a_clean_venv_and_runs(wheel: Path, tmp_path: Path) -> None:
    # The dependencies come from PyPI once (pip's own HTTP cache keeps them for later runs);
    # the install itself then reads nothing but the wheelhouse.
    wheelhouse = tmp_path / "wheelhouse"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "download", "--quiet", "--dest", str(wheelhouse), str(wheel)],
        capture_output=True,
        timeout=INSTALL_TIMEOUT,
        check=True,
    )
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    subprocess.run(
        [
            str(target / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "transcache",
        ],
        capture_output=True,
        timeout=INSTALL_TIMEOUT,
        check=True,
    )
    result = subprocess.run(
        [str(target / "bin" / "transcache"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == f"transcache {importlib.metadata.version('transcache')}\n"


def test_wheel_holds_every_module_and_the_service_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "src"
    modules = {str(p.relative_to(src)) for p in (src / "transcache").rglob("*.py")}
    assert modules - names == set()
    assert {f"transcache/service/{name}" for name in TEMPLATES} <= names
    assert "transcache/py.typed" in names


def test_installed_wheel_reads_the_templates_through_importlib_resources(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import importlib.resources, json, sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import transcache.install.templates as templates\n"
        "files = importlib.resources.files(templates.TEMPLATES_PACKAGE)\n"
        f"texts = {{name: files.joinpath(name).read_text() for name in {TEMPLATES!r}}}\n"
        "print(json.dumps({'files': str(files), 'texts': texts}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(result.stdout)
    # From the wheel's files, not from this checkout (which the editable install maps).
    assert Path(found["files"]) == site / "transcache" / "service"
    assert found["texts"] == {name: (ROOT / "service" / name).read_text() for name in TEMPLATES}
