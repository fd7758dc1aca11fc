"""Settings: environment variables with the GATEWAY_ prefix, one clear line when invalid."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.settings import Environment, SettingsError, load_settings


def test_defaults_serve_the_embedded_simulator() -> None:
    settings = load_settings()
    assert settings.embedded_simulator
    assert settings.cache_ttl == 60
    assert settings.max_page_size == 2000
    assert settings.env is Environment.DEVELOPMENT


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_URL", "https://webexapis.com/v1")
    monkeypatch.setenv("GATEWAY_CACHE_TTL", "0")
    monkeypatch.setenv("GATEWAY_ENV", "production")
    settings = load_settings()
    assert str(settings.upstream_url) == "https://webexapis.com/v1"
    assert settings.cache_ttl == 0
    assert settings.production


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_CACHE_TTL", "-1"),
        ("GATEWAY_CACHE_TTL", "soon"),
        ("GATEWAY_MAX_PAGE_SIZE", "0"),
        ("GATEWAY_UPSTREAM_TIMEOUT", "0"),
        ("GATEWAY_UPSTREAM_URL", "not a url"),
        ("GATEWAY_ENV", "staging"),
        ("GATEWAY_REDIS_URL", "http://nope"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message


def test_redis_needs_a_key_secret_and_never_echoes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://:hunter2@localhost:6379/0")
    with pytest.raises(SettingsError, match="GATEWAY_CACHE_KEY_SECRET") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def test_serve_stops_with_one_line_on_a_bad_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_MAX_PAGE_SIZE"] = "lots"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.server.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "GATEWAY_MAX_PAGE_SIZE" in lines[0]


@pytest.mark.parametrize(
    ("args", "variables"),
    [(["--env", "production"], {}), ([], {"GATEWAY_ENV": "production"})],
    ids=["flag", "environment variable"],
)
def test_production_without_an_upstream_refuses_to_start(
    args: list[str], variables: dict[str, str]
) -> None:
    """Production never serves the simulator's demo data to callers without a token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | variables
    result = subprocess.run(
        [sys.executable, "-m", "gateway.server.cli", "serve", "--port", "1", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "GATEWAY_ENV" in lines[0]
    assert "GATEWAY_UPSTREAM_URL" in lines[0]


def test_production_with_an_upstream_is_valid() -> None:
    settings = load_settings(env="production", upstream_url="https://webexapis.com/v1")
    assert settings.production
    assert not settings.embedded_simulator


def test_answer_reuse_size_keeps_its_former_name_as_a_deprecated_alias(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_RESPONSE_CACHE_MAX_BYTES", "2048")
    assert load_settings().answer_reuse_max_bytes == 2048
    monkeypatch.setenv("GATEWAY_ANSWER_REUSE_MAX_BYTES", "4096")
    assert load_settings().answer_reuse_max_bytes == 4096, "the new name wins"
    assert load_settings(answer_reuse_max_bytes=8192).answer_reuse_max_bytes == 8192
    monkeypatch.delenv("GATEWAY_ANSWER_REUSE_MAX_BYTES")
    monkeypatch.setenv("GATEWAY_RESPONSE_CACHE_MAX_BYTES", "lots")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("GATEWAY_ANSWER_REUSE_MAX_BYTES:")
    assert "GATEWAY_RESPONSE_CACHE_MAX_BYTES" in message


PRODUCTION = {"GATEWAY_ENV": "production", "GATEWAY_UPSTREAM_URL": "https://webexapis.com/v1"}


@pytest.mark.parametrize(
    "secret",
    [
        "abc",
        "changeme",
        "secret",
        "x" * 31,
        "REPLACE-ME-example-placeholder-not-a-secret",  # deploy/kubernetes/secret.yaml
        "local-only-insecure-cache-key-secret",  # compose.yaml
        "changeme-changeme-changeme-changeme",
        "secretsecretsecretsecretsecretsecret",
    ],
)
def test_production_refuses_a_short_or_placeholder_cache_key_secret(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    for name, value in {**PRODUCTION, "GATEWAY_CACHE_KEY_SECRET": secret}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("GATEWAY_CACHE_KEY_SECRET:")
    assert "\n" not in message
    assert secret not in message or len(secret) < 8


def test_a_random_secret_passes_and_development_takes_any(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_CACHE_KEY_SECRET", "abc")
    assert load_settings().cache_key_secret is not None, "development: any value"
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "GATEWAY_CACHE_KEY_SECRET", "Qm9ndXMtYnV0LXJhbmRvbS1sb29raW5nLTQ4LWJ5dGVzLWhlcmU"
    )
    assert load_settings().production


def test_a_metrics_port_needs_one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_METRICS_PORT", "9464")
    monkeypatch.setenv("GATEWAY_WORKERS", "2")
    with pytest.raises(SettingsError, match=r"^GATEWAY_METRICS_PORT:"):
        load_settings()


def _serve_exit(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))
    } | env_extra
    return subprocess.run(
        [sys.executable, "-m", "gateway.server.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value", "extra"),
    [
        ("GATEWAY_CACHE_KEY_SECRET", "changeme", PRODUCTION),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", {}),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://", {}),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:99999", PRODUCTION),
    ],
)
def test_serve_refuses_to_start_in_one_line(
    variable: str, value: str, extra: dict[str, str]
) -> None:
    result = _serve_exit({**extra, variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert variable in lines[0]


def test_every_invalid_setting_is_reported_at_once_one_line_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Field problems and rules across settings together: an operator fixes them in one round."""
    for name, value in {
        "GATEWAY_ENV": "production",
        "GATEWAY_MAX_PAGE_SIZE": "0",
        "GATEWAY_CACHE_KEY_SECRET": "changeme",
        "GATEWAY_CORS_ORIGINS": "admin.example.com",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    problems = caught.value.problems
    assert str(caught.value).splitlines() == list(problems)
    assert sorted(line.split(":")[0].split("=")[0] for line in problems) == [
        "GATEWAY_CACHE_KEY_SECRET",
        "GATEWAY_CORS_ORIGINS",
        "GATEWAY_ENV",  # production needs GATEWAY_UPSTREAM_URL
        "GATEWAY_MAX_PAGE_SIZE",
    ]
    assert "changeme" not in str(caught.value)


def test_a_rule_across_settings_is_not_reported_over_an_invalid_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad GATEWAY_UPSTREAM_URL is one line, not also "production needs one"."""
    monkeypatch.setenv("GATEWAY_ENV", "production")
    monkeypatch.setenv("GATEWAY_UPSTREAM_URL", "not a url")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("GATEWAY_UPSTREAM_URL:")


def test_a_production_start_with_three_bad_settings_names_all_three() -> None:
    result = _serve_exit(
        {
            "GATEWAY_ENV": "production",
            "GATEWAY_UPSTREAM_URL": "webexapis.com/v1",
            "GATEWAY_CACHE_TTL": "soon",
            "GATEWAY_ROUTER_SECRET": "short",
        }
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    named = {line.removeprefix("numbers-gateway: ").split(":")[0] for line in lines}
    assert named == {"GATEWAY_UPSTREAM_URL", "GATEWAY_CACHE_TTL", "GATEWAY_ROUTER_SECRET"}
    assert all("(got" in line or "needs" in line for line in lines), lines
    assert "short" not in result.stderr  # a secret is never echoed


def test_settings_and_tracing_problems_are_reported_together() -> None:
    result = _serve_exit({"GATEWAY_MAX_PAGE_SIZE": "lots", "OTEL_TRACES_EXPORTER": "zipkin"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "GATEWAY_MAX_PAGE_SIZE",
        "OTEL_TRACES_EXPORTER",
    ]
