"""Content negotiation for GraphQL over HTTP: which media type to answer with (``Accept``),
which incremental format and subscription protocol a streamed answer speaks (the parameters of
``Accept``'s streamed types), and which content coding (``Accept-Encoding``)."""

from __future__ import annotations

from enum import Enum
from functools import lru_cache
from typing import NamedTuple

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
# What we can answer with, best first (the GraphQL-over-HTTP spec's preference).
SERVED_MEDIA_TYPES = (GRAPHQL_RESPONSE_JSON, APPLICATION_JSON)
# Streamed media types (incremental delivery, subscriptions), preferred first on a tie.
MULTIPART_MIXED = "multipart/mixed"
EVENT_STREAM = "text/event-stream"
STREAMED_MEDIA_TYPES = (MULTIPART_MIXED, EVENT_STREAM)
# Content codings we produce, best first; identity is always acceptable unless refused.
SERVED_ENCODINGS = ("br", "gzip")


class IncrementalFormat(Enum):
    """How ``@defer``/``@stream`` payloads are written, as the streamed type in ``Accept``
    asks (its ``deferSpec`` or ``incrementalSpec`` parameter). The value is that parameter,
    repeated in the response's ``Content-Type``."""

    # No parameter (bare ``multipart/mixed``, ``text/event-stream``): the 2022 format of
    # graphql-js 17.0.0-alpha.2, every entry with its own ``path``; streamed items as
    # ``items`` entries (urql, GraphiQL).
    PATHS = ""
    # ``deferSpec=20220824`` named (Apollo's incremental v0.1, a format for ``@defer``: Apollo
    # Client 3, Apollo Router, Apollo Kotlin and iOS): the same, but each streamed item is a
    # ``data`` entry at its index, which readers that merge only ``data`` (Apollo Client 3)
    # place as well as those that read ``items`` (Apollo Client 4's Defer20220824Handler).
    DEFER_SPEC = "deferSpec=20220824"
    # ``incrementalSpec=v0.2`` (graphql-js 17.0.0-alpha.9, graphql-core 3.3's own, Apollo
    # Client 4's GraphQL17Alpha9Handler, Apollo Server 5): ``pending`` ids, ``incremental``
    # entries naming an id, ``completed``.
    V0_2 = "incrementalSpec=v0.2"


class SubscriptionProtocol(Enum):
    """How a subscription's events are written over HTTP."""

    SSE = EVENT_STREAM  # GraphQL over SSE, distinct connections mode
    # Apollo's multipart subscription protocol (``multipart/mixed;subscriptionSpec=1.0``):
    # Apollo Client's HttpLink, Apollo Router's clients.
    MULTIPART = "subscriptionSpec=1.0"


# The incremental parameters we speak, by name (lower case) and value.
_INCREMENTAL_PARAMETERS = {
    "deferspec": {"20220824": IncrementalFormat.DEFER_SPEC},
    "incrementalspec": {"v0.2": IncrementalFormat.V0_2},
}
# Among entries of equal quality and type, the newer format wins (as Apollo Server chooses).
_FORMAT_RANK = {
    IncrementalFormat.PATHS: 0,
    IncrementalFormat.DEFER_SPEC: 1,
    IncrementalFormat.V0_2: 2,
}


class _MediaRange(NamedTuple):
    """One comma-separated entry of an Accept-style header."""

    value: str  # lower case
    quality: float
    parameters: dict[str, str]  # names lower case, values unquoted, ``q`` left out


def _media_range(item: str) -> _MediaRange:
    value, *params = (part.strip() for part in item.split(";"))
    quality = 1.0
    parameters: dict[str, str] = {}
    for param in params:
        key, _, raw = param.partition("=")
        key, raw = key.strip().lower(), raw.strip()
        if key == "q":
            try:
                quality = float(raw)
            except ValueError:
                quality = 0.0
            if not 0.0 <= quality <= 1.0:
                quality = 0.0
        elif key:
            parameters[key] = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    return _MediaRange(value.lower(), quality, parameters)


@lru_cache(maxsize=256)  # clients send few distinct headers; each is read several times
def _ranked(header: str) -> tuple[_MediaRange, ...]:
    return tuple(_media_range(item) for item in header.split(",") if item.strip())


def _format_of(entry: _MediaRange) -> IncrementalFormat | None:
    """The incremental format a streamed entry asks for; None when it names a version of
    ``deferSpec`` or ``incrementalSpec`` we do not speak (the entry is not acceptable)."""
    chosen = IncrementalFormat.PATHS
    for name, versions in _INCREMENTAL_PARAMETERS.items():
        if name in entry.parameters:
            spoken = versions.get(entry.parameters[name])
            if spoken is None:
                return None
            chosen = max(chosen, spoken, key=_FORMAT_RANK.__getitem__)
    return chosen


