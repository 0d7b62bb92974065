"""The install plan's one comparison, `diff()`, as a table: plan steps, the manifest of earlier
installs and what the disk holds (data, no file system) in; the changes, in order, out. Then
what `--dry-run` prints for them, that apply leaves nothing for a second diff, and that the
manifest is read back exactly and refused when damaged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from transcache.install.apply import apply
from transcache.install.blocks import render_block
from transcache.install.errors import InstallError
from transcache.install.files import sha256
from transcache.install.manifest import (
    BlockEntry,
    CommandsEntry,
    DirEntry,
    Entry,
    FileEntry,
    Manifest,
)
from transcache.install.plan import (
    Change,
    CreateDir,
    Disk,
    Edit,
    EditBlock,
    MakeDir,
    Record,
    Run,
    RunCommands,
    Step,
    Undo,
    Write,
    WriteFile,
    describe,
    diff,
    render,
)
from transcache.install.runner import RecordingRunner

HOME = Path("/h")
CONFIG = HOME / ".config"
UNIT_DIR = CONFIG / "systemd" / "user"
UNIT = UNIT_DIR / "transcache.service"
SOCKET = UNIT_DIR / "transcache.socket"
ENV_SH = HOME / "env.sh"
BASHRC = HOME / ".bashrc"
ZSHENV = HOME / ".zshenv"
LOGS = HOME / "Library" / "Logs" / "transcache"

BLOCK = render_block(". /h/env.sh")
OLD_BLOCK = render_block(". /old/env.sh")
ENABLE = RunCommands(
    "enable transcache.service",
    run=(("systemctl", "--user", "enable", "transcache.service"),),
    undo=(("systemctl", "--user", "disable", "transcache.service"),),
    depends_on=(UNIT,),
)
ENABLE_SOCKET = CommandsEntry(
    "enable transcache.socket",
    run=(("systemctl", "--user", "enable", "transcache.socket"),),
    undo=(("systemctl", "--user", "disable", "transcache.socket"),),
)
# A home with only the user's ~/.bashrc in it.
BARE = Disk({BASHRC: b"# mine\n"}, frozenset({HOME}))


def on_disk(files: dict[Path, bytes]) -> Disk:
    return Disk(files, frozenset({HOME, *(path.parent for path in files)}))


CASES: list[tuple[str, list[Step], list[Entry], Disk, list[Change]]] = [
    (
        "a new file is written after its missing directories, outermost first",
        [WriteFile(UNIT, b"unit")],
        [],
        BARE,
        [Write(UNIT, None, b"unit", 0o644, (CONFIG, CONFIG / "systemd", UNIT_DIR))],
    ),
    (
        "directories are created once for two files in them",
        [WriteFile(UNIT, b"unit"), WriteFile(SOCKET, b"socket")],
        [],
        BARE,
        [
            Write(UNIT, None, b"unit", 0o644, (CONFIG, CONFIG / "systemd", UNIT_DIR)),
            Write(SOCKET, None, b"socket", 0o644),
        ],
    ),
    (
        "a changed file is rewritten, keeping what it held for a rollback",
        [WriteFile(ENV_SH, b"new", 0o600)],
        [FileEntry(ENV_SH, sha256(b"old"))],
        on_disk({ENV_SH: b"old"}),
        [Write(ENV_SH, b"old", b"new", 0o600)],
    ),
    (
        "a file already right and recorded changes nothing",
        [WriteFile(ENV_SH, b"same")],
        [FileEntry(ENV_SH, sha256(b"same"))],
        on_disk({ENV_SH: b"same"}),
        [],
    ),
    (
        "a file already right but not recorded is only recorded",
        [WriteFile(ENV_SH, b"same")],
        [],
        on_disk({ENV_SH: b"same"}),
        [Record(FileEntry(ENV_SH, sha256(b"same")))],
    ),
    (
        "a file already right but recorded with another hash is recorded anew",
        [WriteFile(ENV_SH, b"same")],
        [FileEntry(ENV_SH, sha256(b"other"))],
        on_disk({ENV_SH: b"same"}),
        [Record(FileEntry(ENV_SH, sha256(b"same")))],
    ),
    (
        "a block goes into an existing file, recorded first",
        [EditBlock(BASHRC, BLOCK)],
        [],
        BARE,
        [
            Record(BlockEntry(BASHRC, False, "", None)),
            Edit(BASHRC, b"# mine\n", b"# mine\n" + BLOCK.encode()),
        ],
    ),
    (
        "a block after a last line without newline records the newline it adds",
        [EditBlock(BASHRC, BLOCK)],
        [],
        on_disk({BASHRC: b"# mine"}),
        [
            Record(BlockEntry(BASHRC, False, "\n", None)),
            Edit(BASHRC, b"# mine", b"# mine\n" + BLOCK.encode()),
        ],
    ),
    (
        "a block is not put into a missing file unless asked to create it",
        [EditBlock(ZSHENV, BLOCK)],
        [],
        BARE,
        [],
    ),
    (
        "a block in a file it creates records that it created it",
        [EditBlock(ZSHENV, BLOCK, create=True)],
        [],
        BARE,
        [Record(BlockEntry(ZSHENV, True, "", None)), Edit(ZSHENV, None, BLOCK.encode())],
    ),
    (
        "an older block is replaced, and the earlier install's record kept",
        [EditBlock(BASHRC, BLOCK)],
        [BlockEntry(BASHRC, False, "", "# user's own block\n")],
        on_disk({BASHRC: b"# mine\n" + OLD_BLOCK.encode()}),
        [Edit(BASHRC, b"# mine\n" + OLD_BLOCK.encode(), b"# mine\n" + BLOCK.encode())],
    ),
    (
        "a block already in place and recorded changes nothing",
        [EditBlock(BASHRC, BLOCK)],
        [BlockEntry(BASHRC, False, "", None)],
        on_disk({BASHRC: b"# mine\n" + BLOCK.encode()}),
        [],
    ),
    (
        "new commands are recorded as they run",
        [ENABLE],
        [],
        BARE,
        [Run(ENABLE, ENABLE.entry)],
    ),
    (
        "recorded commands do not run again while their files are unchanged",
        [WriteFile(UNIT, b"unit"), ENABLE],
        [FileEntry(UNIT, sha256(b"unit")), ENABLE.entry],
        on_disk({UNIT: b"unit"}),
        [],
    ),
    (
        "recorded commands run again after a file they depend on is written",
        [WriteFile(UNIT, b"new unit"), ENABLE],
        [FileEntry(UNIT, sha256(b"unit")), ENABLE.entry],
        on_disk({UNIT: b"unit"}),
        [Write(UNIT, b"unit", b"new unit", 0o644), Run(ENABLE, None)],
    ),
    (
        "what the plan no longer wants is undone first, newest first; directories stay",
        [WriteFile(UNIT, b"unit")],
        [
            DirEntry(UNIT_DIR),
            FileEntry(UNIT, sha256(b"unit")),
            FileEntry(SOCKET, sha256(b"socket")),
            ENABLE_SOCKET,
        ],
        on_disk({UNIT: b"unit", SOCKET: b"socket"}),
        [Undo(ENABLE_SOCKET), Undo(FileEntry(SOCKET, sha256(b"socket")))],
    ),
    (
        "a missing directory is created with its missing parents",
        [MakeDir(LOGS)],
        [],
        BARE,
        [CreateDir((HOME / "Library", HOME / "Library" / "Logs", LOGS))],
    ),
    (
        "an existing directory is left alone",
        [MakeDir(LOGS)],
        [],
        Disk({}, frozenset({LOGS})),
        [],
    ),
    (
        "a directory an earlier step creates is not created again",
        [WriteFile(LOGS / "x", b"x"), MakeDir(LOGS)],
        [],
        BARE,
        [Write(LOGS / "x", None, b"x", 0o644, (HOME / "Library", HOME / "Library" / "Logs", LOGS))],
    ),
]


@pytest.mark.parametrize(
    ("steps", "entries", "disk", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_diff(
    steps: list[Step],
    entries: list[Entry],
    disk: Disk,
    expected: list[Change],
) -> None:
    assert diff(steps, Manifest(list(entries)), disk) == expected


def test_dry_run_shows_diffs_commands_and_undos_but_not_records() -> None:
    lines = render(
        [
            Undo(ENABLE_SOCKET),
            Undo(FileEntry(SOCKET, "0" * 64)),
            Record(FileEntry(ENV_SH, "0" * 64)),
            Write(UNIT, None, b"[Unit]\n", 0o644, (UNIT_DIR,)),
            Edit(BASHRC, b"# mine\n", b"# mine\n# more\n"),
            CreateDir((HOME / "Library", LOGS)),
            Run(ENABLE, None),
        ]
    )
    assert lines == [
        "undo (enable transcache.socket):",
        "  $ systemctl --user disable transcache.socket",
        f"remove transcache's file from {SOCKET}",
        f"create {UNIT}",
        "--- /dev/null",
        f"+++ {UNIT}",
        "@@ -0,0 +1 @@",
        "+[Unit]",
        f"modify {BASHRC}",
        f"--- {BASHRC}",
        f"+++ {BASHRC}",
        "@@ -1 +1,2 @@",
        " # mine",
        "+# more",
        f"create directory {LOGS}",
        "run (enable transcache.service):",
        "  $ systemctl --user enable transcache.service",
    ]


def test_after_apply_the_dry_run_has_nothing_left_to_show(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_bytes(b"# mine")
    unit = home / ".config" / "systemd" / "user" / "transcache.service"
    steps: list[Step] = [
        WriteFile(unit, b"[Unit]\n"),
        EditBlock(home / ".bashrc", BLOCK),
        EditBlock(home / ".zshenv", BLOCK, create=True),
        MakeDir(home / "Library" / "Logs" / "transcache"),
        RunCommands("enable", run=(("systemctl", "enable", "x"),), undo=(), depends_on=(unit,)),
    ]
    manifest = Manifest()
    assert len(describe(steps, manifest)) > 5
    runner = RecordingRunner()
    outcome = apply(steps, manifest, runner, tmp_path / "install.json")
    assert runner.calls == [("systemctl", "enable", "x")]
    assert len(outcome.changed) == 5
    assert diff(steps, manifest, Disk.observe(steps)) == []
    assert describe(steps, Manifest.load(tmp_path / "install.json")) == []


# -- the manifest as it is stored ------------------------------------------------------------

# A manifest as the install of the previous release wrote it.
STORED: dict[str, Any] = {
    "version": 1,
    "settings": {"listen_port": 8797},
    "entries": [
        {"kind": "dir", "path": "/h/.config"},
        {"kind": "file", "path": "/h/env.sh", "sha256": "ab" * 32},
        {
            "kind": "block",
            "path": "/h/.bashrc",
            "created": False,
            "separator": "\n",
            "previous": None,
        },
        {
            "kind": "commands",
            "description": "trust",
            "run": [["sudo", "update-ca-certificates"]],
            "undo": [["sudo", "update-ca-certificates", "--fresh"]],
            "store": "system (Debian/Ubuntu)",
        },
    ],
}


def test_a_stored_manifest_reads_back_typed_and_writes_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "install.json"
    path.write_text(json.dumps(STORED))
    manifest = Manifest.load(path)
    assert manifest.entries == [
        DirEntry(HOME / ".config"),
        FileEntry(ENV_SH, "ab" * 32),
        BlockEntry(BASHRC, False, "\n", None),
        CommandsEntry(
            "trust",
            (("sudo", "update-ca-certificates"),),
            (("sudo", "update-ca-certificates", "--fresh"),),
            "system (Debian/Ubuntu)",
        ),
    ]
    assert manifest.stores == ["system (Debian/Ubuntu)"]
    manifest.save(path)
    assert json.loads(path.read_text()) == STORED


def test_a_missing_manifest_is_an_empty_one(tmp_path: Path) -> None:
    assert Manifest.load(tmp_path / "install.json") == Manifest()


def damaged(entry: object) -> dict[str, Any]:
    return {**STORED, "entries": [STORED["entries"][0], entry]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "cannot read the install manifest"),
        ([], "not a JSON object"),
        ({**STORED, "version": 2}, "unknown manifest version 2"),
        ({**STORED, "entries": {}}, "no list of entries"),
        (damaged({"kind": "socket", "path": "/x"}), "entry 2: unknown kind 'socket'"),
        (damaged({"kind": "file", "path": "/x"}), "entry 2: 'sha256' is not a string"),
        (damaged({"kind": "dir", "path": 7}), "entry 2: 'path' is not a string"),
        (
            damaged({"kind": "block", "path": "/x", "created": "no", "separator": ""}),
            "entry 2: 'created' is not true or false",
        ),
        (
            damaged({"kind": "commands", "description": "x", "run": "rm -rf /", "undo": []}),
            "entry 2: 'run' is not a list of commands",
        ),
        (damaged(["file"]), "entry 2: not a JSON object"),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "version",
        "entries-not-a-list",
        "unknown-kind",
        "missing-field",
        "wrong-type",
        "not-a-bool",
        "command-not-a-list",
        "entry-not-an-object",
    ],
)
def test_a_damaged_manifest_is_refused_naming_what_is_wrong(
    tmp_path: Path, data: object, message: str
) -> None:
    path = tmp_path / "install.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(InstallError, match=message) as caught:
        Manifest.load(path)
    assert str(path) in str(caught.value)
    assert caught.value.__cause__ is not None
