"""`benchmarks/run` lands here: build the content, start the upstream, run the selected
workloads against the selected peers, print the tables and write them to a results file."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import data, replay, soak, workloads
from .options import (
    ALL_PEERS,
    DEFAULT_REPEATS,
    QUICK_SOAK_MINUTES,
    SMOKE_PEERS,
    SMOKE_SOAK_MINUTES,
    SOAK_MINUTES,
    WORKLOAD_KEYS,
    parse_args,
    selects,
)
from .peers import PEERS, Peer, Transcache
from .report import Column, Table, document
from .upstream import Upstream
from .workloads import Run, Sample, SkipWorkload

RESULTS = Path(__file__).resolve().parent / "results"

Measure = Callable[[Run, Peer, int], Sample]


def _cold_warm_columns(metric: str, label: str, digits: int = 2) -> list[Column]:
    return [
        Column(f"cold_{metric}", f"cold {label}", digits),
        Column(f"warm_{metric}", f"warm {label}", digits),
        Column("cold_upstream", "upstream reqs cold", 0, ratio=False),
        Column("cold_upstream_conns", "upstream conns cold", 0, ratio=False),
        Column("warm_upstream", "upstream reqs warm", 0, ratio=False),
        Column("warm_upstream_conns", "upstream conns warm", 0, ratio=False),
    ]


def _pages_columns() -> list[Column]:
    return [
        Column("cold_rps", "cold req/s", 0),
        Column("warm_rps", "warm req/s", 0),
        Column("warm_p50", "warm p50 ms", 2),
        Column("warm_p99", "warm p99 ms", 2),
        Column("cold_p99", "cold p99 ms", 2),
        Column("warm_connections", "client conns", 0, ratio=False),
        Column("cold_upstream", "upstream reqs cold", 0, ratio=False),
        Column("cold_upstream_conns", "upstream conns cold", 0, ratio=False),
        Column("warm_upstream", "upstream reqs warm", 0, ratio=False),
    ]


@dataclass(frozen=True)
class Workload:
    key: str  # one of options.WORKLOAD_KEYS
    table: Callable[[], Table]
    measure: Measure


def _ignore_repeat(measure: Callable[[Run, Peer], Sample]) -> Measure:
    return lambda run, peer, _repeat: measure(run, peer)


WORKLOADS: list[Workload] = [
    Workload(
        "W1a",
        lambda: Table(
            "W1a: uv pip install of the requirement set (seconds)", _cold_warm_columns("s", "s")
        ),
        _ignore_repeat(workloads.w1_install("uv")),
    ),
    Workload(
        "W1b",
        lambda: Table(
            "W1b: pip install of the requirement set (seconds)", _cold_warm_columns("s", "s")
        ),
        _ignore_repeat(workloads.w1_install("pip")),
    ),
    Workload(
        "W2",
        lambda: Table(
            "W2: the big file with curl (MB/s; peak RSS growth over idle, MB)",
            [
                Column("cold_mbps", "cold MB/s", 0),
                Column("warm_mbps", "warm MB/s", 0),
                Column("rss_growth_mb", "RSS growth MB", 1),
                Column("cold_upstream", "upstream reqs cold", 0, ratio=False),
                Column("warm_upstream", "upstream reqs warm", 0, ratio=False),
            ],
        ),
        _ignore_repeat(workloads.w2_big_file),
    ),
    Workload(
        "W3a",
        lambda: Table(
            "W3a: small pages, one keep-alive connection (curl, sequential)", _pages_columns()
        ),
        _ignore_repeat(workloads.w3_pages(parallel=False)),
    ),
    Workload(
        "W3b",
        lambda: Table(
            f"W3b: small pages, {workloads.PARALLEL} in parallel (curl --parallel)",
            _pages_columns(),
        ),
        _ignore_repeat(workloads.w3_pages(parallel=True)),
    ),
    Workload(
        "W4",
        lambda: Table("W4: git clone (seconds)", _cold_warm_columns("s", "s")),
        _ignore_repeat(workloads.w4_clone),
    ),
    Workload(
        "W5",
        lambda: Table(
            "W5: TLS through the peer (CONNECT + handshake, ms; known-host handshakes/s)",
            [
                Column("new_ms", "new host ms", 2),
                Column("new_first_response_ms", "new host to first response ms", 2),
                Column("known_ms", "known host ms", 2),
                Column("known_per_s", "known host handshakes/s", 0),
            ],
            note=(
                f"{workloads.NEW_HOSTS} never-seen hosts (a leaf minted for each) and "
                f"{workloads.KNOWN_HANDSHAKES} full handshakes to one known host, sequential. "
                "direct and nginx-rc are TLS to nginx itself (no CONNECT, no minting)."
            ),
        ),
        workloads.w5_handshakes,
    ),
    Workload(
        "W6",
        lambda: Table(
            "W6: resident memory of the peer's processes (MB)",
            [Column("idle_mb", "idle", 1), Column("w3_peak_mb", "peak under W3b (warm)", 1)],
            note="RSS summed over the peer's process tree (squid's helpers, nginx's workers).",
        ),
        _ignore_repeat(workloads.w6_memory),
    ),
    Workload("W7", replay.w7_table, _ignore_repeat(replay.w7_replay)),
    Workload("W8", soak.w8_table, _ignore_repeat(soak.w8_soak)),
]

# --workloads is checked (and documented) against options.WORKLOAD_KEYS: they must agree.
assert tuple(w.key for w in WORKLOADS) == WORKLOAD_KEYS


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_description() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    from .peers import MITM_VENV

    tools = {
        "nginx": _version(["nginx", "-v"]),
        "squid": _version(["squid", "-v"]),
        "mitmproxy": _version([str(MITM_VENV / "bin" / "mitmdump"), "--version"]),
        "curl": _version(["curl", "--version"]),
        "git": _version(["git", "--version"]),
        "uv": _version([str(workloads.UV), "--version"]),
        "pip": _version([sys.executable, "-m", "pip", "--version"]).split(" from ")[0],
    }
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {int(mem) // 1024} MiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        + "; ".join(f"{name}: {version}" for name, version in tools.items())
    )


def _export_source(ref: str, scratch: Path) -> Path:
    """`src/` as of `ref`, exported into the scratch directory; returns the import path."""
    dest = scratch / "transcache-src"
    dest.mkdir()
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", ref, "src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def transcache_revision(ref: str | None) -> str:
    """Which transcache was measured: a commit, or the working tree and whether it was dirty."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return result.stdout.strip()

    if ref:
        return f"commit {git('rev-parse', '--short', ref)}"
    dirty = git("status", "--porcelain", "--", "src")
    return f"working tree at {git('rev-parse', '--short', 'HEAD')}" + (
        " with uncommitted changes in src/" if dirty else ""
    )


