"""The gateway's settings: read from ``GATEWAY_*`` environment variables, validated once.

Settings are a value handed to ``create_app``; nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    Field,
    FilePath,
    HttpUrl,
    RedisDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "GATEWAY_"
# Origins a browser app usually runs on while it is being developed (Vite, Next.js/CRA,
# Angular, Apollo Sandbox-style local tools): allowed by default in development only.
DEVELOPMENT_CORS_ORIGINS = tuple(
    f"http://{host}:{port}"
    for port in (3000, 4200, 5173, 8080)
    for host in ("localhost", "127.0.0.1")
)
# Request headers browser clients send (Apollo Client, OpenTelemetry web, the cache
# report and no-cache bypass), allowed by CORS preflights unless configured otherwise.
DEFAULT_CORS_ALLOW_HEADERS = (
    "content-type",
    "authorization",
    "apollo-require-preflight",
    "x-apollo-operation-name",
    "apollographql-client-name",
    "apollographql-client-version",
    "traceparent",
    "tracestate",
    "baggage",
    "cache-control",
    "gateway-cache-report",
    "x-request-id",
)
MIN_ROUTER_SECRET_BYTES = 32
# Apollo Router's defaults for CSRF prevention.
DEFAULT_CSRF_REQUIRED_HEADERS = ("x-apollo-operation-name", "apollo-require-preflight")
_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
CommaList = Annotated[tuple[str, ...], NoDecode]
MIN_CACHE_KEY_SECRET_BYTES = 32
# Words people type when a value is required, and the example values of
# deploy/kubernetes/secret.yaml and compose.yaml (both match): refused in production however
# long they are.
_PLACEHOLDER_WORDS = re.compile(
    r"replace[-_ ]?me|change[-_ ]?me|placeholder|example|insecure|not[-_ ]a[-_ ]secret"
    r"|your[-_ ]secret|^(secret|password|abc|test|default|x+|0+)+$",
    re.IGNORECASE,
)


def _is_placeholder(value: str) -> bool:
    """A value a person copied from an example or typed as filler (never a random key)."""
    return _PLACEHOLDER_WORDS.search(value.strip()) is not None


# Variables renamed, and the former name each still answers to (deprecated).
DEPRECATED_VARIABLES = {"GATEWAY_ANSWER_REUSE_MAX_BYTES": "GATEWAY_RESPONSE_CACHE_MAX_BYTES"}


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SettingsError(Exception):
    """Settings are invalid: ``problems`` holds one line per problem, each naming its
    variable; the message is those lines."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _header_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` lower-cased, once each is checked to be an HTTP header name."""
    for name in names:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
    return tuple(name.lower() for name in names)


CHANGES_POLL_INTERVAL = 30.0
# The embedded simulator is the demo: polling it costs nothing upstream, and whoever tries the
# change feed (GraphiQL's example) wants to see a change soon after making it.
DEMO_CHANGES_POLL_INTERVAL = 2.0


