"""The inventory export (issue 30) as its users meet it: over a real socket, with curl, httpx, a
spreadsheet, a browser's download button, and 100,000 entries.

- A CSV export that fails after N pages is an incomplete transfer to every client: uvicorn
  closes the connection without the chunked body's last chunk, so httpx raises
  ``RemoteProtocolError`` and curl exits 18 (``--remove-on-error`` deletes the partial file);
  an NDJSON one completes its body with a trailer saying it is not complete (curl exits 0).
- The docs' curl commands (``docs/export.md``) download what they say from ``make run``'s
  gateway.
- Gnumeric (``ssconvert``, a real spreadsheet) opens an export of hostile names with no formula
  evaluated, where the same cells written raw are evaluated.
- The docs' ``downloadExport`` runs in Chromium on another origin: the saved files are the
  exports, under the gateway's filename; a refused token and a CSV cut off reject.
- ``numbers-gateway simulator --size 100000`` behind ``numbers-gateway serve``: CSV and NDJSON
  downloads of every entry equal the GraphQL cursor walk for the same filter and order, while
  the gateway's resident memory grows by less than the streaming bound.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.server.app import create_app
from gateway.simulator import build_demo_world, create_simulator_app
from tests.conftest import live_settings, serve_on_loopback
from tests.processes import STOP_BOUND, ServedProcess, gateway_process, simulator_process
from tests.test_export import (
    HOSTILE,
    FailAfter,
    csv_of,
    expected_cell,
    hostile_world,
    ndjson_of,
    schema_columns,
    value_at,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
EXPORT_DOCS = ROOT / "docs" / "export.md"
ADMIN = {"Authorization": "Bearer demo-admin"}
PAGE = 500
ENTRIES = 100_000
MiB = 2**20
# The streaming bound (docs/performance.md, "Streaming 100,000 entries"): what a whole
# inventory streamed may add to the gateway's resident memory.
STREAMING_BOUND = 96 * MiB
EVERY_FIELD = """phoneNumber extension routingPrefix esn state phoneNumberType mainNumber
  includedTelephonyTypes mobileNetwork routingProfile tollFreeNumber isServiceNumber
  isReservedNumber elinEnabled location { id name }
  owner { id type firstName lastName displayName elinExpiryTime }"""


def walk_query(first: int) -> str:
    return f"""query Walk($filter: PhoneNumberFilter, $order: PhoneNumberOrder, $after: String) {{
      phoneNumbers(filter: $filter, order: $order, page: {{first: {first}, after: $after}}) {{
        pageInfo {{ hasNextPage endCursor }} nodes {{ {EVERY_FIELD} }} }} }}"""


@contextmanager
def gateway_on_a_socket(transport: httpx.AsyncBaseTransport, **settings: Any) -> Iterator[str]:
    """The whole gateway (lifespan included) served by uvicorn on a loopback port, over
    ``transport`` as its upstream."""
    app = create_app(live_settings(max_page_size=PAGE, **settings), upstream_transport=transport)
    with serve_on_loopback(app, lifespan="on") as origin:
        yield origin


def curl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(["curl", *args], capture_output=True, timeout=120, cwd=cwd, check=False)


# --- a failure over a socket ------------------------------------------------------------------


def test_a_csv_cut_off_is_an_incomplete_transfer_to_httpx_and_curl(tmp_path: Path) -> None:
    world = build_demo_world(size=3000, seed=7)
    failing = FailAfter(httpx.ASGITransport(app=create_simulator_app(world)), pages=2, status=401)
    with gateway_on_a_socket(failing) as origin:
        url = f"{origin}/export/phone-numbers.csv"
        received = bytearray()

        def download() -> None:
            with httpx.stream("GET", url, headers=ADMIN, timeout=60) as response:
                assert response.status_code == 200
                assert response.headers["transfer-encoding"] == "chunked"
                for chunk in response.iter_raw():
                    received.extend(chunk)

        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            download()
        rows = csv_of(bytes(received))
        assert len(rows) == 1 + 2 * PAGE  # whole rows up to the failure, never the end

        failing.calls = 0
        kept = tmp_path / "kept.csv"
        cut = curl("-sS", "-o", str(kept), "-H", "Authorization: Bearer demo-admin", url)
        assert cut.returncode == 18, cut.stderr
        assert b"transfer closed with outstanding read data remaining" in cut.stderr
        assert len(csv_of(kept.read_bytes())) == 1 + 2 * PAGE  # what came, for the curious

        failing.calls = 0
        removed = tmp_path / "removed.csv"
        cut = curl(
            "-sS", "--remove-on-error", "-o", str(removed), "-H", "Authorization: Bearer demo-admin", url
        )  # fmt: skip
        assert cut.returncode == 18
        assert not removed.exists()

        failing.calls = 0
        ndjson = curl(
            "-sS", "-H", "Authorization: Bearer demo-admin", url.replace(".csv", ".ndjson")
        )
        assert ndjson.returncode == 0, ndjson.stderr  # the body ended: its trailer says how
        entries, trailer = ndjson_of(ndjson.stdout)
        assert len(entries) == 2 * PAGE
        assert trailer["__export"]["complete"] is False
        assert trailer["__export"]["error"]["extensions"]["code"] == "UNAUTHENTICATED"


def test_a_complete_export_over_a_socket_ends_its_body(tmp_path: Path) -> None:
    world = build_demo_world(size=1200, seed=7)
    with gateway_on_a_socket(httpx.ASGITransport(app=create_simulator_app(world))) as origin:
        done = curl(
            "-sS", "--fail-with-body", "-J", "-O", "-H", "Authorization: Bearer demo-admin",
            f"{origin}/export/phone-numbers.csv", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        [saved] = tmp_path.iterdir()
        assert re.fullmatch(r"phone-numbers-organization-\d{4}-\d\d-\d\d\.csv", saved.name)
        body = saved.read_bytes()
        assert body.endswith(b"\r\n")
        assert len(csv_of(body)) == 1 + 1200
        refused = curl(
            "-sS", "--fail-with-body", "-H", "Authorization: Bearer nobody",
            f"{origin}/export/phone-numbers.csv?ownerType=NOPE",
        )  # fmt: skip
        assert refused.returncode == 22
        assert orjson.loads(refused.stdout)["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# --- the docs' commands -----------------------------------------------------------------------


def docs_curls() -> list[list[str]]:
    text = EXPORT_DOCS.read_text(encoding="utf-8")
    [block] = re.findall(r"^## With curl\n.*?^```sh\n(.*?)^```", text, re.M | re.S)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("curl ")]


@pytest.fixture(scope="module")
def make_run() -> Iterator[ServedProcess]:
    """``numbers-gateway serve`` as ``make run`` starts it (the embedded demo org)."""
    with gateway_process() as gateway:
        yield gateway


def test_the_docs_curl_commands_download_what_they_say(
    make_run: ServedProcess, tmp_path: Path
) -> None:
    commands = docs_curls()
    assert len(commands) == 2, "an org-wide and a one-location export"
    for words in commands:
        words = [w.replace("http://127.0.0.1:8000", make_run.origin) for w in words]
        done = curl(*words[1:], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    org, location = sorted(tmp_path.iterdir(), key=lambda path: path.suffix)
    assert org.suffix == ".csv"
    assert len(csv_of(org.read_bytes())) == 1 + 1000
    entries, trailer = ndjson_of(location.read_bytes())
    assert trailer["__export"] == {"complete": True, "rows": len(entries)}
    assert {entry["location"]["name"] for entry in entries} == {"Washington"}
    [url] = [w for w in commands[1] if w.startswith("http")]
    asked = dict(parse_qsl(urlsplit(url).query))
    assert asked["order"] == "LAST_NAME:DESC"
    assert {entry["location"]["id"] for entry in entries} == {asked["locationId"]}


# --- a spreadsheet ----------------------------------------------------------------------------


def ssconvert(source: Path, target: Path) -> list[list[str]]:
    """``source`` opened by Gnumeric and saved as CSV: each cell as the spreadsheet holds it
    (a formula as its value)."""
    done = subprocess.run(
        ["ssconvert", str(source), str(target)], capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))


def test_a_spreadsheet_opens_the_csv_with_no_formula_evaluated(tmp_path: Path) -> None:
    if shutil.which("ssconvert") is None:
        pytest.skip("Gnumeric's ssconvert is not installed (make test-services installs it)")
    world = hostile_world()
    with gateway_on_a_socket(httpx.ASGITransport(app=create_simulator_app(world))) as origin:
        exported = httpx.get(f"{origin}/export/phone-numbers.csv", headers=ADMIN).content
        nodes, _ = ndjson_of(
            httpx.get(f"{origin}/export/phone-numbers.ndjson", headers=ADMIN).content
        )
    (tmp_path / "export.csv").write_bytes(exported)
    opened = ssconvert(tmp_path / "export.csv", tmp_path / "opened.csv")
    header = opened[0]
    assert header == schema_columns()
    text_columns = [
        "esn",
        "location.name",
        "owner.firstName",
        "owner.lastName",
        "owner.displayName",
    ]
    for node, row in zip(nodes, opened[1:], strict=True):
        for column in text_columns:
            shown = row[header.index(column)]
            # What the spreadsheet holds is the text itself: its marker is not shown.
            assert shown == value_at(node, column).replace("\r", "\n"), (column, shown)
    # The control: the same cells written raw are evaluated (so the check above means it).
    raw = io.StringIO()
    csv.writer(raw, lineterminator="\r\n").writerows([[text] for text in HOSTILE])
    (tmp_path / "raw.csv").write_text(raw.getvalue(), encoding="utf-8")
    evaluated = [
        row[0] if row else "" for row in ssconvert(tmp_path / "raw.csv", tmp_path / "x.csv")
    ]
    assert evaluated[0] == "click"  # =HYPERLINK("http://evil.test","click") ran
    assert sum(shown != text for shown, text in zip(evaluated, HOSTILE, strict=False)) >= 2


# --- a browser's download button --------------------------------------------------------------


def docs_download_function() -> str:
    text = EXPORT_DOCS.read_text(encoding="utf-8")
    [block] = re.findall(r"^```js\n(.*?)^```", text, re.M | re.S)
    function = block.split("\n// The whole org")[0]
    assert "async function downloadExport" in function
    return function


def frontend_app() -> Starlette:
    """A frontend of its own origin: one page with the docs' ``downloadExport`` on it."""

    async def page(request: Request) -> Response:
        script = docs_download_function()
        return HTMLResponse(f"<!doctype html><title>admin</title><script>{script}</script>")

    return Starlette(routes=[Route("/", page)])


