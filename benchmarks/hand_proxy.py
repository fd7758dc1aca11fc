"""The floor for an uncached request: a hand-written proxy with no GraphQL at all.

Starlette + httpx + orjson, as one would write it by hand in front of the same upstream:
``POST /graphql`` reads ``variables.size`` from a JSON body, asks the upstream for that many
numbers with the caller's ``Authorization``, projects every PhoneNumber field with a plain
dict function (the gateway's reading defaults, no validation), and answers
``{"data": {"phoneNumbers": {"nodes": [...]}}}`` — the same bytes the gateway answers for the
peer benchmark's query (``benchmarks/peer_gateway.py`` checks they are equal), so both do the
same work over the same upstream bytes. One shared ``httpx.AsyncClient`` from the lifespan,
uvicorn as the gateway runs (httptools, uvloop when installed).

    .venv/bin/python benchmarks/hand_proxy.py --port 8003 --upstream http://127.0.0.1:8002/v1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

NUMBERS_ENDPOINT = "/telephony/config/numbers"


def instant(value: Any) -> str | None:
    """An ISO 8601 time as the gateway's ``DateTime`` writes it (UTC, ``+00:00``)."""
    if not isinstance(value, str):
        return None
    moment = datetime.fromisoformat(value)
    return (
        moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    ).isoformat()


def project_item(item: dict[str, Any]) -> dict[str, Any]:
    """Every PhoneNumber field of one upstream item, in the peer query's order, with the
    gateway's defaults for missing values (flags false, a location always)."""
    get = item.get
    location = get("location") or {}
    owner = get("owner")
    return {
        "phoneNumber": get("phoneNumber"),
        "extension": get("extension"),
        "routingPrefix": get("routingPrefix"),
        "esn": get("esn"),
        "state": get("state"),
        "phoneNumberType": get("phoneNumberType"),
        "mainNumber": get("mainNumber", False),
        "includedTelephonyTypes": get("includedTelephonyTypes"),
        "mobileNetwork": get("mobileNetwork"),
        "routingProfile": get("routingProfile"),
        "tollFreeNumber": get("tollFreeNumber", False),
        "isServiceNumber": get("isServiceNumber", False),
        "isReservedNumber": get("isReservedNumber"),
        "elinEnabled": get("elinEnabled"),
        "location": {"id": location.get("id", ""), "name": location.get("name")},
        "owner": (
            {
                "id": owner["id"],
                "type": owner.get("type"),
                "firstName": owner.get("firstName"),
                "lastName": owner.get("lastName"),
                "displayName": owner.get("displayName"),
                "elinExpiryTime": instant(owner.get("elinExpiryTime")),
            }
            if owner and owner.get("id")
            else None
        ),
    }


def create_hand_proxy_app(upstream_url: str) -> Starlette:
    """The proxy as an ASGI app: ``POST /graphql`` and ``GET /healthz``."""
    numbers_url = upstream_url.rstrip("/") + NUMBERS_ENDPOINT
    clients: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        ) as client:
            clients.append(client)
            yield

    async def graphql(request: Request) -> Response:
        payload = orjson.loads(await request.body())
        size = int(payload["variables"]["size"])
        upstream = await clients[0].get(
            numbers_url,
            params={"max": size},
            headers={"Authorization": request.headers["authorization"]},
        )
        items = orjson.loads(upstream.content)["phoneNumbers"]
        nodes = [project_item(item) for item in items]
        body = orjson.dumps({"data": {"phoneNumbers": {"nodes": nodes}}})
        return Response(body, media_type="application/graphql-response+json; charset=utf-8")

    async def healthz(request: Request) -> Response:
        return Response(b"ok", media_type="text/plain")

    return Starlette(
        routes=[Route("/graphql", graphql, methods=["POST"]), Route("/healthz", healthz)],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL (…/v1)")
    args = parser.parse_args()
    uvicorn.run(
        create_hand_proxy_app(args.upstream),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
