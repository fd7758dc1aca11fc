"""Faults the simulator acts out on demand: latency, rate limits, 5xx and unreadable bodies.

A rule fires for the next ``count`` requests, or for a ``fraction`` of them, or both. Rules come
from ``--fault SPEC`` flags or from ``POST /_simulator/faults``; the spec syntax is
``key=value`` pairs joined by commas, e.g. ``status=429,retry-after=2,count=3`` or
``latency=0.2,fraction=0.5`` or ``status=502,body=html``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

BODY_KINDS = ("webex", "html", "empty", "truncated")

FAULT_SPEC_HELP = """\
fault rules (repeat --fault; also POST /_simulator/faults with {"rules": [{...}]}):
  status=N         answer with HTTP status N (429, 423, 500, 502, 503, 504, ...)
  retry-after=S    Retry-After header value: seconds, or an HTTP-date
  latency=S        wait S seconds before answering (alone: delay only)
  body=KIND        webex (JSON error body, default), html, empty, truncated (cut-off JSON)
  count=N          fire for the next N requests only
  fraction=F       fire for a fraction F (0..1) of requests
examples: status=429,retry-after=1,fraction=0.1   latency=0.2   status=503,count=2
"""


class FaultSpecError(ValueError):
    pass


@dataclass(slots=True)
class FaultRule:
    status: int | None = None
    retry_after: str | None = None
    latency: float = 0.0
    body: str = "webex"
    count: int | None = None
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.status is not None and not 200 <= self.status <= 599:
            raise FaultSpecError(f"status must be an HTTP status, got {self.status}")
        if self.body not in BODY_KINDS:
            raise FaultSpecError(f"body must be one of {', '.join(BODY_KINDS)}, got {self.body!r}")
        if self.latency < 0 or not 0 <= self.fraction <= 1:
            raise FaultSpecError("latency must be >= 0 and fraction within 0..1")
        if self.count is not None and self.count < 0:
            raise FaultSpecError("count must be >= 0")

    @classmethod
    def parse(cls, spec: str) -> FaultRule:
        fields: dict[str, Any] = {}
        converters = {
            "status": ("status", int),
            "retry-after": ("retry_after", str),
            "latency": ("latency", float),
            "body": ("body", str),
            "count": ("count", int),
            "fraction": ("fraction", float),
        }
        # Split only before a known key, so an HTTP-date's own comma stays in its value.
        pieces = re.split(r",(?=\s*(?:status|retry-after|latency|body|count|fraction)=)", spec)
        for part in filter(None, (piece.strip() for piece in pieces)):
            key, sep, value = part.partition("=")
            if not sep or key not in converters:
                raise FaultSpecError(f"unknown fault setting {part!r} in {spec!r}")
            name, convert = converters[key]
            try:
                fields[name] = convert(value)
            except ValueError:
                raise FaultSpecError(f"bad value for {key}: {value!r}") from None
        return cls(**fields)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultRule:
        known = {"status", "retry_after", "retryAfter", "latency", "body", "count", "fraction"}
        unknown = set(data) - known
        if unknown:
            raise FaultSpecError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        fields = dict(data)
        if "retryAfter" in fields:
            fields["retry_after"] = fields.pop("retryAfter")
        try:
            return cls(**fields)
        except TypeError as exc:
            raise FaultSpecError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FaultOutcome:
    """What to do to one request: wait, and maybe answer with a fault instead."""

    latency: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    body: str = "webex"


class FaultPlan:
    """The active rules; decides each request's fate. Seeded, so runs repeat."""

    def __init__(self, rules: Iterable[FaultRule] = (), seed: int = 0) -> None:
        self.rules = list(rules)
        self._rng = random.Random(seed)

    def replace(self, rules: Iterable[FaultRule]) -> None:
        self.rules = list(rules)

    def next_outcome(self) -> FaultOutcome:
        latency = 0.0
        chosen: FaultRule | None = None
        for rule in self.rules:
            if rule.count is not None and rule.count <= 0:
                continue
            if rule.fraction < 1 and self._rng.random() >= rule.fraction:
                continue
            if rule.status is not None and chosen is not None:
                continue  # one status per request: the first firing rule's
            if rule.count is not None:
                rule.count -= 1
            latency += rule.latency
            if rule.status is not None:
                chosen = rule
        if chosen is None:
            return FaultOutcome(latency=latency)
        return FaultOutcome(
            latency=latency, status=chosen.status, retry_after=chosen.retry_after, body=chosen.body
        )