def _keep_logs(peer: Peer, output: Path, label: str) -> Path:
    """Copy a failed peer's logs next to the results file (the scratch dir goes away)."""
    dest = output.with_suffix(".logs") / f"{peer.name}-{label}"
    dest.mkdir(parents=True, exist_ok=True)
    for log in peer.workdir.glob("*.log"):
        shutil.copyfile(log, dest / log.name)
    return dest


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    peer_names = [p for p in args.peers.split(",") if p] or (
        SMOKE_PEERS if args.smoke else ALL_PEERS
    )
    unknown = [p for p in peer_names if p not in PEERS]
    if unknown:
        print(f"unknown peers: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if "transcache" not in peer_names:
        peer_names.insert(0, "transcache")  # the ratios are to transcache
    selected = [w for w in WORKLOADS if selects(args.workloads, w.key)]
    repeats = args.repeats or (1 if args.quick or args.smoke else DEFAULT_REPEATS)
    dataset = data.SMOKE if args.smoke else data.FULL

    started = datetime.datetime.now(datetime.UTC)
    revision = transcache_revision(args.transcache_ref)
    mode = "smoke" if args.smoke else ("slow upstream" if args.slow else "fast upstream")
    output = args.output or RESULTS / f"{started:%Y%m%dT%H%M%S}-{mode.split()[0]}.md"
    profile_dir = output.with_suffix(".profiles")
    if args.profile:
        profile_dir.mkdir(parents=True, exist_ok=True)
    content = data.build(dataset)
    scratch = Path(tempfile.mkdtemp(prefix="transcache-bench-"))
    scratch.chmod(0o755)  # squid's and nginx's workers read configs and certificates here
    upstream = Upstream.create(scratch / "upstream", content, args.slow)
    soak_minutes = args.soak_minutes or (
        SMOKE_SOAK_MINUTES if args.smoke else QUICK_SOAK_MINUTES if args.quick else SOAK_MINUTES
    )
    run = Run(upstream, content, scratch, repeats, soak_minutes)
    peers: list[Peer] = []
    tables: list[Table] = []
    try:
        upstream.start()
        for name in peer_names:
            peers.append(PEERS[name](upstream, scratch / name, run.hosts()))
            if isinstance(peers[-1], Transcache):
                if args.transcache_ref:
                    peers[-1].source = _export_source(args.transcache_ref, scratch)
                peers[-1].options = args.transcache_option
                if args.profile:
                    peers[-1].profile_dir = profile_dir
            peers[-1].start()
        for workload in selected:
            table = workload.table()
            tables.append(table)
            for repeat in range(repeats):  # peers interleaved: drift hits all alike
                for peer in peers:
                    if peer.name in table.skipped:
                        continue
                    print(
                        f"[{datetime.datetime.now():%H:%M:%S}] {table.title.split(':')[0]} "
                        f"run {repeat + 1}/{repeats}: {peer.name}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if isinstance(peer, Transcache):
                        peer.profile_label = f"{table.title.split(':')[0]}-run{repeat + 1}"
                    try:
                        table.add(peer.name, workload.measure(run, peer, repeat))
                    except SkipWorkload as exc:
                        table.skip(peer.name, str(exc))
                    except Exception as exc:
                        traceback.print_exc()
                        kept = _keep_logs(
                            peer, output, f"{table.title.split(':')[0]}-run{repeat + 1}"
                        )
                        why = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                        if peer.process is not None and peer.process.poll() is not None:
                            why = (
                                f"the peer's process had exited ({peer.process.returncode}); {why}"
                            )
                        table.fail(peer.name, f"{why}; logs in {kept}")
                        try:
                            peer.reset()
                        except Exception:
                            traceback.print_exc()
    finally:
        for peer in peers:
            peer.stop()
        upstream.stop()
        if args.keep:
            print(f"scratch kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    command = "benchmarks/run " + " ".join(argv)
    preamble = f"""
Run {started:%Y-%m-%d %H:%M} UTC, {mode}, {repeats} repetition(s), `{command.strip()}`,
transcache: {revision}.
Machine: {machine_description()}.
Cold: the peer just started with an empty cache; warm: the same again right after. Clients'
own caches are off. `(nx)` is the peer's value divided by transcache's in this run.
"upstream reqs" counts the requests the upstream nginx answered in that phase, "upstream conns"
the connections they came on.
"""
    text = document(f"Benchmark results ({mode})", preamble, tables, peer_names)
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}", file=sys.stderr)
    failed = any("transcache" in t.failures for t in tables)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
