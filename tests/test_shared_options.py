"""The shared tier's settings and pure parts, without a bucket: flags, config file keys,
`install` carrying them to the service, and the circuit breaker."""

from __future__ import annotations

from pathlib import Path

import pytest

from transcache._config import ConfigError, build_config
from transcache.cli import build_parser
from transcache.cli._tier import shared_cache_flags
from transcache.install.settings import Settings
from transcache.tiers.breaker import Breaker, BreakerState
from transcache.tiers.bucket import Location, parse_location


def test_a_location_names_a_bucket_and_a_prefix() -> None:
    assert parse_location("s3://ci-cache/team/a/") == Location("ci-cache", "team/a")
    assert parse_location("s3://ci-cache") == Location("ci-cache", "")
    for bad in ("https://ci-cache/x", "s3:///x"):
        with pytest.raises(ValueError):
            parse_location(bad)


def test_the_config_file_sets_the_tier_and_no_shared_cache_wins_over_it(tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        'shared_cache = "s3://ci-cache/x"\nshared_cache_timeout = 1.5\n'
        "shared_cache_failures = 3\nshared_cache_readonly = true\n"
    )
    config = build_config({}, config_file)
    assert config.shared_cache == "s3://ci-cache/x"
    assert (config.shared_cache_timeout, config.shared_cache_failures) == (1.5, 3)
    assert config.shared_cache_readonly
    assert not build_config({"shared_cache": "none"}, config_file).shared_cache
    with pytest.raises(ConfigError, match="s3://BUCKET/PREFIX"):
        build_config({"shared_cache": "ci-cache/x"})


def test_install_passes_the_tier_flags_to_the_service_and_keeps_them(tmp_path: Path) -> None:
    key = tmp_path / "verify.pem"
    key.write_text("a public key")
    args = build_parser().parse_args(
        [
            "install",
            "--shared-cache",
            "s3://ci-cache/x",
            "--shared-cache-verify-key",
            str(key),
            "--shared-cache-readonly",
        ]
    )
    flags = shared_cache_flags(args)
    assert flags == (
        "--shared-cache",
        "s3://ci-cache/x",
        "--shared-cache-verify-key",
        str(key.absolute()),
        "--shared-cache-readonly",
    )
    settings = Settings(shared_cache=flags)
    assert list(flags) == settings.run_arguments()[7 : 7 + len(flags)]
    assert Settings.from_json(settings.to_json()) == settings
    run = build_parser().parse_args(settings.run_arguments())
    assert run.shared_cache == "s3://ci-cache/x" and run.shared_cache_readonly


def test_no_option_takes_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    """Credentials come from the AWS variables and files: never from argv or a unit file."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    flags = capsys.readouterr().out.lower()
    assert "--shared-cache" in flags
    assert not any(word in flags for word in ("secret", "access-key", "session-token"))


def test_the_breaker_skips_after_failures_in_a_row_then_lets_one_probe_through() -> None:
    breaker = Breaker(failures=3, skip=30.0)
    for now in (0.0, 1.0):
        breaker.failed(now)
        assert breaker.allows(now)
    breaker.succeeded()  # a success resets the run
    for now in (2.0, 3.0, 4.0):
        breaker.failed(now)
    assert breaker.state is BreakerState.OPEN and not breaker.allows(20.0)
    assert breaker.allows(34.0)
    assert breaker.state in {BreakerState.PROBING}
    assert not breaker.allows(34.5)  # one probe at a time
    breaker.failed(35.0)  # the probe failed: another full skip
    assert not breaker.allows(64.0) and breaker.allows(65.0)
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.allows(65.1)


@pytest.mark.parametrize(
    "setting",
    ["shared_cache_timeout = 0", "shared_cache_failures = 0", "shared_cache_skip = -1"],
)
def test_shared_cache_settings_out_of_range_are_refused(tmp_path: Path, setting: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'shared_cache = "s3://ci-cache/x"\n{setting}\n')
    with pytest.raises(ConfigError, match="shared cache"):
        build_config({}, config, {})
