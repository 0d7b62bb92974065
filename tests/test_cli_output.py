"""What the command line prints for people: sizes in binary units and counts with the right
plural, a progress bar on a terminal and plain lines in a log or a pipe, a quiet end when the
reader of its output goes away (`transcache cache ls | head`), and `--version`."""

from __future__ import annotations

import errno
import importlib.metadata
import io
import os
import pty
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from transcache.cli import EXIT_CLOSED_PIPE, main
from transcache.cli._human import age, plural, size
from transcache.cli._progress import ERASE_LINE, Progress, bar_line, of_entries, plain_line
from transcache.store import Store
from transcache.store.archive import export_archive

from .installhome import TRANSCACHE, make_home
from .test_archive import MAX_SIZE, publish

BODIES = 12


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1023 bytes"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (int(1.2 * 1024**2), "1.2 MiB"),
        (10 * 1024**3, "10 GiB"),
        (1234 * 1024**3, "1.2 TiB"),
        (2048 * 1024**5, "2048 PiB"),
    ],
)
def test_sizes_are_in_binary_units(count: int, text: str) -> None:
    assert size(count) == text


def test_counts_take_the_right_plural() -> None:
    assert plural(1, "request") == "1 request"
    assert plural(0, "request") == "0 requests"
    assert plural(2, "entry", "entries") == "2 entries"
    assert plural(1, "body", "bodies") == "1 body"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "just now"),
        (1, "1 second ago"),
        (59, "59 seconds ago"),
        (60, "1 minute ago"),
        (119, "1 minute ago"),
        (2 * 3600 + 59 * 60, "2 hours ago"),
        (86400, "1 day ago"),
    ],
)
def test_ages_are_whole_units_with_the_right_plural(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_progress_lines_show_the_share_done_and_the_amount() -> None:
    assert bar_line("verify", 512, 2048) == (
        "verify [#######.......................]  25% 512 bytes of 2 KiB"
    )
    assert plain_line("prune", 1, 4, of_entries) == "prune: 25% (1 of 4 entries)"


def test_progress_in_a_log_is_a_line_per_tenth() -> None:
    stream = io.StringIO()
    shown = Progress("verify", stream)
    for done in range(101):
        shown(done, 100)
    shown.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "verify: 0% (0 bytes of 100 bytes)"
    assert lines[-1] == "verify: 100% (100 bytes of 100 bytes)"
    assert len(lines) == 11


# -- the cache commands, on a terminal and on a pipe -------------------------------------------


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    store = Store(tmp_path / "cache", MAX_SIZE)
    for n in range(BODIES):
        publish(store, f"https://files.test/{n}.whl", os.urandom(1000 + n))
    yield tmp_path / "cache"
    store.close()


def cache_command(name: str, cache_dir: Path, tmp_path: Path) -> list[str]:
    """`transcache cache NAME` with what it needs: import reads an archive of `cache_dir`."""
    if name == "import":
        archive = tmp_path / "cache.tar.gz"
        store = Store(cache_dir, MAX_SIZE)
        try:
            export_archive(store, archive)
        finally:
            store.close()
        return ["cache", "import", "--cache-dir", str(tmp_path / "restored"), str(archive)]
    if name == "export":
        return ["cache", "export", "--cache-dir", str(cache_dir), str(tmp_path / "out.tar.gz")]
    return ["cache", name, "--cache-dir", str(cache_dir)]


def read_terminal(master: int) -> str:
    """Everything written to the pty until its other end closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError as exc:  # Linux: EIO once the other end is closed
            assert exc.errno == errno.EIO
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


COMMANDS = ("export", "import", "prune", "verify")
SUMMARY = {
    "export": "exported 12 entries",
    "import": "imported 12 entries",
    "prune": "removed 0 entries",
    "verify": f"verified {BODIES} bodies, 0 corrupt",
}


@pytest.mark.parametrize("name", COMMANDS)
def test_cache_commands_draw_a_progress_bar_on_a_terminal(
    name: str,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    command = cache_command(name, cache_dir, tmp_path)
    master, slave = pty.openpty()
    with open(slave, "w", encoding="utf-8") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(command) == 0
    shown = read_terminal(master)
    os.close(master)
    assert f"\r{name} [" in shown
    assert f"{name} [{'#' * 30}] 100%" in shown
    assert shown.endswith(ERASE_LINE)
    assert SUMMARY[name] in capsys.readouterr().out


@pytest.mark.parametrize("name", COMMANDS)
def test_cache_commands_print_plain_progress_lines_on_a_pipe(
    name: str, cache_dir: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [*TRANSCACHE, *cache_command(name, cache_dir, tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith(f"{name}: ") for line in lines), result.stderr
    assert lines[-1].startswith(f"{name}: 100% (")
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert SUMMARY[name] in result.stdout


# -- a reader that goes away ----------------------------------------------------------------


def run_into_a_closed_pipe(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run transcache with stdout a pipe whose reader has gone (as `| head` does once it has
    its lines): (exit status, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*TRANSCACHE, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    return result.returncode, result.stderr


ClosedPipeCase = Callable[[Path, Path], tuple[list[str], dict[str, str] | None]]


def _cache_ls(cache_dir: Path, tmp_path: Path) -> tuple[list[str], dict[str, str] | None]:
    return ["cache", "ls", "--cache-dir", str(cache_dir)], None


def _status_json(cache_dir: Path, tmp_path: Path) -> tuple[list[str], dict[str, str] | None]:
    return ["status", "--json"], make_home(tmp_path / "home").env()


@pytest.mark.parametrize("case", [_cache_ls, _status_json], ids=["cache ls", "status --json"])
def test_a_closed_pipe_ends_the_command_quietly(
    case: ClosedPipeCase, cache_dir: Path, tmp_path: Path
) -> None:
    args, env = case(cache_dir, tmp_path)
    status, stderr = run_into_a_closed_pipe(args, env)
    assert stderr == ""
    assert status == EXIT_CLOSED_PIPE == 141  # what a shell reports for `ls | head`'s ls


def test_version_names_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"transcache {importlib.metadata.version('transcache')}\n"
