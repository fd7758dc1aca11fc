"""The gateway's settings: read from ``GATEWAY_*`` environment variables, validated once.

Settings are a value handed to ``create_app``; nothing reads the environment at import time.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, HttpUrl, RedisDsn, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GATEWAY_"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SettingsError(Exception):
    """A setting is invalid; the message is one line that names the variable."""


class Settings(BaseSettings):
    """Everything an operator can set. Field ``x`` is read from ``GATEWAY_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", validate_default=True
    )

    upstream_url: HttpUrl | None = Field(
        default=None,
        description="Base URL of the Webex API, e.g. https://webexapis.com/v1; "
        "unset serves the embedded simulator.",
    )
    cache_ttl: float = Field(
        default=60.0, ge=0, le=86_400, description="Seconds a response stays cached; 0 disables."
    )
    cache_max_entries: int = Field(default=10_000, ge=1, description="Cached responses, at most.")
    cache_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="Approximate bytes the local cache holds."
    )
    cache_key_secret: SecretStr | None = Field(
        default=None,
        description="HMAC secret for cache keys; required with a Redis URL so replicas agree.",
    )
    redis_url: RedisDsn | None = Field(default=None, description="Optional shared cache tier.")
    max_page_size: int = Field(
        default=2000, ge=1, le=100_000, description="Largest `first` a caller may ask for."
    )
    upstream_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds for one whole upstream exchange, retries included.",
    )
    upstream_concurrency: int = Field(
        default=16, ge=1, le=1024, description="Upstream requests in flight at once, at most."
    )
    breaker_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Consecutive failed upstream exchanges that open the circuit breaker.",
    )
    breaker_cooldown: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds the breaker stays open before a probe."
    )
    stale_if_error: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="Seconds past its TTL an entry may still answer when the upstream fails "
        "with a 5xx or a timeout; 0 disables.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body; larger gets 413."
    )
    max_query_depth: int = Field(default=10, ge=2, le=100, description="Deepest selection.")
    max_aliases: int = Field(default=15, ge=0, le=1000, description="Aliases per document.")
    max_tokens: int = Field(default=2000, ge=50, le=100_000, description="Tokens per document.")
    max_root_fields: int = Field(
        default=10, ge=1, le=1000, description="Root fields per operation (fragments included)."
    )
    max_entities: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Entity representations per `_entities` request (federation), at most.",
    )
    env: Environment = Field(
        default=Environment.DEVELOPMENT,
        description="`production` turns off introspection, GraphiQL and field suggestions.",
    )
    simulator_size: int = Field(
        default=1000, ge=10, le=100_000, description="Entries in the embedded simulator's org."
    )
    simulator_seed: int = Field(default=7, description="Seed of the embedded simulator's data.")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")

    @model_validator(mode="after")
    def _redis_needs_a_shared_secret(self) -> Settings:
        if self.redis_url is not None and self.cache_key_secret is None:
            raise ValueError(
                "GATEWAY_CACHE_KEY_SECRET is required when GATEWAY_REDIS_URL is set, "
                "so that replicas derive the same cache keys"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_a_real_upstream(self) -> Settings:
        if self.env is Environment.PRODUCTION and self.upstream_url is None:
            raise ValueError(
                "GATEWAY_ENV=production needs GATEWAY_UPSTREAM_URL: production never serves "
                "the embedded simulator's demo data (set GATEWAY_ENV=development to try it)"
            )
        return self

    @property
    def embedded_simulator(self) -> bool:
        return self.upstream_url is None

    @property
    def production(self) -> bool:
        return self.env is Environment.PRODUCTION


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, apply overrides (from CLI flags), and validate.

    Raises ``SettingsError`` with one line naming the offending variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


# A Redis URL may carry a password; a secret is a secret.
_VALUES_NEVER_ECHOED = frozenset({"GATEWAY_CACHE_KEY_SECRET", "GATEWAY_REDIS_URL"})


def describe_validation_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    location = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location:
        return f"invalid settings: {message}"
    variable = ENV_PREFIX + location[0].upper()
    value = error.get("input")
    hidden = isinstance(value, dict) or variable in _VALUES_NEVER_ECHOED
    shown = "" if hidden else f" (got {value!r})"
    return f"{variable}: {message}{shown}"
