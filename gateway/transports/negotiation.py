"""Content negotiation for GraphQL over HTTP: which media type to answer with (``Accept``)
and which content coding (``Accept-Encoding``)."""

from __future__ import annotations

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


def _parameters(item: str) -> tuple[str, float]:
    """One comma-separated entry of an Accept-style header: its value and quality."""
    value, *params = (part.strip() for part in item.split(";"))
    quality = 1.0
    for param in params:
        key, _, raw = param.partition("=")
        if key.strip().lower() == "q":
            try:
                quality = float(raw)
            except ValueError:
                quality = 0.0
            if not 0.0 <= quality <= 1.0:
                quality = 0.0
    return value.lower(), quality


def _ranked(header: str) -> list[tuple[str, float]]:
    return [_parameters(item) for item in header.split(",") if item.strip()]


def choose_media_type(accept: str | None) -> str | None:
    """The media type to answer with, or None when ``accept`` allows neither of ours (406).

    No ``Accept`` is ``application/json`` (the spec's rule for legacy clients). Among types
    of equal quality, ``application/graphql-response+json`` wins.
    """
    if accept is None or not accept.strip():
        return APPLICATION_JSON
    best: tuple[float, int] | None = None
    chosen: str | None = None
    for value, quality in _ranked(accept):
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
    ``multipart/mixed`` (any parameters, ``deferSpec=20220824`` among them) or
    ``text/event-stream``; the higher quality wins, multipart on a tie."""
    if not accept:
        return None
    best: tuple[float, int] | None = None
    chosen: str | None = None
    for value, quality in _ranked(accept):
        if quality <= 0 or value not in STREAMED_MEDIA_TYPES:
            continue
        score = (quality, -STREAMED_MEDIA_TYPES.index(value))
        if best is None or score > best:
            best, chosen = score, value
    return chosen


def prefers_json(accept: str | None) -> bool:
    """Whether ``accept`` ranks a JSON type strictly above every streamed type it names (by
    quality: ``application/json;q=0.9, multipart/mixed;q=0.1``). On a tie the streamed type
    serves an incremental operation, as clients naming both expect."""
    if not accept:
        return True
    best_json = best_stream = 0.0
    for value, quality in _ranked(accept):
        if value in SERVED_MEDIA_TYPES or value in ("*/*", "application/*"):
            best_json = max(best_json, quality)
        elif value in STREAMED_MEDIA_TYPES:
            best_stream = max(best_stream, quality)
    return best_json > best_stream


def wants_html(accept: str | None) -> bool:
    """A browser navigating to the page (``text/html`` named explicitly)."""
    return accept is not None and any(
        value == "text/html" and quality > 0 for value, quality in _ranked(accept)
    )


def choose_encoding(accept_encoding: str | None) -> str | None:
    """``br`` or ``gzip`` when the client accepts one (best quality first), else None."""
    if not accept_encoding:
        return None
    qualities: dict[str, float] = {}
    for value, quality in _ranked(accept_encoding):
        qualities[value] = quality
    wildcard = qualities.get("*")
    candidates = [
        (qualities.get(coding, wildcard if wildcard is not None else 0.0), -rank, coding)
        for rank, coding in enumerate(SERVED_ENCODINGS)
    ]
    quality, _, coding = max(candidates)
    return coding if quality > 0 else None
