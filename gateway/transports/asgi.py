"""The small pieces of raw ASGI the middleware share: reading a header, the path the app
routes on, and answering a refusal without Starlette's request objects (so a refused
request costs no parsing)."""

from __future__ import annotations

from starlette.types import Scope, Send

from gateway.transports.refusals import Refusal


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def app_path(scope: Scope) -> str:
    """The path the app routes on: without a ``--root-path`` prefix (uvicorn puts the prefix
    in ``path`` too)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


async def send_refusal(send: Send, refusal: Refusal) -> None:
    """Answer ``refusal`` with its status, its JSON error body and its headers."""
    body = refusal.body()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in refusal.headers.items()
                ),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