@pytest.mark.browser
def test_the_docs_download_button_saves_the_export_in_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: `pip install playwright`"
    )
    from tests.test_graphiql_offline import CHROMIUM_ARGS, _chromium

    executable = _chromium()
    world = build_demo_world(size=1200, seed=7)
    location = world.demo_org.location_ids[1]
    failing = FailAfter(httpx.ASGITransport(app=create_simulator_app(world)), pages=10**6)
    with (
        serve_on_loopback(frontend_app()) as frontend,
        # The frontend's origin is allowed as an operator allows theirs.
        gateway_on_a_socket(failing, cors_origins=frontend) as origin,
        sync_api.sync_playwright() as playwright,
    ):
        expected_csv = httpx.get(f"{origin}/export/phone-numbers.csv", headers=ADMIN).content
        expected_site = httpx.get(
            f"{origin}/export/phone-numbers.ndjson",
            params={"locationId": location, "order": "LAST_NAME:DESC"},
            headers=ADMIN,
        ).content
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(frontend)
            call = "args => downloadExport(args).then(() => 'saved', e => 'rejected: ' + e.message)"

            def download(args: dict[str, Any]) -> tuple[str, bytes]:
                with page.expect_download() as info:
                    assert (
                        page.evaluate(call, {"gateway": origin, "token": "demo-admin", **args})
                        == "saved"
                    )
                saved = tmp_path / info.value.suggested_filename
                info.value.save_as(saved)
                return saved.name, saved.read_bytes()

            name, body = download({})
            assert re.fullmatch(r"phone-numbers-organization-\d{4}-\d\d-\d\d\.csv", name)
            assert body == expected_csv
            name, body = download(
                {"format": "ndjson", "filter": {"locationId": location}, "order": "LAST_NAME:DESC"}
            )
            assert name.endswith(".ndjson")
            assert body == expected_site
            refused = page.evaluate(call, {"gateway": origin, "token": "nobody"})
            assert refused.startswith("rejected: UNAUTHENTICATED: ")
            failing.calls, failing.pages, failing.status = 0, 1, 503
            cut = page.evaluate(call, {"gateway": origin, "token": "demo-admin"})
            assert cut.startswith("rejected: "), cut  # the body did not complete
            failing.calls = 0
            said = page.evaluate(
                call, {"gateway": origin, "token": "demo-admin", "format": "ndjson"}
            )
            assert said.startswith("rejected: UPSTREAM_UNAVAILABLE: "), said
        finally:
            browser.close()


