"""``GET /export/phone-numbers.csv`` and ``GET /export/phone-numbers.ndjson``: a caller's whole
filtered list as one download, walked from the upstream page by page while the client reads.

Before any row, in this order, each refusal a small JSON error body with its contract code
(``refusals``): a method other than GET (405); the query parameters (``export_parameters``:
400 ``BAD_USER_INPUT``); the caller's ``Authorization``, as for ``/graphql`` (``Callers``: 401
``UNAUTHENTICATED``); the filter's rules (``numbers_query``, 400); a stream slot
(``OpenStreams``: ``GATEWAY_MAX_STREAMS_PER_CALLER`` per caller, 429); then the list's first
upstream page, whose failure answers with its code's status (the upstream's 401 as 401, 403 as
403, a rate limit as 429 with ``Retry-After``, a timeout 504, an unavailable upstream 502), and
whose count may say the list is longer than an export holds (``GATEWAY_MAX_STREAM_ITEMS``, as
a streamed window: 400).

Then ``200`` with ``Content-Disposition: attachment`` (a filename naming the location or the
org, and the day), and each page's rows written as soon as the page arrives (``export_rows``:
the columns, cells and lines). The walk is the data layer's uncached one
(``CallerNumbers.whole_list``: never the page cache, each page its own upstream exchange under
the caller's fair slots): the next page is asked for only once the previous page's rows are
written, and the ASGI server's ``send`` waits while the client does not read, so a slow
client holds the walk, and the gateway holds one page at a time, whatever the list's length.
Exports are sent uncompressed (``Content-Encoding: identity``), like every streamed answer, so
the rows leave as they are written.

Ending early, so that no client can take what it got for the whole list:

- NDJSON ends with its trailer line either way: ``"complete": true`` and the row count, or
  ``"complete": false`` with the contract error that ended the walk (the upstream failed, the
  caller's token was revoked, a page's deadline passed, the gateway shuts down).
- CSV has no place to say so, so its body is cut off: ``ExportAborted`` is raised after the
  last whole row, and the ASGI server closes the connection without the chunked body's last
  chunk (uvicorn: "Exception in ASGI application", then the socket closed). A client sees a
  transfer that did not complete: httpx raises ``RemoteProtocolError`` (incomplete chunked
  read), curl exits 18, a browser's ``fetch`` body rejects. An NDJSON trailer that cannot be
  written in time at shutdown ends its body the same way.

A client that leaves ends the walk at once (no further upstream call). Every export is logged
like an operation (``operationName`` ``export:csv`` or ``export:ndjson``, ``operationType``
``export``, the ``stream`` field with its pages, rows and how it ended) and counted, in the
operation metrics and in ``gateway_exports_total`` by format and end.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from collections.abc import AsyncGenerator, Awaitable, Mapping
from contextlib import aclosing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import quote

import structlog
from starlette.datastructures import QueryParams
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.data.source import NumbersSource
from gateway.domain.query import UpstreamPage
from gateway.domain.reader import read_total
from gateway.errors import INTERNAL_ERROR_MESSAGE, BadUserInput, ErrorCode, GatewayError
from gateway.execution.operation_facts import record_operation
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import RequestFacts, current_facts
from gateway.transports.asgi import send_refusal
from gateway.transports.export_parameters import ExportAsk, read_export_parameters
from gateway.transports.export_rows import CsvFormat, ExportFormat, NdjsonFormat
from gateway.transports.refusals import Refusal
from gateway.transports.request_head import request_head
from gateway.transports.routes import EXPORT_CSV_PATH, EXPORT_NDJSON_PATH, EXPORT_OPERATIONS
from gateway.transports.stream_limits import RETRY_AFTER_SECONDS, OpenStreams
from gateway.transports.stream_styles import CLOSE_WRITE_SECONDS, SHUTDOWN_ERROR

OPERATION_TYPE: Final = "export"
# The status a refusal before any row answers with, by its contract code.
STATUS_OF_CODE: Final = {
    ErrorCode.BAD_USER_INPUT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
}
FILENAME_PREFIX: Final = "phone-numbers"
OWN_ORG: Final = "organization"  # the filename's subject when no orgId names the org
_SUBJECT_MAX: Final = 100  # characters of a location's name or an id (Webex ids: about 80)
_UNSAFE_IN_NAME: Final = re.compile(r"[\W_]+")
_UNSAFE_IN_ASCII_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")
_SHUTTING_DOWN: Final = Refusal(
    429,
    "The gateway is shutting down; send the request again.",
    ErrorCode.RATE_LIMITED,
    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    extensions={"retryAfter": RETRY_AFTER_SECONDS},
)
_NOT_GET: Final = Refusal(405, "An export is read with GET.", headers={"Allow": "GET"})
_NARROWER: Final = (
    "Narrow the filter, for instance to one location (locationId) or one owner type (ownerType)."
)

log = structlog.get_logger("gateway.export")
T = TypeVar("T")


class ExportAborted(Exception):
    """Raised, after the last whole row, to cut off an export's body that cannot end whole: the
    ASGI server closes the connection without the body's end, so the client sees a transfer
    that did not complete rather than a shorter list."""


class _Ended(Exception):
    """The client left (``disconnected``) or the gateway is shutting down (``shutdown``)."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class _Watch:
    """The client leaving and the gateway closing, raced against each wait of one export."""

    def __init__(self, receive: Receive, closing: asyncio.Event) -> None:
        self.disconnected: asyncio.Future[Any] = asyncio.ensure_future(_disconnect(receive))
        self.closing: asyncio.Future[Any] = asyncio.ensure_future(closing.wait())

    async def until(self, step: Awaitable[T]) -> T:
        """``step``'s result, or ``_Ended`` once the client leaves or the gateway closes first
        (``step`` is then cancelled: a page not yet fetched is never asked for)."""
        task: asyncio.Future[T] = asyncio.ensure_future(step)
        racing: set[asyncio.Future[Any]] = {task, self.disconnected, self.closing}
        done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task  # its own failure does not matter any more: the export has ended
        raise _Ended("disconnected" if self.disconnected in done else "shutdown")

    def close(self) -> None:
        self.disconnected.cancel()
        self.closing.cancel()


