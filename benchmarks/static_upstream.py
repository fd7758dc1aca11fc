"""A static stand-in for `GET /v1/telephony/config/numbers` that answers with fixed bytes.

The peer benchmark (`benchmarks/peer_gateway.py`) puts it behind both gateways so neither pays
for the simulator's searching: every answer is one of four bodies encoded once at start-up, a
50-item page or a 2,000-item page (chosen by `max`: up to 50 gets the small page, anything else
the large one), each with or without the `count` object (`details=true`). No `Link` header: the
2,000 items are the whole org. A request without `Authorization: Bearer …` gets Webex's 401
body, which proves a gateway forwarded the caller's header. `GET /_stats` counts answers.

    .venv/bin/python benchmarks/static_upstream.py --port 8002
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SMALL_PAGE = 50
LARGE_PAGE = 2000
TRACKING_ID = "ROUTER_STATIC-UPSTREAM-0000"


def generate_items(size: int = LARGE_PAGE, seed: int = 7) -> list[dict[str, Any]]:
    """Upstream-shaped items from the project's simulator (the same mix as the demo org)."""
    try:
        from gateway.simulator import build_demo_world
    except ImportError:  # the package is mid-refactor: make similar items ourselves
        return _similar_items(size, seed)
    world = build_demo_world(size=size, seed=seed)
    return [dict(entry.payload) for entry in world.demo_org.entries[:size]]


def _similar_items(size: int, seed: int) -> list[dict[str, Any]]:
    """A stand-in for the simulator's data: every field, nulls and enum values included."""
    rng = random.Random(seed)
    owner_types = ("PEOPLE", "PLACE", "VIRTUAL_LINE", "AUTO_ATTENDANT", "CALL_QUEUE", "HUNT_GROUP")
    locations = [
        (f"Y2lzY29zcGFyazovL3VzL0xPQ0FUSU9OL{index:048d}", name, f"800{index + 1}")
        for index, name in enumerate(
            ("Richardson", "Washington", "Bangalore", "London", "San Jose")
        )
    ]
    items: list[dict[str, Any]] = []
    for index in range(size):
        location_id, location_name, prefix = rng.choice(locations)
        has_number = rng.random() >= 0.55
        item: dict[str, Any] = {"phoneNumber": f"+1972555{index:04d}" if has_number else None}
        if not has_number or rng.random() < 0.6:
            extension = str(100 + index)
            item |= {"extension": extension, "routingPrefix": prefix, "esn": prefix + extension}
        if has_number:
            item["state"] = "INACTIVE" if rng.random() < 0.05 else "ACTIVE"
            item["phoneNumberType"] = rng.choice(("PRIMARY", "ALTERNATE", "FAX", "DNIS"))
        mobile = has_number and rng.random() < 0.02
        item |= {
            "mainNumber": index < len(locations),
            "includedTelephonyTypes": "MOBILE_NUMBER" if mobile else "PSTN_NUMBER",
            "tollFreeNumber": False,
            "isServiceNumber": False,
        }
        if mobile:
            item |= {"mobileNetwork": "Verizon", "routingProfile": "AttRtPf"}
        if has_number:
            item["isReservedNumber"] = False
        item["location"] = {"id": location_id, "name": location_name}
        if not has_number or rng.random() < 0.6:
            owner_type = "PEOPLE" if mobile else rng.choice(owner_types)
            owner: dict[str, Any] = {"id": f"Y2lzY29zcGFyazovL3VzL1BFT1BMRS{index:050d}"}
            owner["type"] = owner_type
            if owner_type in ("PEOPLE", "VIRTUAL_LINE"):
                owner |= {"firstName": rng.choice(("Ada", "Alan")), "lastName": "Hopper"}
            item["owner"] = owner
        items.append(item)
    return items


def count_items(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The upstream's `count` object over every item (the whole org matches: no filters)."""
    counts = Counter[str]()
    for item in items:
        if not item.get("phoneNumber"):
            counts["extensionOnly"] += 1
            continue
        counts["assigned" if item.get("owner") else "unAssigned"] += 1
        counts["inActive"] += item.get("state") == "INACTIVE"
        counts["tollFreeNumbers"] += bool(item.get("tollFreeNumber"))
        mobile = item.get("includedTelephonyTypes") == "MOBILE_NUMBER"
        counts["mobileNumber"] += mobile
        counts["serviceNumber"] += bool(item.get("isServiceNumber")) and not mobile
        counts["reservedNumber"] += bool(item.get("isReservedNumber"))
    keys = ("assigned", "unAssigned", "inActive", "extensionOnly", "tollFreeNumbers")
    return {
        **{key: counts[key] for key in keys},
        "total": len(items),
        **{key: counts[key] for key in ("mobileNumber", "serviceNumber", "reservedNumber")},
    }


def page_bodies(items: Sequence[Mapping[str, Any]]) -> dict[tuple[int, bool], bytes]:
    """The four fixed answers, keyed by (page size, details)."""
    counts = count_items(items)
    bodies: dict[tuple[int, bool], bytes] = {}
    for size in (SMALL_PAGE, LARGE_PAGE):
        page = list(items[:size])
        bodies[size, False] = orjson.dumps({"phoneNumbers": page})
        bodies[size, True] = orjson.dumps({"phoneNumbers": page, "count": counts})
    return bodies


def _page_size(max_param: str | None) -> int:
    try:
        requested = int(max_param) if max_param is not None else LARGE_PAGE
    except ValueError:
        requested = LARGE_PAGE
    return SMALL_PAGE if requested <= SMALL_PAGE else LARGE_PAGE


def create_static_upstream_app(items: Sequence[Mapping[str, Any]] | None = None) -> Starlette:
    """The static upstream as an ASGI app: `/v1/telephony/config/numbers` and `/_stats`."""
    bodies = page_bodies(items if items is not None else generate_items())
    served = Counter[str]()
    headers = {"TrackingID": TRACKING_ID}

    async def list_numbers(request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            served["401"] += 1
            return JSONResponse(
                {
                    "message": "The request requires a valid access token set in the "
                    "Authorization request header.",
                    "errors": [{"description": "Missing or invalid token", "errorCode": 401}],
                    "trackingId": TRACKING_ID,
                },
                status_code=401,
                headers=headers,
            )
        size = _page_size(request.query_params.get("max"))
        details = request.query_params.get("details") == "true"
        served[f"{size}{'+count' if details else ''}"] += 1
        return Response(bodies[size, details], media_type="application/json", headers=headers)

    async def stats(request: Request) -> Response:
        return JSONResponse(dict(served))

    async def healthz(request: Request) -> Response:
        return Response(b"ok", media_type="text/plain")

    return Starlette(
        routes=[
            Route("/v1/telephony/config/numbers", list_numbers),
            Route("/_stats", stats),
            Route("/healthz", healthz),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    uvicorn.run(
        create_static_upstream_app(),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