# --- 100,000 entries --------------------------------------------------------------------------


def resident(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


class PeakResident:
    """The gateway's resident memory sampled while a download runs, and its high-water mark."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = resident(pid)
        self.high_water_before = resident(pid, "VmHWM")
        self.peak = self.baseline
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, resident(self.pid))

    def __enter__(self) -> PeakResident:
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._sampler.join()
        high_water = resident(self.pid, "VmHWM")
        if high_water > self.high_water_before:  # the process's peak was during the download
            self.peak = max(self.peak, high_water)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def graphql_digests(
    origin: str, flt: dict[str, Any] | None, order: dict[str, Any] | None
) -> tuple[str, str, int]:
    """The GraphQL cursor walk of the whole list, as digests of its NDJSON lines and CSV rows."""
    lines, rows = hashlib.sha256(), hashlib.sha256()
    columns = schema_columns()
    count, after = 0, None
    with httpx.Client(base_url=origin, headers=ADMIN, timeout=120) as client:
        while True:
            body = client.post(
                "/graphql",
                json={
                    "query": walk_query(2000),
                    "variables": {"filter": flt, "order": order, "after": after},
                },
            ).json()
            assert "errors" not in body, body
            connection = body["data"]["phoneNumbers"]
            for node in connection["nodes"]:
                lines.update(orjson.dumps(node) + b"\n")
                rows.update(
                    "\x1f".join(expected_cell(value_at(node, c)) for c in columns).encode() + b"\n"
                )
                count += 1
            if not connection["pageInfo"]["hasNextPage"]:
                return lines.hexdigest(), rows.hexdigest(), count
            after = connection["pageInfo"]["endCursor"]


def export_digest(origin: str, path: str, query: str) -> tuple[str, int, dict[str, Any] | None]:
    """One export, read as it arrives and never held: the digest of its entries or rows (as
    the GraphQL walk's are taken), their count, and the NDJSON trailer."""
    digest = hashlib.sha256()
    count, trailer = 0, None
    with httpx.stream("GET", f"{origin}{path}?{query}", headers=ADMIN, timeout=300) as response:
        assert response.status_code == 200, response.read()
        if path.endswith(".csv"):
            reader = csv.reader(response.iter_lines())
            assert next(reader) == schema_columns()
            for row in reader:
                digest.update("\x1f".join(row).encode() + b"\n")
                count += 1
            return digest.hexdigest(), count, None
        for line in response.iter_lines():
            entry = orjson.loads(line)
            if "__export" in entry:
                trailer = entry
                continue
            assert trailer is None, "nothing after the trailer"
            digest.update(orjson.dumps(entry) + b"\n")
            count += 1
    return digest.hexdigest(), count, trailer


@pytest.fixture(scope="module")
def inventory() -> Iterator[ServedProcess]:
    """A simulator of 100,000 entries behind a gateway, each its own process (so the
    gateway's memory is its own)."""
    with (
        simulator_process("--size", str(ENTRIES)) as simulator,
        gateway_process(env={"GATEWAY_UPSTREAM_URL": simulator.url}) as gateway,
    ):
        yield gateway


@pytest.mark.parametrize(
    ("query", "flt", "order"),
    [
        ("", None, None),
        (
            "ownerType=PEOPLE&order=LAST_NAME:DESC",
            {"ownerType": "PEOPLE"},
            {"by": "LAST_NAME", "direction": "DESC"},
        ),
    ],
    ids=["all", "people-by-last-name"],
)
def test_100000_entries_download_in_bounded_memory_and_equal_the_graphql_answer(
    inventory: ServedProcess, query: str, flt: dict[str, Any] | None, order: dict[str, Any] | None
) -> None:
    origin, pid = inventory.origin, inventory.process.pid
    export_digest(origin, "/export/phone-numbers.ndjson", "locationId=none")  # warm
    downloads = {}
    for path in ("/export/phone-numbers.csv", "/export/phone-numbers.ndjson"):
        with PeakResident(pid) as memory:
            downloads[path] = export_digest(origin, path, query)
        assert memory.growth < STREAMING_BOUND, f"{path}: RSS grew {memory.growth / MiB:.1f} MiB"
    lines, rows, count = graphql_digests(origin, flt, order)
    if not query:
        assert count == ENTRIES
    csv_digest, csv_rows, _ = downloads["/export/phone-numbers.csv"]
    assert (csv_digest, csv_rows) == (rows, count)
    ndjson_digest, ndjson_rows, trailer = downloads["/export/phone-numbers.ndjson"]
    assert (ndjson_digest, ndjson_rows) == (lines, count)
    assert trailer == {"__export": {"complete": True, "rows": count}}
    logged = [
        line
        for line in inventory.events("http_request")
        if line.get("route") == "/export/phone-numbers.ndjson"
    ][-1]
    assert logged["stream"]["items"] == count
    assert logged["operationName"] == "export:ndjson"
    assert logged["upstreamCalls"] == -(-count // 2000)  # a page of 2,000 per upstream call


# --- shutdown ---------------------------------------------------------------------------------


def test_sigterm_ends_open_exports_and_the_gateway_exits() -> None:
    """An export waiting for its next page when SIGTERM comes ends at once, while new
    connections are refused: NDJSON with the shutdown error in its trailer, CSV cut off; the
    gateway exits 0 well inside its shutdown bound (uvicorn alone would wait for them)."""
    with (
        # More than the sockets' buffers hold: the walks are still under way at SIGTERM.
        simulator_process("--size", str(ENTRIES)) as simulator,
        gateway_process(
            "--shutdown-timeout",
            str(STOP_BOUND * 3),
            env={"GATEWAY_UPSTREAM_URL": simulator.url},
        ) as gateway,
        httpx.Client(base_url=gateway.origin, headers=ADMIN, timeout=STOP_BOUND) as client,
        client.stream("GET", "/export/phone-numbers.ndjson") as ndjson,
        client.stream("GET", "/export/phone-numbers.csv") as spreadsheet,
    ):
        ndjson_body, csv_body = bytearray(), bytearray()
        ndjson_chunks, csv_chunks = ndjson.iter_raw(), spreadsheet.iter_raw()
        ndjson_body += next(ndjson_chunks)
        csv_body += next(csv_chunks)
        # Every later upstream page now takes seconds (SIGTERM's effect takes milliseconds):
        # a walk not held by its client waits for the upstream.
        faulted = httpx.post(
            f"{simulator.origin}/_simulator/faults", json={"rules": [{"latency": 5}]}
        )
        assert faulted.status_code < 300, faulted.text
        gateway.process.terminate()
        for chunk in ndjson_chunks:
            ndjson_body += chunk
        with pytest.raises(httpx.RemoteProtocolError):
            csv_body.extend(b"".join(csv_chunks))  # cut off: never its last chunk
        code = gateway.process.wait(timeout=STOP_BOUND)
    assert code == 0
    entries, trailer = ndjson_of(bytes(ndjson_body))
    assert 0 < len(entries) < ENTRIES
    assert trailer["__export"]["complete"] is False
    assert trailer["__export"]["error"]["extensions"]["code"] == "RATE_LIMITED"
    assert "shutting down" in trailer["__export"]["error"]["message"]
    assert 1 < len(csv_of(bytes(csv_body))) <= ENTRIES
    ended = {line["route"]: line["stream"]["ended"] for line in gateway.events("http_request")}
    assert ended == {
        "/export/phone-numbers.ndjson": "shutdown",
        "/export/phone-numbers.csv": "shutdown",
    }
