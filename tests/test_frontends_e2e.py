"""Real frontends against a live gateway: Apollo Client, urql, the graphql-http audit, a page
on another origin in headless Chromium, and compression over the wire.

One ``numbers-gateway serve`` process per module, on a free 127.0.0.1 port, with the embedded
simulator (development), none of the developer's ``GATEWAY_*`` settings, and
``GATEWAY_CORS_ORIGINS`` naming exactly one of two page servers started beforehand (the other
is the "third origin" the browser must be refused from).

- Apollo Client (``createPersistedQueryLink``) and urql (``persistedExchange``), each with POST
  and GET for hashed queries (``tests/js/*-client.mjs``): the first request of an APQ pair
  sends only the hash and gets ``PERSISTED_QUERY_NOT_FOUND``, the retry carries the document,
  the next run sends only the hash and succeeds; errors reach the client with their codes.
  CSRF prevention: Apollo Client sends ``Content-Type: application/json`` even on GET, so it
  needs no extra header; urql sends no content type on GET and needs
  ``Apollo-Require-Preflight`` (without it: refused, ``BAD_USER_INPUT``).
- The ``graphql-http`` server audit: 0 errors, 0 warnings (with and without the preflight
  header; without it only the MAY-level GETs that CSRF prevention blocks are notices).
- Browser CORS (``@pytest.mark.browser``): ``tests/frontends/cors-page.html`` POSTs with
  ``Authorization`` and JSON, so the browser preflights. From the allowed origin the data
  reaches the page; from the other origin ``fetch`` rejects with a TypeError and the gateway
  sees the refused preflight and no POST. Non-loopback traffic is sent to a recording
  black-hole proxy rather than blocked with ``page.route``: Playwright answers every CORS
  preflight itself (204, any origin) while request interception is on, which would hide the
  gateway's own CORS answers.
- Compression: a 2,000-item page with ``Accept-Encoding: br`` (and gzip) is encoded and much
  smaller on the wire than identity; plus GraphQL-over-HTTP negotiation and ETag/304 smoke.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.node_packages import require_node, run_node_json
from tests.processes import ServedProcess, gateway_process

# Node clients, npm installs on first use, a gateway process and a browser: e2e.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FRONTENDS = Path(__file__).resolve().parent / "frontends"
CORS_PAGE = "cors-page.html"
SIMULATOR_SIZE = 2500  # enough entries for a full 2,000-item page
PREFLIGHT = {"apollo-require-preflight": "true"}
CHROMIUM_ARGS = [  # as tests/test_graphiql_offline.py launches it
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
BIG_PAGE = (
    "query BigPage { phoneNumbers(page: {first: 2000}) { nodes { phoneNumber extension state "
    "phoneNumberType mainNumber tollFreeNumber isServiceNumber location { id name } "
    "owner { id type firstName lastName } } totalCount } }"
)


# --- local servers: the gateway, two page origins, a black-hole proxy -------------------------


@dataclass(frozen=True)
class LiveGateway:
    process: ServedProcess  # its log: one JSON line per HTTP request

    @property
    def origin(self) -> str:
        return self.process.origin

    @property
    def graphql(self) -> str:
        return self.process.url

    def log_size(self) -> int:
        """Lines logged so far: a mark for ``http_requests(since=...)``."""
        return len(self.process.lines)

    def http_requests(self, since: int = 0) -> list[tuple[str, str, int]]:
        """(method, route, status) of each request logged after line ``since``."""
        return [
            (entry["method"], entry["route"], entry["status"])
            for entry in self.process.events("http_request", since)
        ]

    def wait_for_request(
        self, since: int, wanted: Callable[[tuple[str, str, int]], bool], timeout: float = 5.0
    ) -> list[tuple[str, str, int]]:
        """The requests logged since ``since``, once one of them is ``wanted`` (the line is
        written just after the response, so it may trail the client by a moment); after
        ``timeout``, whatever was logged, for the caller to assert on."""
        deadline = time.monotonic() + timeout
        while True:
            logged = self.http_requests(since)
            if any(wanted(entry) for entry in logged) or time.monotonic() > deadline:
                return logged
            time.sleep(0.05)


class _PageHandler(BaseHTTPRequestHandler):
    """Serves ``tests/frontends/cors-page.html``; nothing else."""

    def do_GET(self) -> None:
        if urlsplit(self.path).path != f"/{CORS_PAGE}":
            self.send_error(404)
            return
        body = (FRONTENDS / CORS_PAGE).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BlackHoleHandler(BaseHTTPRequestHandler):
    """A proxy that forwards nothing: records each request line and hangs up unanswered, so
    the browser's request fails as if aborted."""

    def _refuse(self) -> None:
        self.server.requests.append(self.requestline)  # type: ignore[attr-defined]
        self.close_connection = True

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_OPTIONS = do_CONNECT = _refuse  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[tuple[str, list[str]]]:
    """A threaded ``http.server`` on a free 127.0.0.1 port: (origin, requests it recorded)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    recorded: list[str] = []
    server.requests = recorded  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorded
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@dataclass(frozen=True)
class Pages:
    allowed: str  # an origin in GATEWAY_CORS_ORIGINS
    refused: str  # a third origin, not in it


@pytest.fixture(scope="module")
def pages() -> Iterator[Pages]:
    with _http_server(_PageHandler) as (allowed, _), _http_server(_PageHandler) as (refused, _):
        yield Pages(allowed=allowed, refused=refused)


@pytest.fixture(scope="module")
def gateway(pages: Pages) -> Iterator[LiveGateway]:
    env = {
        "GATEWAY_ENV": "development",
        "GATEWAY_CORS_ORIGINS": pages.allowed,
        "GATEWAY_SIMULATOR_SIZE": str(SIMULATOR_SIZE),
        "GATEWAY_LOG_LEVEL": "info",
        "GATEWAY_BATCH_MAX": "5",  # Apollo Client's BatchHttpLink (test_apollo_batch_http_link)
    }
    with gateway_process(env=env) as process:
        yield LiveGateway(process)


@pytest.fixture
def http(gateway: LiveGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.origin, trust_env=False, timeout=30) as client:
        yield client


# --- Apollo Client and urql in Node -----------------------------------------------------------

CLIENTS = {"apollo": "apollo-client.mjs", "urql": "urql-client.mjs"}


def _run_client(
    gateway: LiveGateway,
    client: str,
    query: str,
    *,
    mode: str = "post",
    headers: dict[str, str] | None = None,
    repeat: int = 2,
) -> dict[str, Any]:
    require_node()
    args = ["--url", gateway.graphql, "--query", query, "--mode", mode, "--repeat", str(repeat)]
    if headers:
        args += ["--headers", json.dumps(headers)]
    outcome: dict[str, Any] = run_node_json(CLIENTS[client], *args, timeout=60)
    return outcome


def _sent(request: dict[str, Any]) -> dict[str, Any]:
    """The GraphQL parameters of a recorded request: the JSON body, or the GET query string
    (``variables``/``extensions`` decoded)."""
    if request["method"] == "POST":
        body: dict[str, Any] = request["body"]
        return body
    params = {k: v[0] for k, v in parse_qs(urlsplit(request["url"]).query).items()}
    for name in ("variables", "extensions"):
        if name in params:
            params[name] = json.loads(params[name])
    return params


def _hash_of(request: dict[str, Any]) -> str:
    digest: str = _sent(request)["extensions"]["persistedQuery"]["sha256Hash"]
    return digest


def _codes(response: Any) -> list[str]:
    errors = response.get("errors", []) if isinstance(response, dict) else []
    return [error.get("extensions", {}).get("code") for error in errors]


def _show(outcome: dict[str, Any]) -> str:
    return json.dumps(outcome, indent=1)[:6000]


@pytest.mark.parametrize("mode", ["post", "get"])
@pytest.mark.parametrize("client", ["apollo", "urql"])
def test_client_runs_an_apq_pair_then_sends_only_the_hash(
    gateway: LiveGateway, client: str, mode: str
) -> None:
    name = f"{client.capitalize()}{mode.capitalize()}Numbers"  # a cold hash per case
    query = (
        f"query {name} {{ phoneNumbers(page: {{first: 3}}) {{ nodes {{ phoneNumber extension }} "
        "totalCount } numberCounts { total } }"
    )
    headers = PREFLIGHT if mode == "get" else None  # what urql's GETs need (see the docstring)
    outcome = _run_client(gateway, client, query, mode=mode, headers=headers)
    results, requests = outcome["results"], outcome["requests"]
    shown = _show(outcome)

    for result in results:
        assert result["networkError"] is None, shown
        assert result["errors"] == [], shown
        assert len(result["data"]["phoneNumbers"]["nodes"]) == 3, shown
        assert result["data"]["phoneNumbers"]["totalCount"] == SIMULATOR_SIZE, shown
        assert result["data"]["numberCounts"]["total"] == SIMULATOR_SIZE, shown
    assert results[0]["data"] == results[1]["data"]

    assert len(requests) == 3, shown
    cold, retry, warm = requests
    hashed_method = "GET" if mode == "get" else "POST"
    digest = _hash_of(cold)
    # 1. only the hash; the gateway does not know it yet
    assert cold["method"] == hashed_method, shown
    assert "query" not in _sent(cold), shown
    assert cold["status"] == 200, shown
    assert _codes(cold["response"]) == ["PERSISTED_QUERY_NOT_FOUND"], shown
    assert "data" not in cold["response"], shown
    # 2. the retry carries the document, whose SHA-256 is the hash (Apollo retries by POST)
    assert retry["method"] == ("GET" if client == "urql" and mode == "get" else "POST"), shown
    sent = _sent(retry)
    assert hashlib.sha256(sent["query"].encode()).hexdigest() == digest, shown
    assert _hash_of(retry) == digest
    assert name in sent["query"]
    assert retry["status"] == 200, shown
    assert _codes(retry["response"]) == [], shown
    # 3. the next run sends only the hash again, and the gateway runs it
    assert warm["method"] == hashed_method, shown
    assert "query" not in _sent(warm), shown
    assert _hash_of(warm) == digest
    assert warm["status"] == 200, shown
    assert warm["response"]["data"] == retry["response"]["data"], shown
    if mode == "get":  # the whole operation is in the URL: no body at all
        assert cold["body"] is None
        assert warm["body"] is None


def test_apollo_batch_http_link_sends_one_array_and_gets_answers_in_order(
    gateway: LiveGateway,
) -> None:
    """Apollo Client's BatchHttpLink: three runs at once travel as one POST of a JSON array,
    each gets its own answer, and the batch's equal asks cost one upstream call."""
    require_node()
    query = (
        "query BatchedOwners { phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 4}) "
        "{ nodes { phoneNumber owner { id } } totalCount } }"
    )
    mark = gateway.log_size()
    outcome: dict[str, Any] = run_node_json(
        CLIENTS["apollo"],
        *("--url", gateway.graphql, "--query", query, "--apq", "off", "--repeat", "3"),
        "--batch",
        timeout=60,
    )
    results, requests = outcome["results"], outcome["requests"]
    shown = _show(outcome)
    assert len(requests) == 1, shown
    [request] = requests
    assert request["method"] == "POST", shown
    assert [operation["operationName"] for operation in request["body"]] == ["BatchedOwners"] * 3
    assert request["status"] == 200, shown
    assert isinstance(request["response"], list), shown
    assert len(request["response"]) == 3, shown
    for result in results:
        assert result["networkError"] is None, shown
        assert result["errors"] == [], shown
        assert len(result["data"]["phoneNumbers"]["nodes"]) == 4, shown
    assert results[0]["data"] == results[1]["data"] == results[2]["data"]
    gateway.wait_for_request(mark, lambda request: request[1] == "/graphql")
    [line] = [
        entry
        for entry in gateway.process.events("http_request", mark)
        if entry["route"] == "/graphql"
    ]
    assert [entry["operationName"] for entry in line["batch"]] == ["BatchedOwners"] * 3
    assert line["upstreamCalls"] <= 1  # one call shared by the batch (0: a warm cache)