async def _disconnect(receive: Receive) -> None:
    """Returns when the client goes away (a GET has no body to read first)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


@dataclass(slots=True)
class _Progress:
    rows: int = 0
    pages: int = 0
    ended: str = "complete"  # complete, failed, disconnected or shutdown


class InventoryExport:
    """The ASGI app of one export route (``fmt``: CSV or NDJSON). Built once by ``create_app``;
    the numbers source and the open streams are the lifespan's, in each request's state."""

    def __init__(
        self,
        fmt: ExportFormat,
        *,
        operation_name: str,
        metrics: GatewayMetrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.format = fmt
        self.operation_name = operation_name  # ``export:csv``: the route's (``routes``)
        self.metrics = metrics
        self.clock = clock  # wall time: the day in the filename

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        facts = current_facts()
        if scope["method"] != "GET":
            await self._refuse(send, facts, _NOT_GET, executed=False)
            return
        state = scope["state"]
        numbers: NumbersSource = state["numbers"]
        streams: OpenStreams = state["streams"]
        authorization = request_head(scope).get(b"authorization")
        try:
            ask = read_export_parameters(QueryParams(scope["query_string"]).multi_items())
            caller = numbers.callers.identify(
                None if authorization is None else authorization.decode("latin-1")
            )
            walk = numbers.for_caller(None, caller=caller).whole_list(
                ask.org_id, ask.filter, ask.order
            )
            limit = numbers.max_list_items
        except GatewayError as refused:
            await self._refuse(send, facts, _refusal_of(refused), executed=False)
            return
        try:
            streams.acquire(caller.identity)
        except Refusal as refusal:
            await walk.aclose()  # never started: no upstream call was made
            await self._refuse(send, facts, refusal, executed=False)
            return
        try:
            async with aclosing(walk):
                watch = _Watch(receive, streams.closing)
                try:
                    await self._download(send, watch, walk, ask, limit, facts)
                finally:
                    watch.close()
        finally:
            streams.release(caller.identity)

    async def _download(
        self,
        send: Send,
        watch: _Watch,
        walk: AsyncGenerator[UpstreamPage, None],
        ask: ExportAsk,
        limit: int,
        facts: RequestFacts | None,
    ) -> None:
        """The first page, on which the answer's status depends, then the rows, at most
        ``limit`` of them (``GATEWAY_MAX_STREAM_ITEMS``: a longer list is refused before its
        first row when its count says so, and ended when it grows past it). One method,
        so that one name holds the page being written (a page held by a second one, such as
        the first page passed on, would stay alive for the whole walk)."""
        page: UpstreamPage | None
        try:
            page = await watch.until(anext(walk))
            total = read_total(page.count)  # an upstream's impossible count is its fault
        except _Ended as ended:
            if ended.how == "shutdown":
                await self._refuse(send, facts, _SHUTTING_DOWN, executed=True)
            return  # a client that left before the first row is answered nothing
        except GatewayError as failure:
            await self._refuse(send, facts, _refusal_of(failure), executed=True)
            return
        except Exception:
            log.exception("export_failed", operationName=self.operation_name)
            refusal = Refusal(500, INTERNAL_ERROR_MESSAGE, ErrorCode.INTERNAL_SERVER_ERROR)
            await self._refuse(send, facts, refusal, executed=True)
            return
        if total is not None and total > limit:
            too_long = BadUserInput(
                f"The filter matches {total} entries; an export holds at most {limit} "
                f"(GATEWAY_MAX_STREAM_ITEMS). {_NARROWER}"
            )
            await self._refuse(send, facts, _refusal_of(too_long), executed=True)
            return
        fmt = self.format
        progress = _Progress()
        error: dict[str, Any] | None = None
        started = time.perf_counter()
        try:
            await watch.until(send(self._start(ask, page)))
            written = fmt.opening()
            while page is not None:
                if progress.rows + len(page.items) > limit:
                    raise BadUserInput(
                        f"The list grew past {limit} entries while it was exported, the most "
                        f"an export holds (GATEWAY_MAX_STREAM_ITEMS). {_NARROWER}"
                    )
                written += fmt.page(page.items)
                progress.rows += len(page.items)
                progress.pages += 1
                more = page.has_more
                page = None  # its items are let go before the next page is fetched
                await watch.until(_body(send, written, more=True))
                written = b""
                if more:
                    page = await watch.until(anext(walk))
            await watch.until(_body(send, fmt.complete(progress.rows), more=False))
        except _Ended as ended:
            progress.ended = ended.how
            if ended.how == "shutdown":
                error = SHUTDOWN_ERROR
        except GatewayError as failure:
            progress.ended = "failed"
            error = {"message": failure.message, "extensions": failure.extensions}
        except Exception:
            log.exception("export_failed", operationName=self.operation_name)
            progress.ended = "failed"
            error = {
                "message": INTERNAL_ERROR_MESSAGE,
                "extensions": {"code": ErrorCode.INTERNAL_SERVER_ERROR.value},
            }
        finally:
            self._record(facts, progress, error, time.perf_counter() - started)
        if error is not None:
            await self._end_early(send, watch, progress, error)

    async def _end_early(
        self, send: Send, watch: _Watch, progress: _Progress, error: Mapping[str, Any]
    ) -> None:
        """NDJSON: the trailer says why (at shutdown, within ``CLOSE_WRITE_SECONDS``). CSV, or
        a trailer that cannot be written: the body is cut off."""
        trailer = self.format.ended_early(progress.rows, error)
        if trailer is not None:
            ending = _body(send, trailer, more=False)
            try:
                if progress.ended == "shutdown":
                    async with asyncio.timeout(CLOSE_WRITE_SECONDS):
                        await ending
                else:
                    await watch.until(ending)
                return
            except _Ended as ended:
                if ended.how == "disconnected":
                    return  # nobody left to tell
            except TimeoutError:
                pass  # a client that does not read at shutdown: cut off below
        code = error.get("extensions", {}).get("code")
        raise ExportAborted(
            f"{self.operation_name} ended early ({code}) after {progress.rows} rows: its body "
            "is cut off so that no client takes it for the whole list"
        )

    def _start(self, ask: ExportAsk, first: UpstreamPage) -> Message:
        day = datetime.fromtimestamp(self.clock.wall(), UTC).date().isoformat()
        return {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", self.format.media_type.encode()),
                (b"content-disposition", attachment(self.format.name, ask, first, day).encode()),
                (b"cache-control", b"no-store"),
                (b"content-encoding", b"identity"),
                (b"x-accel-buffering", b"no"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }

    async def _refuse(
        self, send: Send, facts: RequestFacts | None, refusal: Refusal, *, executed: bool
    ) -> None:
        if facts is not None:
            record_operation(
                facts,
                operation_name=self.operation_name,
                operation_type=OPERATION_TYPE,
                errors=[refusal.code.value],
                executed=executed,
            )
        await send_refusal(send, refusal)

    def _record(
        self,
        facts: RequestFacts | None,
        progress: _Progress,
        error: Mapping[str, Any] | None,
        elapsed: float,
    ) -> None:
        self.metrics.exports.labels(format=self.format.name, ended=progress.ended).inc()
        if facts is None:
            return
        code = None if error is None else error.get("extensions", {}).get("code")
        record_operation(
            facts,
            operation_name=self.operation_name,
            operation_type=OPERATION_TYPE,
            errors=[] if code is None else [str(code)],
            executed=True,
        )
        facts.stream = {
            "transport": self.format.name,
            "payloads": progress.pages,
            "items": progress.rows,
            "ended": progress.ended,
            "streamMs": round(elapsed * 1000, 1),
        }


def export_routes(*, metrics: GatewayMetrics, clock: Clock = SYSTEM_CLOCK) -> list[Route]:
    """The two export routes (every method reaches the app, which answers 405 to all but GET:
    Starlette would otherwise run a HEAD as a whole export)."""
    formats: list[tuple[str, ExportFormat]] = [
        (EXPORT_CSV_PATH, CsvFormat()),
        (EXPORT_NDJSON_PATH, NdjsonFormat()),
    ]
    return [
        Route(
            path,
            InventoryExport(
                fmt, operation_name=EXPORT_OPERATIONS[path], metrics=metrics, clock=clock
            ),
        )
        for path, fmt in formats
    ]


def _refusal_of(error: GatewayError) -> Refusal:
    """A refusal before any row: the error's message and extensions, with the status its code
    answers with (``Retry-After`` for a rate limit, the scheme to use for a 401)."""
    extensions = dict(error.extensions)
    extensions.pop("code", None)
    headers: dict[str, str] = {}
    if error.code is ErrorCode.RATE_LIMITED:
        headers["Retry-After"] = str(max(1, int(extensions.get("retryAfter", 1))))
    if error.code is ErrorCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return Refusal(
        STATUS_OF_CODE.get(error.code, 500),
        error.message
        if error.code is not ErrorCode.INTERNAL_SERVER_ERROR
        else INTERNAL_ERROR_MESSAGE,
        error.code,
        headers=headers,
        extensions=extensions,
    )


def attachment(extension: str, ask: ExportAsk, first: UpstreamPage, day: str) -> str:
    """``Content-Disposition``: an attachment named for the location (its name as the first
    entry carries it, else its id) or the org (its id, or ``organization`` for the caller's
    own) and the day, ``phone-numbers-<subject>-<day>.<extension>``; as ASCII in ``filename``
    and in UTF-8 in ``filename*`` (RFC 6266). The name is the upstream's, so only letters,
    digits, ``.``, ``_`` and ``-`` of it are kept."""
    subject = _subject(ask, first)
    name = f"{FILENAME_PREFIX}-{subject}-{day}.{extension}"
    fallback = _UNSAFE_IN_ASCII_NAME.sub(
        "-", unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _subject(ask: ExportAsk, first: UpstreamPage) -> str:
    flt = ask.filter
    location_id = flt.location_id if flt is not None else None
    if flt is not None and flt.location_ids is not None and len(flt.location_ids) == 1:
        location_id = flt.location_ids[0]
    if location_id is not None:
        for item in first.items[:1]:
            location = item.get("location")
            if isinstance(location, dict) and location.get("id") == location_id:
                named = _slug(location.get("name"))
                if named:
                    return named
        return _slug(location_id) or "location"
    if flt is not None and flt.location_ids:
        # Several locations' merged list: no one location names it.
        return f"{len(flt.location_ids)}-locations"
    if ask.org_id is not None:
        return "org-" + (_slug(ask.org_id) or "unnamed")
    return OWN_ORG


def _slug(text: object) -> str:
    if not isinstance(text, str):
        return ""
    kept = _UNSAFE_IN_NAME.sub("-", text).strip("-._")
    return re.sub(r"-{2,}", "-", kept)[:_SUBJECT_MAX].strip("-._")


async def _body(send: Send, chunk: bytes, *, more: bool) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": more})
