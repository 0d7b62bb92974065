"""Metadata records: what a stored entry and a Vary index record look like on disk, and the
one validation every record read from a cache dir or an archive goes through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from transcache._registries import Ecosystem
from transcache.store.metadata import (
    Entry,
    EntryKind,
    MetadataError,
    VaryIndex,
    parse_record,
)

BLOBS = Path("/cache/v1/blobs")
DIGEST = "ab" * 32


def entry_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": "https://files.test/pkg.tar.gz\n",
        "url": "https://files.test/pkg.tar.gz",
        "status": 200,
        "reason": "OK",
        "headers": [["Content-Type", "application/gzip"], ["X-Name", "caf\xe9"]],
        "digest": DIGEST,
        "size": 12,
        "request_time": 1000.0,
        "response_time": 1001,
        "kind": "git",
        "ecosystem": "git",
        "fetch_seconds": 0.25,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def test_an_entry_record_reads_back_as_a_typed_entry() -> None:
    entry = parse_record(entry_record(), BLOBS)
    assert entry == Entry(
        key="https://files.test/pkg.tar.gz\n",
        url="https://files.test/pkg.tar.gz",
        status=200,
        reason=b"OK",
        headers=[(b"Content-Type", b"application/gzip"), (b"X-Name", b"caf\xe9")],
        digest=DIGEST,
        size=12,
        request_time=1000.0,
        response_time=1001.0,
        body_path=BLOBS / "ab" / "ab" / DIGEST,
        kind=EntryKind.GIT,
        ecosystem=Ecosystem.GIT,
        fetch_seconds=0.25,
    )
    assert isinstance(entry, Entry)
    assert parse_record(entry.to_json(), BLOBS) == entry


@pytest.mark.parametrize(
    ("url", "kind", "ecosystem"),
    [
        ("https://files.test/packages/ab/cd/0123456789abcdef0123/x-1.0.tar.gz", "http", "pypi"),
        ("https://files.test/pool/main/c/curl/curl_8.0-1_amd64.deb", "http", "debian"),
        ("https://git.test/repo.git/git-upload-pack", "git", "git"),
        ("https://files.test/page.html", "http", "other"),
    ],
)
def test_an_entry_from_before_ecosystems_gets_one_from_its_kind_and_url(
    url: str, kind: str, ecosystem: str
) -> None:
    record = entry_record(url=url, kind=kind, ecosystem=..., fetch_seconds=...)
    entry = parse_record(record, BLOBS)
    assert isinstance(entry, Entry)
    assert (entry.ecosystem.value, entry.fetch_seconds) == (ecosystem, 0.0)


@pytest.mark.parametrize(("field", "value"), [("ecosystem", "cobol"), ("fetch_seconds", "1")])
def test_an_entry_with_a_bad_ecosystem_or_fetch_time_is_refused(field: str, value: str) -> None:
    with pytest.raises(MetadataError, match=field if field == "fetch_seconds" else "ecosystem"):
        parse_record(entry_record(**{field: value}), BLOBS)


def test_an_entry_without_a_kind_is_an_http_entry() -> None:
    entry = parse_record(entry_record(kind=...), BLOBS)
    assert isinstance(entry, Entry) and entry.kind is EntryKind.HTTP


def test_an_index_record_reads_back_as_a_vary_index() -> None:
    index = parse_record({"key": "https://files.test/simple/pkg/", "vary": ["accept"]}, BLOBS)
    assert index == VaryIndex("https://files.test/simple/pkg/", ("accept",))
    assert isinstance(index, VaryIndex)
    assert parse_record(index.to_json(), BLOBS) == index


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (["not", "a", "dict"], "no key"),
        (entry_record(key=7), "no key"),
        ({"key": "k"}, "an index record without a list of Vary fields"),
        ({"key": "k", "vary": "accept"}, "an index record without a list of Vary fields"),
        ({"key": "k", "vary": [1]}, "an index record without a list of Vary fields"),
        (entry_record(digest="/etc/passwd"), "a digest that is not a sha256"),
        (entry_record(digest="../../" + DIGEST[6:]), "a digest that is not a sha256"),
        (entry_record(digest=DIGEST.upper()), "a digest that is not a sha256"),
        (entry_record(digest=42), "a digest that is not a sha256"),
        (entry_record(url=...), "a bad url"),
        (entry_record(status="OK"), "a bad status"),
        (entry_record(status=True), "a bad status"),
        (entry_record(size=-1), "a bad size"),
        (entry_record(size=1.5), "a bad size"),
        (entry_record(size=False), "a bad size"),
        (entry_record(reason=None), "a bad reason"),
        (entry_record(reason="\u2603"), "a reason that is not latin-1"),
        (entry_record(headers="none"), "bad headers"),
        (entry_record(headers=[["Only-A-Name"]]), "a bad header"),
        (entry_record(headers=[["X", 1]]), "a bad header"),
        (entry_record(headers=[["X", "\u2603"]]), "a header that is not latin-1"),
        (entry_record(request_time="yesterday"), "a bad request_time"),
        (entry_record(response_time=None), "a bad response_time"),
        (entry_record(kind="ftp"), "an unknown kind"),
    ],
)
def test_a_malformed_record_is_refused_saying_why(record: object, problem: str) -> None:
    with pytest.raises(MetadataError, match=problem.replace("(", r"\(")):
        parse_record(record, BLOBS)
