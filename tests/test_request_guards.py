"""The body guard's fast path: a request that carries no body by the protocol goes straight to
the app (no timer, no replay), and every request that may carry one is still bounded."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from gateway.server.request_guards import BodySizeLimitMiddleware

LIMIT = 10


def http_scope(method: str, headers: list[tuple[bytes, bytes]], http_version: str = "1.1") -> Scope:
    return {
        "type": "http",
        "http_version": http_version,
        "method": method,
        "path": "/graphql",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
    }


class Answered:
    """The app behind the guard: records the ``receive`` it got and answers 200."""

    def __init__(self) -> None:
        self.receive: Receive | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.receive = receive
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def run(scope: Scope, receive: Receive) -> tuple[Answered, list[Message]]:
    app = Answered()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await BodySizeLimitMiddleware(app, max_bytes=LIMIT, read_timeout=5)(scope, receive, send)
    return app, sent


async def never_called() -> Message:
    raise AssertionError("a request without a body was read")


async def test_a_request_without_body_headers_reaches_the_app_unread() -> None:
    app, sent = await run(http_scope("GET", [(b"host", b"x")]), never_called)
    assert app.receive is never_called  # the server's own receive: nothing replayed
    assert sent[0]["status"] == 200


def body_of(size: int) -> Receive:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"x" * size, "more_body": False}

    return receive


async def test_a_chunked_body_is_still_counted() -> None:
    scope = http_scope("POST", [(b"transfer-encoding", b"chunked")])
    app, sent = await run(scope, body_of(LIMIT + 1))
    assert app.receive is None
    assert sent[0]["status"] == 413


async def test_a_declared_length_is_still_checked() -> None:
    scope = http_scope("POST", [(b"content-length", str(LIMIT + 1).encode())])
    _, sent = await run(scope, never_called)
    assert sent[0]["status"] == 413


async def test_beyond_http1_a_body_without_headers_is_still_counted() -> None:
    # HTTP/2 frames a body without Content-Length: only HTTP/1.x lets the headers vouch.
    app, sent = await run(http_scope("POST", [], http_version="2"), body_of(LIMIT + 1))
    assert app.receive is None
    assert sent[0]["status"] == 413
