"""Loading transcache costs little until a proxy runs: the command line (its --help included)
and the pytest plugin, which pytest loads on every machine that has transcache installed, load
none of trio, h11 and cryptography. `from transcache import Proxy` still works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import transcache

HEAVY = ("trio", "h11", "cryptography")
# Prints which of HEAVY are loaded after the code before it ran.
REPORT = f"import sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
HELP = "from transcache.cli import main\ntry:\n    main(ARGV)\nexcept SystemExit:\n    pass\n"


def heavy_modules_after(code: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{REPORT}"],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "code",
    [
        "import transcache",
        "import transcache.cli",
        "import transcache.pytest_plugin",
        HELP.replace("ARGV", "['--help']"),
        HELP.replace("ARGV", "['exec', '--help']"),
        HELP.replace("ARGV", "['cache', 'stats', '--help']"),
        HELP.replace("ARGV", "['selftest', '--help']"),
    ],
)
def test_loads_none_of_trio_h11_and_cryptography(code: str) -> None:
    assert heavy_modules_after(code) == []


def test_the_public_names_load_on_first_use() -> None:
    from transcache import Config, Proxy, ProxyError, RunningProxy, open_proxy
    from transcache.api import Proxy as ApiProxy

    assert Proxy is ApiProxy
    assert {Config, ProxyError, RunningProxy, open_proxy}
    assert set(transcache.__all__) <= set(dir(transcache))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = transcache.Nope