class Settings(BaseSettings):
    """Everything an operator can set. Field ``x`` is read from ``GATEWAY_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        validate_default=True,
        # Fields with a deprecated variable name carry aliases; overrides still use names.
        validate_by_name=True,
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
    cache_caller_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="The most of each store's entries and bytes (pages, reused answers, "
        "persisted documents) one caller may hold, so one caller cannot evict every other "
        "tenant.",
    )
    answer_reuse_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        # The old name sized this store while sounding like the page cache; still read so
        # deployments keep working. The new name wins when both are set.
        validation_alias=AliasChoices(
            "GATEWAY_ANSWER_REUSE_MAX_BYTES", DEPRECATED_VARIABLES["GATEWAY_ANSWER_REUSE_MAX_BYTES"]
        ),
        description="Bytes of whole GraphQL answers kept for repeated identical operations "
        "(answer reuse).",
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
    upstream_concurrency_per_caller: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Upstream requests in flight at once for one caller (token), at most; "
        "free slots go to waiting callers in turn.",
    )
    max_upstream_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest upstream answer, counted after decompression; larger fails the "
        "field with UPSTREAM_UNAVAILABLE.",
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
    max_in_flight: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="Requests being served at once, at most; past it, 503 with Retry-After.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="Open client connections, at most (serve); past it, a new connection is "
        "answered 503 and closed.",
    )
    max_connections_per_client: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Open connections from one client address, at most (serve; the forwarded "
        "address behind a trusted proxy); past it, 503 and closed.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65_535,
        description="Serve `/metrics` only on this port, on a second listener (serve); unset: "
        "on the main port in development, nowhere in production.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a client has to send a request's head (serve); then 408 and close.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds a client has to send a request's body; then 408.",
    )
    keep_alive_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds an idle keep-alive connection stays open (serve).",
    )
    max_query_depth: int = Field(default=10, ge=2, le=100, description="Deepest selection.")
    max_aliases: int = Field(default=15, ge=0, le=1000, description="Aliases per document.")
    max_tokens: int = Field(default=2000, ge=50, le=100_000, description="Tokens per document.")
    max_root_fields: int = Field(
        default=10, ge=1, le=1000, description="Root fields per operation (fragments included)."
    )
    max_cost: int = Field(
        default=10_000,
        ge=100,
        le=10_000_000,
        description="Largest estimated operation cost (50 per upstream call plus the items "
        "pages may return, times the lists around them); costlier operations are refused.",
    )
    max_filter_values: int = Field(
        default=50,  # the domain's DEFAULT_MAX_FILTER_VALUES, which a bare NumbersSource takes
        ge=1,
        # A fan-out's cursor holds a position per value: at 64 it stays well within the bytes
        # a cursor may have (``arguments.URL_TEXT_MAX_BYTES``).
        le=64,
        description="Values of one fan-out list (`filter.locationIds`, `filter.ownerTypes`), "
        "or combinations of both, at most: each is one upstream query per page.",
    )
    max_entities: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Entity representations per `_entities` request (federation), at most.",
    )
    max_stream_items: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="Largest `page.first` of a list delivered with `@stream` (without it, "
        "`max_page_size` is the ceiling), and the most entries an export holds.",
    )
    max_streams_per_caller: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Incremental responses (`@defer`/`@stream` over multipart or SSE) and "
        "exports one caller (token) may have in flight in one process; past it a new one is "
        "RATE_LIMITED (429).",
    )
    cors_origins: CommaList | None = Field(
        default=None,
        description="Browser origins allowed to call the gateway (CORS), comma-separated exact "
        "origins such as `https://admin.example.com`, or `*`. Unset: the usual local "
        "development origins in development, none in production.",
    )
    csrf_prevention: bool = Field(
        default=True,
        description="Refuse operations a browser could send cross-site without a preflight "
        "(Apollo Router's CSRF rule). `false` turns it off.",
    )
    csrf_required_headers: CommaList = Field(
        default=DEFAULT_CSRF_REQUIRED_HEADERS,
        description="With CSRF prevention on, a request with a simple (or no) content type "
        "must carry one of these headers, non-empty.",
    )
    persisted_queries: bool = Field(
        default=True, description="Apollo's automatic persisted queries (APQ) protocol."
    )
    persisted_queries_max_entries: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Registered APQ documents kept locally."
    )
    persisted_queries_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Bytes of registered APQ documents kept locally.",
    )
    persisted_queries_max_document_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest document (UTF-8 bytes) APQ registers; larger ones run but are "
        "not kept.",
    )
    trusted_documents: FilePath | None = Field(
        default=None,
        description="A manifest of trusted operations (Apollo's persisted query manifest or "
        "GraphQL Codegen's persisted-documents.json). In production, only these run.",
    )
    router_secret: SecretStr | None = Field(
        default=None,
        description="A shared secret federation routers send in the `Gateway-Router-Secret` "
        "header: such requests may run federation operations (`_entities`, `_service`) "
        "outside GATEWAY_TRUSTED_DOCUMENTS. At least 32 bytes in production.",
    )
    cors_allow_headers: CommaList = Field(
        default=DEFAULT_CORS_ALLOW_HEADERS,
        description="Request headers browsers may send cross-origin (CORS preflights), "
        "comma-separated header names.",
    )
    batch_max: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Operations one POST may carry as a JSON array (batching); 0 turns "
        "batching off and a JSON array is refused.",
    )
    compression_min_bytes: int = Field(
        default=1024,
        ge=0,
        description="Responses at least this large are compressed (br or gzip) when the "
        "client accepts it.",
    )
    changes_max_items: int = Field(
        default=20_000,
        ge=1,
        le=1_000_000,
        description="Entries a change feed's filter may match at most; a larger one is "
        "refused (BAD_USER_INPUT) with a request for a narrower filter.",
    )
    # Three feeds of a 20,000-entry org (about 9.7 MB of JSON each) per caller, a dozen in
    # all; the process holds about 3.5 times as much as Python objects.
    changes_max_bytes_per_caller: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Bytes (their JSON size) of the entries one caller's change feeds may "
        "hold in one process; past it a new feed is RATE_LIMITED, and a feed whose entries "
        "alone exceed it is refused (BAD_USER_INPUT) with a request for a narrower filter.",
    )
    changes_max_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=1024,
        description="Bytes (their JSON size) of the entries every change feed of one process "
        "may hold together; past it a new feed is RATE_LIMITED.",
    )
    max_subscriptions_per_caller: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Open subscriptions of one caller (token) in one process, at most; past "
        "it a new one is RATE_LIMITED.",
    )
    max_subscriptions: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Open subscriptions in one process, at most; past it a new one is "
        "RATE_LIMITED.",
    )
    env: Environment = Field(
        default=Environment.DEVELOPMENT,
        description="`production` turns off introspection, GraphiQL and field suggestions.",
    )
    changes_poll_interval: float = Field(
        default=CHANGES_POLL_INTERVAL,
        ge=1,
        le=86_400,
        description="Seconds between two polls of one change feed (`phoneNumberChanges`); "
        f"unset: {DEMO_CHANGES_POLL_INTERVAL:g} in development with the embedded simulator "
        f"(so a change made to it shows within seconds), else {CHANGES_POLL_INTERVAL:g}.",
    )
    simulator_size: int = Field(
        default=1000, ge=10, le=100_000, description="Entries in the embedded simulator's org."
    )
    simulator_seed: int = Field(default=7, description="Seed of the embedded simulator's data.")
    simulator_churn: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="Random changes per second to the embedded simulator's data (to watch the "
        "change feed offline); ignored with GATEWAY_UPSTREAM_URL.",
    )
    simulator_pace: float = Field(
        default=0.001,
        ge=0,
        le=1,
        description="Seconds per entry the embedded simulator waits before each answer, as a "
        "real upstream takes its time (a 100-entry page 0.1 s); 0 answers at once; ignored "
        "with GATEWAY_UPSTREAM_URL.",
    )
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes sharing the port (`serve --workers`). Each has its own "
        "cache, breaker and metrics: prefer one worker per container and more replicas.",
    )
    forwarded_allow_ips: CommaList | None = Field(
        default=None,
        description="Proxies trusted for X-Forwarded-For/-Proto (`serve --forwarded-allow-ips`): "
        "comma-separated IP addresses or networks, or `*`. Unset: forwarded headers are "
        "ignored.",
    )
    shutdown_timeout: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="Seconds in-flight requests get to finish after SIGTERM before they are "
        "cancelled (`serve --shutdown-timeout`).",
    )
    root_path: str = Field(
        default="",
        pattern=r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$",
        description="The path prefix a proxy serves the gateway under and strips, e.g. "
        "`/numbers` (`serve --root-path`).",
    )

    @field_validator(
        "cors_origins",
        "csrf_required_headers",
        "forwarded_allow_ips",
        "cors_allow_headers",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for origin in value or ():
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: use scheme://host[:port], no path, or '*'"
                )
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for entry in value or ():
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is not an IP address or network (or '*')"
                    ) from None
        return value

    @field_validator("cors_allow_headers")
    @classmethod
    def _allowed_header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_header_names(value)))

    @field_validator("csrf_required_headers")
    @classmethod
    def _csrf_header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one header, or set GATEWAY_CSRF_PREVENTION=false")
        return _header_names(value)

    @model_validator(mode="before")
    @classmethod
    def _poll_the_demo_often(cls, data: Any) -> Any:
        """Unset in development against the embedded simulator, the change feed polls every
        ``DEMO_CHANGES_POLL_INTERVAL`` seconds: a change made to the demo data shows within
        seconds (GraphiQL's example). A value that is set always wins. Read from the input as
        given, so an invalid other setting cannot hide this one's default."""
        if not isinstance(data, dict) or data.get("changes_poll_interval") is not None:
            return data
        env = str(data.get("env", Environment.DEVELOPMENT.value)).strip().lower()
        if data.get("upstream_url") in (None, "") and env == Environment.DEVELOPMENT.value:
            return {**data, "changes_poll_interval": DEMO_CHANGES_POLL_INTERVAL}
        return data

    @property
    def embedded_simulator(self) -> bool:
        return self.upstream_url is None

    @property
    def production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        if self.cors_origins is not None:
            return self.cors_origins
        return () if self.production else DEVELOPMENT_CORS_ORIGINS


# --- rules across settings: each reads the fields it names, and says what is wrong -------------


def _redis_needs_a_shared_secret(settings: Settings) -> str | None:
    if settings.redis_url is not None and settings.cache_key_secret is None:
        return (
            "GATEWAY_CACHE_KEY_SECRET: required when GATEWAY_REDIS_URL is set, so that "
            "replicas derive the same cache keys"
        )
    return None


def _one_metrics_listener_per_registry(settings: Settings) -> str | None:
    if settings.metrics_port is not None and settings.workers > 1:
        return (
            "GATEWAY_METRICS_PORT: with GATEWAY_WORKERS > 1 each worker has its own "
            "metrics and one port cannot serve them all; run one worker per container "
            "(more replicas), or unset GATEWAY_METRICS_PORT"
        )
    return None


def _production_needs_a_real_cache_key_secret(settings: Settings) -> str | None:
    secret = settings.cache_key_secret
    if not settings.production or secret is None:
        return None
    value = secret.get_secret_value()
    if len(value.encode()) < MIN_CACHE_KEY_SECRET_BYTES:
        return (
            f"GATEWAY_CACHE_KEY_SECRET: production needs at least "
            f"{MIN_CACHE_KEY_SECRET_BYTES} bytes (e.g. openssl rand -base64 48)"
        )
    if _is_placeholder(value):
        return (
            "GATEWAY_CACHE_KEY_SECRET: this is a known example value, not a secret; "
            "set at least 32 random bytes (e.g. openssl rand -base64 48)"
        )
    return None


def _production_needs_a_long_router_secret(settings: Settings) -> str | None:
    secret = settings.router_secret
    too_short = secret is not None and (
        len(secret.get_secret_value().encode()) < MIN_ROUTER_SECRET_BYTES
    )
    if settings.production and too_short:
        return (
            f"GATEWAY_ROUTER_SECRET: production needs at least "
            f"{MIN_ROUTER_SECRET_BYTES} bytes (e.g. openssl rand -base64 48)"
        )
    return None


def _production_needs_a_real_upstream(settings: Settings) -> str | None:
    if settings.production and settings.upstream_url is None:
        return (
            "GATEWAY_ENV=production needs GATEWAY_UPSTREAM_URL: production never serves "
            "the embedded simulator's demo data (set GATEWAY_ENV=development to try it)"
        )
    return None


# Each rule with the fields it reads: a rule is checked only when those fields are valid
# themselves (a bad GATEWAY_UPSTREAM_URL is one line, not also "production needs one").
RULES_ACROSS_SETTINGS: tuple[tuple[frozenset[str], Callable[[Settings], str | None]], ...] = (
    (frozenset({"redis_url", "cache_key_secret"}), _redis_needs_a_shared_secret),
    (frozenset({"metrics_port", "workers"}), _one_metrics_listener_per_registry),
    (frozenset({"env", "cache_key_secret"}), _production_needs_a_real_cache_key_secret),
    (frozenset({"env", "router_secret"}), _production_needs_a_long_router_secret),
    (frozenset({"env", "upstream_url"}), _production_needs_a_real_upstream),
)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, apply overrides (from CLI flags), and validate: each setting,
    then the rules across settings.

    Raises ``SettingsError`` listing every problem, one line each, each naming its variable:
    an operator fixes them in one round, not one start-up per mistake.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    problems: list[str] = []
    invalid: set[str] = set()
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        for field, line in describe_validation_errors(exc):
            if field not in invalid:  # one line per variable: its first problem
                invalid.add(field)
                problems.append(line)
        # The valid settings, with each invalid one at its default, for the rules across
        # settings that read only valid ones.
        defaults = {field: Settings.model_fields[field].default for field in invalid}
        try:
            valid = Settings(**(given | defaults))
        except ValidationError:  # pragma: no cover - defaults are valid, the rest was
            raise SettingsError(*problems) from None
    else:
        valid = settings
    for fields, rule in RULES_ACROSS_SETTINGS:
        if not fields & invalid and (problem := rule(valid)) is not None:
            problems.append(problem)
    if problems:
        raise SettingsError(*problems)
    return valid


# A Redis URL may carry a password; a secret is a secret.
_VALUES_NEVER_ECHOED = frozenset(
    {"GATEWAY_CACHE_KEY_SECRET", "GATEWAY_REDIS_URL", "GATEWAY_ROUTER_SECRET"}
)


def _field_named(location: str) -> str:
    """The field an error's location names: its own name, or a variable it is read from."""
    if location in Settings.model_fields:
        return location
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        if location in choices:
            return name
    return location


def describe_validation_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """Each field error as (field, one line naming its variable), in pydantic's order."""
    described = []
    for error in exc.errors(include_url=False):
        field = _field_named(str(error["loc"][0])) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        variable = ENV_PREFIX + field.upper()
        value = error.get("input")
        hidden = isinstance(value, dict) or variable in _VALUES_NEVER_ECHOED
        shown = "" if hidden else f" (got {value!r})"
        former = DEPRECATED_VARIABLES.get(variable)
        also = f"; also read from its deprecated name {former}" if former else ""
        described.append((field, f"{variable}: {message}{shown}{also}"))
    return described