ERROR_CASES = {
    # a field-level argument error: the operation runs, the field is null
    "first-zero": (
        "query {name} {{ phoneNumbers(page: {{first: 0}}) {{ totalCount }} }}",
        None,
        "BAD_USER_INPUT",
    ),
    # the simulator's 403 for a token without the read scope, on both root fields
    "no-scope": (
        "query {name} {{ phoneNumbers(page: {{first: 1}}) {{ totalCount }} "
        "numberCounts {{ total }} }}",
        "Bearer demo-no-scope",
        "FORBIDDEN",
    ),
    # fails validation, before execution (Apollo's code)
    "invalid": ("query {name} {{ numberCounts {{ nope }} }}", None, "GRAPHQL_VALIDATION_FAILED"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
@pytest.mark.parametrize("client", ["apollo", "urql"])
def test_client_receives_errors_with_their_codes(
    gateway: LiveGateway, client: str, case: str
) -> None:
    template, authorization, code = ERROR_CASES[case]
    name = f"{client.capitalize()}{case.title().replace('-', '')}Error"
    query = template.format(name=name)
    headers = {"authorization": authorization} if authorization else None
    outcome = _run_client(gateway, client, query, headers=headers, repeat=1)
    shown = _show(outcome)
    [result] = outcome["results"]
    assert result["networkError"] is None, shown
    assert result["errors"], shown
    assert {error["code"] for error in result["errors"]} == {code}, shown
    last = outcome["requests"][-1]
    if case == "invalid":
        # Apollo Client accepts */*: legacy JSON, 200. urql prefers
        # application/graphql-response+json: 400, and still no data entry.
        assert last["status"] == (200 if client == "apollo" else 400), shown
        assert "data" not in last["response"], shown
        assert result["data"] is None, shown
    else:
        assert last["status"] == 200, shown
        assert all(value is None for value in result["data"].values()), shown
    if case == "no-scope":
        for error in result["errors"]:
            assert error["extensions"]["upstreamStatus"] == 403, shown
            assert error["extensions"]["trackingId"], shown


def test_csrf_apollo_get_needs_no_header_but_urql_get_does(gateway: LiveGateway) -> None:
    """What the README tells frontend developers: Apollo Client's GETs carry
    ``Content-Type: application/json`` (a preflighted type), urql's carry no content type and
    are refused unless they add ``Apollo-Require-Preflight``."""
    query = "query CsrfApolloGet { numberCounts { total } }"
    apollo = _run_client(gateway, "apollo", query, mode="get")
    shown = _show(apollo)
    assert [r["errors"] for r in apollo["results"]] == [[], []], shown
    gets = [r for r in apollo["requests"] if r["method"] == "GET"]
    assert len(gets) == 2, shown
    assert all(r["headers"].get("content-type") == "application/json" for r in gets), shown
    assert not any("apollo-require-preflight" in r["headers"] for r in gets), shown

    urql = _run_client(gateway, "urql", "query CsrfUrqlGet { numberCounts { total } }", mode="get")
    shown = _show(urql)
    for result in urql["results"]:
        assert result["data"] is None, shown
        assert [e["code"] for e in result["errors"]] == ["BAD_USER_INPUT"], shown
        assert "Cross-Site Request Forgery" in result["errors"][0]["message"], shown
    for request in urql["requests"]:
        assert request["method"] == "GET", shown
        assert "content-type" not in request["headers"], shown
        assert request["status"] == 400, shown


# --- the graphql-http audit -------------------------------------------------------------------


def _audit(gateway: LiveGateway, headers: dict[str, str] | None) -> dict[str, Any]:
    require_node()
    args = ["--url", gateway.graphql]
    if headers is not None:
        args += ["--headers", json.dumps(headers)]
    outcome: dict[str, Any] = run_node_json("graphql-http-audit.mjs", *args, timeout=120)
    return outcome


def _not_ok(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    not_ok = [r for r in outcome["results"] if r["status"] != "ok"]
    for result in not_ok:  # shown by pytest when the test fails
        print(f"{result['status']:6} {result['id']} {result['name']}\n       {result['reason']}")
    return not_ok


def test_graphql_http_audit_has_no_errors_or_warnings(gateway: LiveGateway) -> None:
    """As real clients send GETs, with ``Apollo-Require-Preflight`` (today all 61 pass)."""
    outcome = _audit(gateway, PREFLIGHT)
    _not_ok(outcome)
    counts = {key: outcome[key] for key in ("ok", "notice", "warn", "error")}
    assert outcome["error"] == 0, counts
    assert outcome["warn"] == 0, counts
    assert len(outcome["results"]) > 50, counts  # the suite really ran


def test_graphql_http_audit_without_csrf_header_only_blocked_gets_are_notices(
    gateway: LiveGateway,
) -> None:
    """Without the header, CSRF prevention refuses the audit's GETs that have no content type
    (as Apollo Router does); those audits are MAY-level, so they are notices, never more."""
    outcome = _audit(gateway, None)
    not_ok = _not_ok(outcome)
    assert outcome["error"] == 0
    assert outcome["warn"] == 0
    for result in not_ok:
        assert result["status"] == "notice", result
        assert result["name"].startswith("MAY"), result
        assert "GET" in result["name"], result


# --- a page on another origin, in Chromium ----------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian) to run the browser test")
    return found


@dataclass
class PageRun:
    page: Any  # the live playwright Page, for more checks while the browser is open
    result: dict[str, Any]  # what the page's script wrote into #result
    state: str  # "done" or "failed"
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page requested
    blocked: list[str] = field(default_factory=list)  # what reached the black-hole proxy


@contextlib.contextmanager
def _cors_page(page_origin: str, gateway: LiveGateway) -> Iterator[PageRun]:
    """Open the CORS page on ``page_origin`` in a fresh headless Chromium and wait for its
    fetch to settle. Every non-loopback request goes to a proxy that forwards nothing. Any
    failure inside the ``with`` block saves a screenshot to a temp folder first."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: `pip install playwright`"
    )
    executable = _chromium()
    console: list[str] = []
    requests: list[str] = []
    with _http_server(_BlackHoleHandler) as (proxy, blocked), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable,
            # Loopback always bypasses a proxy in Chromium; everything else lands in the hole.
            args=[*CHROMIUM_ARGS, f"--proxy-server={proxy}"],
        )
        try:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            try:
                page.goto(f"{page_origin}/{CORS_PAGE}?gateway={quote(gateway.graphql, safe='')}")
                settled = page.wait_for_selector('#result:not([data-state="pending"])')
                assert settled is not None
                result = json.loads(settled.inner_text())
                state = settled.get_attribute("data-state") or ""
                yield PageRun(page, result, state, console, requests, blocked)
            except BaseException as exc:
                folder = tempfile.mkdtemp(prefix="frontends-browser-")
                shot = Path(folder) / "failure.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"browser test failed; screenshot: {shot}; console: {console}")
                exc.add_note(f"screenshot: {shot}; console: {console}")
                raise
            finally:
                context.close()
        finally:
            browser.close()


def _page_stays_on_loopback(run: PageRun, *, except_host: str | None = None) -> None:
    """The page asked only 127.0.0.1. (``run.blocked`` may also hold the browser's own
    background requests, e.g. to update.googleapis.com, which the flags do not stop.)"""
    foreign = [
        url
        for url in run.requests
        if "://" in url and urlsplit(url).hostname not in ("127.0.0.1", except_host)
    ]
    assert foreign == [], f"the page tried to leave the machine: {foreign}"


@pytest.mark.browser
def test_browser_page_on_an_allowed_origin_gets_the_data(
    gateway: LiveGateway, pages: Pages
) -> None:
    since = gateway.log_size()
    with _cors_page(pages.allowed, gateway) as run:
        assert run.state == "done", run.result
        assert run.result["status"] == 200, run.result
        data = run.result["body"]["data"]
        assert data["numberCounts"]["total"] == SIMULATOR_SIZE, run.result
        assert len(data["phoneNumbers"]["nodes"]) == 3, run.result
        assert "errors" not in run.result["body"], run.result
        # The browser preflighted (Authorization and a JSON body are not "simple") and the
        # gateway itself answered it, then served the POST.
        logged = gateway.wait_for_request(since, lambda r: r[:2] == ("POST", "/graphql"))
        assert ("OPTIONS", "/graphql", 200) in logged, logged
        assert ("POST", "/graphql", 200) in logged, logged
        assert logged.index(("OPTIONS", "/graphql", 200)) < logged.index(("POST", "/graphql", 200))
        # The guard works: a fetch to the internet ends in the black hole.
        escaped = run.page.evaluate(
            "fetch('http://example.com/', {mode: 'no-cors'}).then(() => 'reached', (e) => e.name)"
        )
        assert escaped == "TypeError"
        assert any("example.com" in line for line in run.blocked), run.blocked
        _page_stays_on_loopback(run, except_host="example.com")


@pytest.mark.browser
def test_browser_page_on_another_origin_is_refused(gateway: LiveGateway, pages: Pages) -> None:
    since = gateway.log_size()
    with _cors_page(pages.refused, gateway) as run:
        assert run.state == "failed", run.result
        assert run.result["name"] == "TypeError", run.result
        assert any("CORS policy" in line for line in run.console), run.console
        _page_stays_on_loopback(run)
        # The gateway refused the preflight, so the browser never sent the operation.
        logged = gateway.wait_for_request(since, lambda r: r[0] == "OPTIONS")
        assert ("OPTIONS", "/graphql", 400) in logged, logged
        assert not any(method == "POST" for method, _, _ in logged), logged


# --- compression and GraphQL over HTTP, raw ---------------------------------------------------


def _post_big_page(http: httpx.Client, encoding: str) -> httpx.Response:
    response = http.post(
        "/graphql",
        json={"query": BIG_PAGE},
        headers={"Accept-Encoding": encoding, "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text[:500]
    return response


def test_a_2000_item_page_is_compressed_on_the_wire(http: httpx.Client) -> None:
    identity = _post_big_page(http, "identity")
    assert "content-encoding" not in identity.headers
    plain_bytes = identity.num_bytes_downloaded
    data = identity.json()["data"]
    assert len(data["phoneNumbers"]["nodes"]) == 2000
    assert plain_bytes > 200_000

    for coding in ("br", "gzip"):
        response = _post_big_page(http, coding)
        assert response.headers["content-encoding"] == coding
        vary = {v.strip().lower() for v in response.headers["vary"].split(",")}
        assert "accept-encoding" in vary
        wire = response.num_bytes_downloaded
        assert wire == int(response.headers["content-length"])
        assert wire * 5 < plain_bytes, (coding, wire, plain_bytes)
        assert response.json()["data"] == data  # httpx decodes it (brotli is installed)

    refused_br = _post_big_page(http, "br;q=0, gzip")
    assert refused_br.headers["content-encoding"] == "gzip"


def test_small_answers_stay_uncompressed(http: httpx.Client) -> None:
    response = http.post(
        "/graphql", json={"query": "{ numberCounts { total } }"}, headers={"Accept-Encoding": "br"}
    )
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.json()["data"] == {"numberCounts": {"total": SIMULATOR_SIZE}}


def test_graphql_over_http_negotiation(http: httpx.Client) -> None:
    broken = {"query": "{ numberCounts { total }"}
    strict = http.post(
        "/graphql", json=broken, headers={"Accept": "application/graphql-response+json"}
    )
    assert strict.status_code == 400
    assert strict.headers["content-type"].startswith("application/graphql-response+json")
    assert "data" not in strict.json()
    assert _codes(strict.json()) == ["GRAPHQL_PARSE_FAILED"]

    legacy = http.post("/graphql", json=broken, headers={"Accept": "application/json"})
    assert legacy.status_code == 200
    assert legacy.headers["content-type"].startswith("application/json")
    assert "data" not in legacy.json()

    unservable = http.post(
        "/graphql", json={"query": "{ numberCounts { total } }"}, headers={"Accept": "text/csv"}
    )
    assert unservable.status_code == 406


def test_hash_only_get_is_http_cacheable(http: httpx.Client) -> None:
    query = "query HashOnlyGet { numberCounts { total assigned } }"
    digest = hashlib.sha256(query.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    registered = http.post("/graphql", json={"query": query, "extensions": extensions})
    assert registered.status_code == 200, registered.text
    params = {"extensions": json.dumps(extensions)}

    first = http.get("/graphql", params=params, headers=PREFLIGHT)
    assert first.status_code == 200, first.text
    assert first.json()["data"] == registered.json()["data"]
    etag = first.headers["etag"]
    assert first.headers["cache-control"].startswith("private, max-age=")
    assert "authorization" in first.headers["vary"].lower()

    again = http.get("/graphql", params=params, headers={**PREFLIGHT, "If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""

    without_header = http.get("/graphql", params=params)  # no content type, no CSRF header
    assert without_header.status_code == 400
    assert _codes(without_header.json()) == ["BAD_USER_INPUT"]