def _best_stream(accept: str | None) -> tuple[str, IncrementalFormat] | None:
    """The streamed entry of ``accept`` that an incremental answer speaks: the highest
    quality, then multipart over SSE, then the newer format."""
    if not accept:
        return None
    best: tuple[float, int, int] | None = None
    chosen: tuple[str, IncrementalFormat] | None = None
    for entry in _ranked(accept):
        if entry.quality <= 0 or entry.value not in STREAMED_MEDIA_TYPES:
            continue
        spoken = _format_of(entry)
        if spoken is None:
            continue
        score = (entry.quality, -STREAMED_MEDIA_TYPES.index(entry.value), _FORMAT_RANK[spoken])
        if best is None or score > best:
            best, chosen = score, (entry.value, spoken)
    return chosen


def choose_media_type(accept: str | None) -> str | None:
    """The media type to answer with, or None when ``accept`` allows neither of ours (406).

    No ``Accept`` is ``application/json`` (the spec's rule for legacy clients). Among types
    of equal quality, ``application/graphql-response+json`` wins.
    """
    if accept is None or not accept.strip():
        return APPLICATION_JSON
    best: tuple[float, int] | None = None
    chosen: str | None = None
    for value, quality, _ in _ranked(accept):
        if quality <= 0:
            continue
        for rank, served in enumerate(SERVED_MEDIA_TYPES):
            if value in (served, "*/*", "application/*"):
                # A wildcard gets legacy JSON: clients that name no type expect it.
                if value != served and served != APPLICATION_JSON:
                    continue
                score = (quality, -rank if value == served else -len(SERVED_MEDIA_TYPES))
                if best is None or score > best:
                    best, chosen = score, served
    return chosen


def choose_stream_type(accept: str | None) -> str | None:
    """The streamed media type ``accept`` names explicitly (never by a wildcard), or None:
    ``multipart/mixed`` (bare, or with a ``deferSpec``/``incrementalSpec`` we speak, or any
    other parameters) or ``text/event-stream``; the higher quality wins, multipart on a tie."""
    best = _best_stream(accept)
    return best[0] if best is not None else None


def incremental_format(accept: str | None) -> IncrementalFormat:
    """The format ``@defer``/``@stream`` payloads are written in for ``accept``: the one its
    chosen streamed type asks for (``choose_stream_type``'s entry; among several of its type
    and quality, the newest), ``IncrementalFormat.PATHS`` when it names none."""
    best = _best_stream(accept)
    return best[1] if best is not None else IncrementalFormat.PATHS


def subscription_protocol(accept: str | None) -> SubscriptionProtocol | None:
    """How a subscription is answered for ``accept``: GraphQL over SSE when it names
    ``text/event-stream``, Apollo's multipart protocol when it names ``multipart/mixed`` with
    ``subscriptionSpec=1.0`` (quoted or not); the higher quality wins, SSE on a tie. None when
    it names neither (a bare ``multipart/mixed`` is no subscription protocol)."""
    if not accept:
        return None
    best: tuple[float, int] | None = None
    chosen: SubscriptionProtocol | None = None
    for entry in _ranked(accept):
        if entry.quality <= 0:
            continue
        if entry.value == EVENT_STREAM:
            protocol, rank = SubscriptionProtocol.SSE, 1
        elif entry.value == MULTIPART_MIXED and entry.parameters.get("subscriptionspec") == "1.0":
            protocol, rank = SubscriptionProtocol.MULTIPART, 0
        else:
            continue
        if best is None or (entry.quality, rank) > best:
            best, chosen = (entry.quality, rank), protocol
    return chosen


def prefers_json(accept: str | None) -> bool:
    """Whether ``accept`` ranks a JSON type strictly above every streamed type it names (by
    quality: ``application/json;q=0.9, multipart/mixed;q=0.1``). On a tie the streamed type
    serves an incremental operation, as clients naming both expect."""
    if not accept:
        return True
    best_json = best_stream = 0.0
    for value, quality, _ in _ranked(accept):
        if value in SERVED_MEDIA_TYPES or value in ("*/*", "application/*"):
            best_json = max(best_json, quality)
        elif value in STREAMED_MEDIA_TYPES:
            best_stream = max(best_stream, quality)
    return best_json > best_stream


def wants_html(accept: str | None) -> bool:
    """A browser navigating to the page (``text/html`` named explicitly)."""
    return accept is not None and any(
        value == "text/html" and quality > 0 for value, quality, _ in _ranked(accept)
    )


def choose_encoding(accept_encoding: str | None) -> str | None:
    """``br`` or ``gzip`` when the client accepts one (best quality first), else None."""
    if not accept_encoding:
        return None
    qualities: dict[str, float] = {}
    for value, quality, _ in _ranked(accept_encoding):
        qualities[value] = quality
    wildcard = qualities.get("*")
    candidates = [
        (qualities.get(coding, wildcard if wildcard is not None else 0.0), -rank, coding)
        for rank, coding in enumerate(SERVED_ENCODINGS)
    ]
    quality, _, coding = max(candidates)
    return coding if quality > 0 else None
