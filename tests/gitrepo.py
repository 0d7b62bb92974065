"""Git repositories for the smart-HTTP tests.

Provides:

- `git_env(home)`: the environment every git command in the tests runs with: the minimal
  client environment plus a fixed author, committer and date, so commits (and their ids) are
  the same on every run.
- `run_git(*args, cwd, env)`: run one git command, fail loudly, return its stripped stdout.
- `commit_file(work_tree, path, data, message, env)`: write one file and commit it.
- `make_repo(root, name, commits)`: a bare repository `root/name` (serve `root` with
  `Origin.add_git`), cloned from a throwaway work tree with `commits` commits on `main`;
  returns the bare repository's path and its HEAD commit id.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .origin import client_env

IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.test",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
}
DEFAULT_BRANCH = "main"
GIT_TIMEOUT = 60.0


def git_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The client environment for git, with a fixed identity and date (plus `extra`)."""
    return client_env(home, {**IDENTITY, **(extra or {})})


def run_git(*args: str, cwd: Path, env: Mapping[str, str]) -> str:
    """Run `git args...` in `cwd`; raise CalledProcessError (with git's stderr) on failure."""
    completed = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        check=False,
    )
    if completed.returncode != 0:
        raise subprocess.CalledProcessError(
            completed.returncode, completed.args, completed.stdout, completed.stderr
        )
    return completed.stdout.strip()


def commit_file(
    work_tree: Path, path: str, data: bytes, message: str, env: Mapping[str, str]
) -> str:
    """Write `data` to `path` in `work_tree`, commit it, and return the new commit id."""
    target = work_tree / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    run_git("add", path, cwd=work_tree, env=env)
    run_git("commit", "--quiet", "-m", message, cwd=work_tree, env=env)
    return run_git("rev-parse", "HEAD", cwd=work_tree, env=env)


def make_repo(root: Path, name: str = "pkg.git", commits: int = 3) -> tuple[Path, str]:
    """Create the bare repository `root/name` with `commits` commits on `main`.

    Returns (bare repository path, HEAD commit id). Identical on every run.
    """
    if commits < 1:
        raise ValueError("a repository needs at least one commit")
    root.mkdir(parents=True, exist_ok=True)
    bare = root / name
    with tempfile.TemporaryDirectory(prefix="gitrepo-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        work_tree = Path(scratch) / "work"
        env = git_env(home)
        run_git("init", "--quiet", "-b", DEFAULT_BRANCH, str(work_tree), cwd=root, env=env)
        commit_file(work_tree, "README.md", f"# {name}\n".encode(), "Add README", env)
        for number in range(1, commits):
            commit_file(
                work_tree,
                f"data/file{number}.txt",
                f"file {number}\n".encode(),
                f"Add file {number}",
                env,
            )
        head = run_git("rev-parse", "HEAD", cwd=work_tree, env=env)
        run_git("clone", "--quiet", "--bare", str(work_tree), str(bare), cwd=root, env=env)
        run_git("remote", "remove", "origin", cwd=bare, env=env)
    return bare, head
