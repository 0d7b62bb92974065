"""What `transcache install` is given and what it leaves: every path and value it writes into
a unit, plist or shell file is checked before anything is written, and written so that the
program reading that file gets exactly the value back; an install that fails part-way leaves
nothing behind; uninstall removes the directories install created."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transcache.install import installer, launchd, systemd
from transcache.install.environment import env_sh_path, environment_d_path, fish_path
from transcache.install.errors import InstallError
from transcache.install.inputs import Input, Kind, problem
from transcache.install.runner import RecordingRunner
from transcache.install.settings import Settings
from transcache.install.trust_linux import LinuxStore

from .installhome import Home, fake_machine, make_home, snapshot

# Every character some target format has to quote or escape: spaces, both quotes, `$` and a
# variable name (shells, systemd, environment.d), `%` specifiers (systemd; %Z is not one, so
# systemd-analyze rejects it unless it is escaped), `&<>` (XML), `;`, a backquote, a
# backslash and non-ASCII.
AWKWARD = "a b $HOME %h %Z \"q\" 's' & <x> ; `t` é \\ end"
# An interpreter path may hold all but quotes and backslashes, which systemd refuses in an
# executable's name.
AWKWARD_INTERPRETER = "py $HOME %h %Z & <x> ; é"
AWKWARD_HOST = "$HOME.%h.'q'.\"d\".example"
ENVIRONMENT_D_GENERATOR = Path(
    "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"
)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path, ((".bashrc", b"# mine\n"),))


# -- refused before anything is written ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--cache-dir", "/srv/cache\nExecStartPre=/bin/touch /tmp/owned"), "--cache-dir"),
        (("--ca-dir", "/srv/ca\r[Install]"), "--ca-dir"),
        (("--no-proxy", "corp.example\nexport HTTPS_PROXY=http://evil.example"), "--no-proxy"),
        (("--listen", "127.0.0.1\n:8797"), "--listen"),
        (("--cache-dir", "/srv/tab\there"), "--cache-dir"),
        (("--cache-dir", "/srv/delete\x7f"), "--cache-dir"),
        (("--cache-dir", "/srv/c1-next-line\x85"), "--cache-dir"),
        (("--cache-dir", "/srv/not-utf-8-\udcff"), "--cache-dir"),
        (("--listen", "proxy host:8797"), "--listen"),
        (("--listen", "a/b@c:8797"), "--listen"),
        (("--no-proxy", "a.example b.example"), "--no-proxy"),
        (("--listen", "0.0.0.0:8797"), "--listen"),
    ],
    ids=[
        "newline-cache-dir",
        "cr-ca-dir",
        "newline-no-proxy",
        "newline-listen",
        "tab",
        "del",
        "c1-control",
        "not-utf-8",
        "space-in-listen-host",
        "url-characters-in-listen-host",
        "space-in-no-proxy",
        "beyond-loopback",
    ],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["install", "dry-run"])
def test_unsafe_input_is_refused_before_anything_is_written(
    home: Home, args: tuple[str, str], named: str, dry_run: bool
) -> None:
    before = snapshot(home.root)
    result = home.transcache("install", *args, *(["--dry-run"] if dry_run else []), check=False)
    assert result.returncode == 1, result.stdout
    assert named in result.stderr and "nothing was written" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(home.root) == before


def test_a_home_whose_path_holds_a_newline_is_refused(tmp_path: Path) -> None:
    # env.sh lives under HOME and is sourced from ~/.bashrc by its path.
    home = make_home(tmp_path / "new\nline", ((".bashrc", b"# mine\n"),))
    before = snapshot(tmp_path)
    result = home.transcache("install", check=False)
    assert result.returncode == 1
    assert "the data directory" in result.stderr and "U+000A" in result.stderr, result.stderr
    assert snapshot(tmp_path) == before


def test_an_interpreter_path_systemd_cannot_run_is_refused(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.patch(monkeypatch)
    before = snapshot(home.root)
    machine = fake_machine(home, python='/opt/py "3"/bin/python')
    with pytest.raises(InstallError, match=r"the Python interpreter .*quote"):
        installer.prepare(Settings(), machine)
    assert snapshot(home.root) == before


# -- written so that each format reads the value back --------------------------------------


def awkward_install(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **machine: object
) -> Settings:
    """Install (in process, commands recorded) with every awkward character in the CA and
    cache paths, a NO_PROXY host and the interpreter's path."""
    home.patch(monkeypatch)
    interpreter = tmp_path / AWKWARD_INTERPRETER / "python"
    interpreter.parent.mkdir()
    interpreter.symlink_to(sys.executable)
    settings = Settings(
        ca_dir=tmp_path / AWKWARD / "ca",
        cache_dir=tmp_path / AWKWARD / "cache",
        no_proxy=(AWKWARD_HOST,),
    )
    plan = installer.prepare(settings, fake_machine(home, python=str(interpreter), **machine))
    installer.install(settings, plan, RecordingRunner())
    return settings


