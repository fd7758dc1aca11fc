"""The simulator's HTTP surface: a Webex-compatible ``GET /v1/telephony/config/numbers``.

Acts out the upstream as UPSTREAM.md describes: bearer tokens and their rights, every query
parameter and conflict, ``Link: <absolute URL>; rel="next"`` paging under a server page cap,
``details=true`` counts, Webex error bodies with a ``TrackingID`` header, and faults on demand
(``/_simulator/faults``), and data that changes on demand (``/_simulator/changes``). It is the
embedded default upstream, the demo, and the test bed. ``create_simulator_control_app`` serves
the control routes alone, for the gateway to mount under ``/_simulator`` when it embeds one;
``create_embedded_simulator_app`` is the simulator the gateway embeds, paced like a real
upstream so that the demo shows what streaming is for.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.simulator.changes import ChangeError, Churn, apply_change
from gateway.simulator.dataset import SimulatedOrg, SimulatorWorld, TokenGrant
from gateway.simulator.faults import FaultOutcome, FaultPlan, FaultRule, FaultSpecError
from gateway.simulator.search import (
    DEFAULT_MAX,
    OrgIndex,
    WebexBadRequest,
    count_details,
    parse_search,
)

NUMBERS_PATH = "/v1/telephony/config/numbers"
CONTROL_PREFIX = "/_simulator"  # faults, stats and changes: the test bed's controls
# A stopping simulator answers what latency faults hold at once (``Simulator.stop``); any
# other request still running after this many seconds is cancelled, not waited for.
STOP_GRACE_SECONDS = 2

# The embedded simulator (the gateway's own, `make run`): pages of at most 100 entries, each
# answer taking 1 ms per entry it carries, as a real upstream takes longer the more it sends.
# A query of a few entries is answered in a few ms (a 100-entry page in 0.1 s), while the
# 1,000 demo entries take ten pages and about a second to walk: a streamed list visibly
# arrives page by page. The standalone simulator and the test bed answer at once, capped at
# 2,000 (DEFAULT_MAX), unless asked otherwise.
EMBEDDED_PAGE_CAP = 100
EMBEDDED_SECONDS_PER_ENTRY = 0.001

_STATUS_MESSAGES = {
    400: "The request was invalid or cannot be otherwise served.",
    401: "The request requires a valid access token set in the Authorization request header.",
    403: "The request is understood, but it has been refused or access is not allowed.",
    404: "The requested resource could not be found.",
    423: "The requested resource is temporarily unavailable.",
    429: "Too many requests have been sent in a given amount of time.",
    500: "Something went wrong on the server.",
    502: "The server received an invalid response from an upstream server.",
    503: "Server is overloaded with requests. Try again later.",
    504: "An upstream server failed to respond on time.",
}


def _tracking_id() -> str:
    return f"ROUTER_{uuid.uuid4()}"


def webex_error(
    status: int, description: str | None = None, error_code: int | None = None
) -> Response:
    """An error as Webex sends it, whatever the status: a JSON body with ``message``,
    ``errors: [{description, errorCode?}]`` and ``trackingId``, and the ``TrackingID`` header.
    ``errorCode`` appears only where Webex has a specific one to give."""
    tracking_id = _tracking_id()
    description = description or _STATUS_MESSAGES.get(status, "Request failed.")
    error: dict[str, Any] = {"description": description}
    if error_code is not None:
        error["errorCode"] = error_code
    body = {"message": description, "errors": [error], "trackingId": tracking_id}
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"TrackingID": tracking_id},
    )


def _fault_response(outcome: FaultOutcome) -> Response:
    assert outcome.status is not None
    if outcome.body == "webex":
        response = webex_error(outcome.status)
        if outcome.retry_after is not None:
            response.headers["Retry-After"] = outcome.retry_after
        return response
    # Unreadable bodies, as a proxy or a broken upstream might send them.
    headers = {"TrackingID": _tracking_id()}
    if outcome.retry_after is not None:
        headers["Retry-After"] = outcome.retry_after
    if outcome.body == "html":
        return Response(
            f"<html><body><h1>{outcome.status} Error</h1></body></html>",
            status_code=outcome.status,
            media_type="text/html",
            headers=headers,
        )
    if outcome.body == "empty":
        return Response(b"", status_code=outcome.status, headers=headers)
    return Response(  # "truncated": JSON cut off mid-way
        b'{"phoneNumbers": [{"phoneNumber": "+1',
        status_code=outcome.status,
        media_type="application/json",
        headers=headers,
    )


class Simulator:
    """The simulator's state: the world, its indexes, the fault plan and a request counter."""

    def __init__(
        self,
        world: SimulatorWorld,
        *,
        page_cap: int = DEFAULT_MAX,
        faults: FaultPlan | None = None,
        churn: float = 0.0,
        seconds_per_entry: float = 0.0,
    ) -> None:
        self.world = world
        self.page_cap = page_cap
        # How long an answer takes per entry it carries (0: at once).
        self.seconds_per_entry = seconds_per_entry
        self.faults = faults or FaultPlan()
        self.indexes = {org_id: OrgIndex(org) for org_id, org in world.orgs.items()}
        self.request_count = 0
        self.change_count = 0
        self.sleep = asyncio.sleep  # replaceable, so tests can see latency without waiting
        # When the serving process begins to stop (``stop``), a request a latency fault holds
        # is let go at once (a 503), not waited out by the drain. One future per held request,
        # made on its own loop: nothing here is bound to a loop (tests run many).
        self.stopped = False
        self._holds: set[asyncio.Future[None]] = set()
        self.churn = Churn(churn)
        self._rng = random.Random(0)  # owners and numbers of changes made on demand

    def _reindex(self, orgs: list[SimulatedOrg]) -> None:
        for org in {org.id: org for org in orgs}.values():
            self.indexes[org.id] = OrgIndex(org)

    def _catch_up_churn(self) -> None:
        touched = []
        for _ in range(self.churn.due()):
            try:
                org, _entry = apply_change(
                    self.world, self.churn.random_change(self.world), self.churn.rng
                )
            except ChangeError:
                continue  # a random pick that cannot apply (a duplicate number): skip it
            touched.append(org)
            self.change_count += 1
        self._reindex(touched)

    async def changes_endpoint(self, request: Request) -> Response:
        """``POST /_simulator/changes``: one change or ``{"changes": [...]}`` (see
        ``simulator.changes``); all are applied or, on the first bad one, none after it."""
        try:
            data = orjson.loads(await request.body())
            changes = data["changes"] if isinstance(data, dict) and "changes" in data else [data]
            if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
                raise ChangeError('expected a change object or {"changes": [objects]}')
            applied, touched = [], []
            for change in changes:
                org, entry = apply_change(self.world, change, self._rng)
                touched.append(org)
                applied.append({"action": change["action"], "entry": entry})
        except (orjson.JSONDecodeError, ChangeError) as exc:
            self._reindex(list(self.world.orgs.values()))
            return Response(
                orjson.dumps({"message": f"change not made: {exc}"}),
                status_code=400,
                media_type="application/json",
            )
        self._reindex(touched)
        self.change_count += len(applied)
        return Response(orjson.dumps({"applied": applied}), media_type="application/json")

    def _grant(self, request: Request) -> TokenGrant | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.world.tokens.get(token.strip())

    async def _held_for(self, seconds: float) -> bool:
        """Waits ``seconds``; False, at once, if the simulator stops meanwhile. Cancelled (a
        caller's timeout through an in-process transport), it leaves nothing waiting."""
        if self.stopped:
            return False
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._holds.add(released)
        sleeping = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait({sleeping, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            self._holds.discard(released)
        return not released.done()

    def stop(self) -> None:
        """Answers every request a latency fault holds, and each one that comes after."""
        self.stopped = True
        for released in self._holds:
            if not released.done():
                released.set_result(None)

    async def list_numbers(self, request: Request) -> Response:
        self.request_count += 1
        self._catch_up_churn()
        outcome = self.faults.next_outcome()
        if outcome.latency and not await self._held_for(outcome.latency):
            return webex_error(503, "The simulator is stopping.")
        if outcome.status is not None and not (outcome.status == 200 and outcome.body == "webex"):
            return _fault_response(outcome)

        grant = self._grant(request)
        if grant is None:
            return webex_error(401)
        if not grant.has_read_scope:
            return webex_error(
                403, "The token lacks the scope spark-admin:telephony_config_read.", 403
            )
        try:
            search = parse_search(request.query_params.multi_items())
        except WebexBadRequest as exc:
            return webex_error(400, exc.description, exc.error_code)
        org_id = search.org_id or grant.own_org_id
        if not grant.may_read(org_id) or org_id not in self.indexes:
            return webex_error(403, f"Not authorized to read numbers of organization {org_id}.")

        page_size = min(search.max, self.page_cap)
        matched = self.indexes[org_id].matching(search, grant.location_ids)
        page = matched[search.start : search.start + page_size]
        if self.seconds_per_entry and page:
            await self.sleep(self.seconds_per_entry * len(page))
        body: dict[str, Any] = {"phoneNumbers": [entry.payload for entry in page]}
        if search.details:
            body["count"] = count_details(matched)
        headers = {"TrackingID": _tracking_id()}
        following = search.start + len(page)
        if page and following < len(matched):
            params = [(k, v) for k, v in request.query_params.multi_items() if k != "start"]
            params.append(("start", str(following)))
            next_url = request.url.replace(query=urlencode(params))
            headers["Link"] = f'<{next_url}>; rel="next"'
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)

    async def faults_endpoint(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.faults.replace([])
        elif request.method == "POST":
            try:
                data = orjson.loads(await request.body())
                rules = [FaultRule.from_json(rule) for rule in data["rules"]]
            except (orjson.JSONDecodeError, KeyError, TypeError, FaultSpecError) as exc:
                return Response(
                    orjson.dumps({"message": f'expected {{"rules": [...]}}: {exc}'}),
                    status_code=400,
                    media_type="application/json",
                )
            self.faults.replace(rules)
        return Response(
            orjson.dumps({"rules": [rule.to_json() for rule in self.faults.rules]}),
            media_type="application/json",
        )

    async def stats(self, request: Request) -> Response:
        return Response(
            orjson.dumps(
                {
                    "requests": self.request_count,
                    "changes": self.change_count,
                    "churn": self.churn.rate,
                }
            ),
            media_type="application/json",
        )

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")


def create_simulator_app(
    world: SimulatorWorld,
    *,
    page_cap: int = DEFAULT_MAX,
    faults: FaultPlan | None = None,
    churn: float = 0.0,
    seconds_per_entry: float = 0.0,
) -> Starlette:
    """A Starlette app serving ``world``; ``app.state.simulator`` exposes it to tests.
    ``churn``: random changes per second to the demo org (``simulator --churn``);
    ``seconds_per_entry``: how long an answer takes per entry it carries."""
    simulator = Simulator(
        world, page_cap=page_cap, faults=faults, churn=churn, seconds_per_entry=seconds_per_entry
    )
    app = Starlette(
        routes=[
            Route(NUMBERS_PATH, simulator.list_numbers, methods=["GET"]),
            *_control_routes(simulator, CONTROL_PREFIX),
            Route("/healthz", simulator.healthz, methods=["GET"]),
        ]
    )
    app.state.simulator = simulator
    return app


def create_embedded_simulator_app(
    world: SimulatorWorld,
    *,
    churn: float = 0.0,
    seconds_per_entry: float = EMBEDDED_SECONDS_PER_ENTRY,
) -> Starlette:
    """The simulator the gateway serves when no upstream is configured: ``world`` in pages of
    ``EMBEDDED_PAGE_CAP``, paced by ``seconds_per_entry`` (GATEWAY_SIMULATOR_PACE), with
    ``churn``."""
    return create_simulator_app(
        world, page_cap=EMBEDDED_PAGE_CAP, churn=churn, seconds_per_entry=seconds_per_entry
    )


def _control_routes(simulator: Simulator, prefix: str) -> list[Route]:
    return [
        Route(prefix + "/faults", simulator.faults_endpoint, methods=["GET", "POST", "DELETE"]),
        Route(prefix + "/stats", simulator.stats, methods=["GET"]),
        Route(prefix + "/changes", simulator.changes_endpoint, methods=["POST"]),
    ]


def create_simulator_control_app(simulator_app: Starlette) -> Starlette:
    """The control routes of ``simulator_app`` (``/faults``, ``/stats``, ``/changes``) alone,
    to mount under ``CONTROL_PREFIX``: the gateway serving its embedded simulator exposes
    them, so a person trying the change feed offline can make changes and faults."""
    simulator: Simulator = simulator_app.state.simulator
    control = Starlette(routes=_control_routes(simulator, ""))
    control.state.simulator = simulator
    return control


def serve_simulator(
    app: Starlette,
    world: SimulatorWorld,
    *,
    host: str,
    port: int,
    log_config: dict[str, Any] | None = None,
) -> int:
    """Serve ``app`` until a signal stops it, and say where once the socket is bound: one
    ``simulator_listening`` log line with the ``/v1`` URL, as ``serve`` logs
    ``gateway_listening`` (with ``--port 0`` the port exists only then). ``log_config`` is
    uvicorn's (the caller's logging setup: the CLI passes the gateway's JSON one; None keeps
    uvicorn's own)."""
    import structlog
    import uvicorn

    simulator: Simulator = app.state.simulator

    class AnnouncingServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            simulator.stop()  # what latency faults hold is answered, not waited for
            await super().shutdown(sockets=sockets)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if not self.started:
                return
            bound_host, bound_port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            structlog.get_logger("gateway.simulator").info(
                "simulator_listening",
                url=f"http://{shown}:{bound_port}/v1",
                entries=sum(len(org.entries) for org in world.orgs.values()),
                orgs=len(world.orgs),
            )

    options: dict[str, Any] = {"log_config": log_config} if log_config is not None else {}
    server = AnnouncingServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=STOP_GRACE_SECONDS,
            **options,
        )
    )
    server.run()
    return 0 if server.started else 1
