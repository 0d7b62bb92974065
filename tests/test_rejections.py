"""Which leaf rejections are worth a warning: once per host and client program."""

from __future__ import annotations

from transcache._rejections import LeafRejections


def test_each_program_is_told_once_per_host() -> None:
    rejections = LeafRejections()
    assert rejections.record("files.test", "curl", "127.0.0.1")
    assert not rejections.record("files.test", "curl", "127.0.0.1")
    assert rejections.record("files.test", "pip", "127.0.0.1")
    assert rejections.record("index.test", "curl", "127.0.0.1")
    assert rejections.to_json()["files.test"] == {"count": 3, "clients": ["curl", "pip"]}


def test_a_client_gone_before_its_lookup_is_not_told_again() -> None:
    # curl exits right after refusing the leaf, so the /proc lookup can miss it: the same
    # program then shows up by address only, and must not repeat the warning.
    rejections = LeafRejections()
    assert rejections.record("files.test", "curl", "127.0.0.1")
    assert not rejections.record("files.test", None, "127.0.0.1")
    assert rejections.to_json()["files.test"] == {"count": 2, "clients": ["127.0.0.1", "curl"]}


def test_an_unnamed_client_is_told_once_then_a_named_one_gets_its_own_fix() -> None:
    rejections = LeafRejections()
    assert rejections.record("files.test", None, "127.0.0.1")
    assert not rejections.record("files.test", None, "127.0.0.1")
    assert not rejections.record("files.test", None, "10.0.0.7")
    assert rejections.record("files.test", "git", "127.0.0.1")
    assert rejections.to_json()["files.test"] == {
        "count": 4,
        "clients": ["10.0.0.7", "127.0.0.1", "git"],
    }