def printed_by(argv: list[str], env: dict[str, str]) -> list[str]:
    """What `argv` printed, as NUL-terminated values (so any value can be compared)."""
    result = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=True
    )
    return result.stdout.decode().split("\0")[:-1]


def print_variables(names: list[str]) -> str:
    return 'printf "%s\\0"' + "".join(f' "${name}"' for name in names)


@pytest.mark.parametrize("shell", ["sh", "bash", "zsh"])
def test_env_sh_gives_sh_bash_and_zsh_the_exact_values(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shell: str
) -> None:
    env = awkward_install(home, monkeypatch, tmp_path).environment()
    script = f'. "$ENV_SH"; {print_variables(list(env))}'
    printed = printed_by([shell, "-c", script], home.env({"ENV_SH": str(env_sh_path())}))
    assert printed == list(env.values())


def test_fish_file_gives_fish_the_exact_values(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = awkward_install(home, monkeypatch, tmp_path).environment()
    script = "source $FISH_FILE; printf '%s\\0'" + "".join(f" ${name}" for name in env)
    printed = printed_by(["fish", "-c", script], home.env({"FISH_FILE": str(fish_path())}))
    assert printed == list(env.values())


def test_login_shells_of_an_awkward_home_see_the_variables(tmp_path: Path) -> None:
    home = make_home(tmp_path / AWKWARD, ((".bashrc", b"# mine\n"),))
    home.transcache("install")
    expected = str(home.data_dir / "ca" / "bundle.pem")
    for shell in (["bash", "-lc"], ["bash", "-ic"], ["zsh", "-c"], ["fish", "-c"]):
        printed = printed_by([*shell, "printf '%s\\0' \"$SSL_CERT_FILE\""], home.env())
        assert printed == [expected], shell


@pytest.mark.skipif(not ENVIRONMENT_D_GENERATOR.exists(), reason="no systemd environment.d")
def test_environment_d_file_gives_the_session_the_exact_values(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = awkward_install(home, monkeypatch, tmp_path).environment()
    assert environment_d_path().is_file()
    generated = subprocess.run(
        [str(ENVIRONMENT_D_GENERATOR)],
        env={"HOME": str(home.path), "XDG_CONFIG_HOME": str(home.config_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # The generator prints the session's environment shell-quoted, for sh to read back.
    printed = printed_by(
        ["sh", "-c", f'eval "$GENERATED"; {print_variables(list(env))}'],
        {"GENERATED": generated, "PATH": os.defpath},
    )
    assert printed == list(env.values())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit_and_finds_the_interpreter(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    awkward_install(home, monkeypatch, tmp_path)
    unit = systemd.unit_dir() / systemd.SERVICE_NAME
    # verify fails on an unknown specifier (%Z unescaped), unbalanced quotes, and an
    # executable that does not exist at the unescaped path.
    result = subprocess.run(
        ["systemd-analyze", "--user", "verify", "--man=no", str(unit)],
        env=home.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    keys = [line.split("=", 1)[0] for line in unit.read_text().splitlines() if "=" in line]
    assert keys == [
        "Description",
        "Type",
        "ExecStart",
        "ExecReload",
        "UnsetEnvironment",
        "KillMode",
        "Restart",
        "RestartSec",
        "WantedBy",
    ]


def test_launchd_plist_holds_the_exact_arguments(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = awkward_install(home, monkeypatch, tmp_path, platform="darwin")
    with launchd.plist_path().open("rb") as f:
        plist = plistlib.load(f)
    interpreter = str(tmp_path / AWKWARD_INTERPRETER / "python")
    assert plist["ProgramArguments"] == [
        interpreter,
        "-m",
        "transcache",
        *settings.run_arguments(),
    ]
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(launchd.log_path())


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (Input("--ca-dir", "/srv/\ufffe"), "non-character"),
        (Input("--listen", "fe80::1%eth0", Kind.LISTEN_HOST), "IPv6 zone"),
        (Input("--listen", "proxy.example.", Kind.LISTEN_HOST), "authentication"),
        (Input("--listen", "localhost", Kind.LISTEN_HOST), None),
        (Input("--listen", "::1", Kind.LISTEN_HOST), None),
        (Input("--no-proxy", ".corp.example", Kind.NO_PROXY_HOST), None),
        (Input("--no-proxy", "a,b", Kind.NO_PROXY_HOST), "comma"),
        (Input("the Python interpreter", "/opt/py\\3/python", Kind.EXECUTABLE), "backslash"),
        (Input("--cache-dir", AWKWARD), None),
    ],
)
def test_what_no_format_can_carry_is_named(item: Input, reason: str | None) -> None:
    found = problem(item)
    assert found is None if reason is None else reason in (found or ""), found


# -- an install that fails part-way leaves nothing behind -----------------------------------


def block_systemctl_enable(home: Home) -> None:
    """Make `systemctl --user enable` fail for real: its wants directory is a file."""
    wants = home.config_dir / "systemd" / "user" / "default.target.wants"
    wants.parent.mkdir(parents=True)
    wants.write_text("not a directory\n")


def test_install_failing_part_way_leaves_nothing_behind_not_even_the_new_ca(
    home: Home,
) -> None:
    block_systemctl_enable(home)
    before = snapshot(home.root)
    result = home.transcache("install", check=False)
    assert result.returncode == 1
    assert "systemctl --user enable transcache.service" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(home.root) == before


def test_install_failing_part_way_keeps_a_ca_that_existed_before(home: Home) -> None:
    home.transcache("ca", "path")
    block_systemctl_enable(home)
    before = snapshot(home.root)
    assert (home.data_dir / "ca" / "ca.pem").is_file()
    result = home.transcache("install", check=False)
    assert result.returncode == 1
    assert snapshot(home.root) == before


def test_install_whose_plan_cannot_be_built_leaves_no_ca(home: Home) -> None:
    # Without /usr/sbin on PATH no system trust store is found, after the CA was created.
    path = f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin"
    before = snapshot(home.root)
    result = home.transcache(
        "install", "--trust", "system", env=home.env({"PATH": path}), check=False
    )
    assert result.returncode == 1
    assert "no supported system trust store" in result.stderr
    assert snapshot(home.root) == before


def test_a_failed_install_undoes_the_commands_it_had_run(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.patch(monkeypatch)
    store = LinuxStore(
        "Fedora/RHEL",
        home.root / "anchors",
        ".pem",
        ("update-ca-trust", "extract"),
        ("update-ca-trust", "extract"),
    )
    settings = Settings(trust=("system",))
    machine = fake_machine(home, system_store=store, user_manager_running=True)
    before = snapshot(home.root)
    plan = installer.prepare(settings, machine)
    runner = RecordingRunner({("update-ca-trust", "extract"): (1, "trust store is read-only")})
    with pytest.raises(InstallError, match="trust store is read-only"):
        installer.install(settings, plan, runner)
    copy_anchor = runner.calls[3]
    assert copy_anchor[:4] == ("install", "-D", "-m", "0644")
    systemctl = ("systemctl", "--user")
    assert runner.calls == [
        (*systemctl, "daemon-reload"),
        (*systemctl, "enable", "transcache.service"),
        (*systemctl, "restart", "transcache.service"),
        copy_anchor,
        ("update-ca-trust", "extract"),
        ("rm", "-f", copy_anchor[-1]),
        ("update-ca-trust", "extract"),
        (*systemctl, "disable", "--now", "transcache.service"),
        (*systemctl, "daemon-reload"),
    ]
    assert snapshot(home.root) == before


# -- uninstall removes the directories install created ---------------------------------------


def test_uninstall_removes_the_empty_directories_install_created(
    home: Home, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (home.path / ".config").mkdir()  # existed before install: stays
    before = snapshot(home.path)
    ca_dir = tmp_path_factory.mktemp("elsewhere") / "ca"
    home.transcache("install", "--ca-dir", str(ca_dir))
    home.transcache("uninstall")
    assert snapshot(home.path) == before
    assert (ca_dir / "ca.pem").is_file()


def test_uninstall_keeps_created_directories_that_hold_other_files(home: Home) -> None:
    home.transcache("install")
    mine = home.config_dir / "fish" / "conf.d" / "mine.fish"
    mine.write_text("set -gx MINE 1\n")
    home.transcache("uninstall")
    assert mine.read_text() == "set -gx MINE 1\n"
    assert not (home.config_dir / "environment.d").exists()
    # The CA stays without --purge, and so do the directories above it.
    assert sorted(p.name for p in home.data_dir.iterdir()) == ["ca"]


def test_purge_leaves_no_directory_install_created(home: Home) -> None:
    before = snapshot(home.path)
    home.transcache("install")
    home.transcache("uninstall", "--purge")
    assert snapshot(home.path) == before
