"""The fused middleware answers exactly as the layers it fuses did, one after another: for
random request heads (Origin or not, Accept-Encoding values, a body or not, CSRF headers,
methods, paths) and random app responses (with and without their own ``Vary``), the status,
every header in order and the body are equal. And a request that needs no layer's work does
skip it: its body is never read by the guard."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from gateway.server.compression import CompressionMiddleware
from gateway.server.connections import InFlightLimit
from gateway.server.gateway_middleware import GatewayMiddleware
from gateway.server.request_guards import BodySizeLimitMiddleware, CsrfPreventionMiddleware
from tests.conftest import examples

CORS = {
    "allow_origins": ["https://app.example"],
    "allow_methods": ["GET", "POST"],
    "allow_headers": ["content-type", "authorization"],
    "expose_headers": ["x-request-id"],
    "allow_credentials": False,
    "max_age": 600,
}
CSRF_HEADERS = ("x-apollo-operation-name", "apollo-require-preflight")
MAX_BODY = 64


def answering(vary: list[bytes], size: int) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", b"application/json")]
        headers += [(b"vary", value) for value in vary]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"data":"' + b"x" * size + b'"}'})

    return app


def layered(app: object, csrf: bool) -> object:
    """The chain as ``create_app`` built it before the fusion."""
    inner: object = app
    if csrf:
        inner = CsrfPreventionMiddleware(inner, required_headers=CSRF_HEADERS)  # type: ignore[arg-type]
    inner = BodySizeLimitMiddleware(inner, max_bytes=MAX_BODY, read_timeout=5)  # type: ignore[arg-type]
    inner = CORSMiddleware(inner, **CORS)  # type: ignore[arg-type]
    inner = CompressionMiddleware(inner, minimum_size=100)  # type: ignore[arg-type]
    return InFlightLimit(inner, max_in_flight=10)  # type: ignore[arg-type]


def fused(app: object, csrf: bool) -> object:
    return GatewayMiddleware(
        app,  # type: ignore[arg-type]
        max_in_flight=10,
        compression_min_bytes=100,
        cors=CORS,
        max_body_bytes=MAX_BODY,
        body_timeout=5,
        csrf_required_headers=CSRF_HEADERS if csrf else None,
    )


async def answer(middleware: object, scope: Scope, body: bytes) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(dict(scope), receive, send)  # type: ignore[operator]
    return sent


heads = st.fixed_dictionaries(
    {},
    optional={
        b"origin": st.sampled_from([b"https://app.example", b"https://evil.example"]),
        b"accept-encoding": st.sampled_from(
            [b"identity", b"gzip", b"br", b"gzip, br", b"br;q=0", b"*", b"", b"deflate"]
        ),
        b"content-type": st.sampled_from(
            [b"application/json", b"text/plain", b"application/x-www-form-urlencoded"]
        ),
        b"apollo-require-preflight": st.sampled_from([b"1", b""]),
        b"access-control-request-method": st.just(b"POST"),
    },
)


@settings(max_examples=examples(200), deadline=None)
@given(
    head=heads,
    method=st.sampled_from(["GET", "POST", "OPTIONS", "PUT"]),
    path=st.sampled_from(["/graphql", "/healthz"]),
    query=st.sampled_from([b"", b"query=%7Ba%7D", b"page=1"]),
    body=st.sampled_from([None, b"", b"{}", b"x" * (MAX_BODY + 1)]),
    vary=st.lists(st.sampled_from([b"Accept", b"Authorization", b"Accept-Encoding"]), max_size=2),
    size=st.sampled_from([0, 500]),
    csrf=st.booleans(),
)
def test_fused_middleware_answers_as_the_layers_did(
    head: dict[bytes, bytes],
    method: str,
    path: str,
    query: bytes,
    body: bytes | None,
    vary: list[bytes],
    size: int,
    csrf: bool,
) -> None:
    headers = list(head.items())
    if body is not None:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": headers,
    }
    app = answering(vary, size)
    before = asyncio.run(answer(layered(app, csrf), scope, body or b""))
    after = asyncio.run(answer(fused(app, csrf), scope, body or b""))
    assert after == before


def test_a_request_needing_no_layer_goes_straight_to_the_app() -> None:
    """No Origin, identity, no body, a JSON content type: the body guard never reads for it
    (no replayed ``receive``), and the response still says what it varies on."""
    received: list[Receive] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Message:
        raise AssertionError("the body was read")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/graphql",
        "root_path": "",
        "query_string": b"query=%7Ba%7D",
        "headers": [(b"accept-encoding", b"identity"), (b"apollo-require-preflight", b"1")],
    }
    asyncio.run(fused(app, csrf=True)(scope, receive, send))  # type: ignore[operator]
    assert received == [receive]
    assert (b"vary", b"Origin, Accept-Encoding") in sent[0]["headers"]
