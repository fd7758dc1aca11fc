"""The offline GraphiQL: our page loads only same-origin, pinned, checksummed assets (the vendored
ones and our own page script and style), hands the page script its configuration as data,
is served with a strict CSP, and really runs in a browser with no network.

The HTTP tests build a tiny Starlette app around ``gateway.transports.graphiql``'s routes (not the
gateway's ``create_app``). The ``browser`` test drives Debian's headless Chromium through
Playwright (no ``playwright install``) and is skipped, with the reason, when either is missing;
``test_graphiql_demo.py`` checks what the docs say about GraphiQL against a real gateway.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import strawberry
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from strawberry.asgi import GraphQL

from gateway.transports.graphiql import (
    ASSET_CACHE_CONTROL,
    DEFAULT_HEADERS,
    EXAMPLES_DIR,
    GRAPHIQL_CSP,
    GRAPHIQL_DIR,
    PAGE_DIR,
    PAGE_FILES,
    AssetError,
    graphiql_response,
    graphiql_routes,
    load_examples,
    load_manifest,
    load_page_assets,
    render_graphiql_page,
)
from tests.conftest import serve_on_loopback
from tools import graphiql_refresh

REPO = Path(__file__).resolve().parents[1]
SCHEMA_EXAMPLES = REPO / "schema" / "examples"
ASSET_BASE = "/graphql/assets/"
GREETING = "hello from the offline GraphiQL test"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # Chromium's own traffic (update checks, accounts) never leaves the machine: every
    # non-loopback request goes to a closed local port, and no name is looked up.
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


class _PageParts(HTMLParser):
    """The URLs a page loads and its inline scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str | None]] = []  # (tag, url, integrity)
        self.inline_scripts: list[str] = []
        self.inline_styles: list[str] = []
        self.data_blocks: dict[str, str] = {}
        self._open: tuple[str, dict[str, str | None]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            value = attributes.get(name)
            if value is not None:
                self.urls.append((tag, value, attributes.get("integrity")))
        if tag in ("script", "style"):
            self._open = (tag, attributes)

    def handle_data(self, data: str) -> None:
        if self._open is None:
            return
        tag, attributes = self._open
        if tag == "style":
            self.inline_styles.append(data)
        elif attributes.get("type") == "application/json":
            self.data_blocks[str(attributes.get("id"))] = data
        elif attributes.get("src") is None:
            self.inline_scripts.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def page_parts(page: str) -> _PageParts:
    parser = _PageParts()
    parser.feed(page)
    parser.close()
    return parser


def csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def page() -> str:
    return render_graphiql_page(asset_base=ASSET_BASE, examples=load_examples())


@pytest.fixture
def assets_app() -> Starlette:
    return Starlette(routes=graphiql_routes(asset_base=ASSET_BASE))


@pytest.fixture
async def client(assets_app: Starlette) -> Any:
    transport = httpx.ASGITransport(app=assets_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# --- the page ---------------------------------------------------------------------------------


def test_page_loads_only_same_origin_urls(page: str) -> None:
    parts = page_parts(page)
    assert parts.urls, "the page loads nothing?"
    for tag, url, _ in parts.urls:
        assert url.startswith(ASSET_BASE) or url == "data:,", (tag, url)
        assert not url.startswith("//"), url
    for forbidden in ("http://", "https://", "//cdn", "unpkg", "jsdelivr", "esm.sh"):
        assert forbidden not in page, forbidden


def test_every_page_asset_is_pinned_and_matches_its_checksum(page: str) -> None:
    manifest = {asset.path: asset for asset in load_manifest()}
    ours = {asset.path: asset for asset in load_page_assets()}
    loaded = [(url, integrity) for _, url, integrity in page_parts(page).urls if url != "data:,"]
    for url, integrity in loaded:
        path = url.removeprefix(ASSET_BASE)
        if path in ours:  # our page files: the bytes on disk, named by their own sha256
            asset = ours[path]
            source = PAGE_DIR / path.split("/", 1)[1]
            assert path.startswith(f"page-{sha256_file(source)[:16]}/"), path
        else:
            asset = manifest[path]
            source = GRAPHIQL_DIR / asset.path
        assert sha256_file(source) == asset.sha256, asset.path
        assert source.stat().st_size == asset.size, asset.path
        assert integrity == asset.integrity, f"{url}: the page's SRI is not the file's sha256"
    # React before ReactDOM before GraphiQL (the UMD bundles find each other as globals), and
    # our page script last: it mounts them. Our style after GraphiQL's.
    scripts = [url.rsplit("/", 1)[-1] for url, _ in loaded if url.endswith(".js")]
    assert scripts == [
        "react.production.min.js",
        "react-dom.production.min.js",
        "graphiql.min.js",
        "graphiql-page.js",
    ]
    styles = [url.rsplit("/", 1)[-1] for url, _ in loaded if url.endswith(".css")]
    assert styles == ["graphiql.min.css", "graphiql-page.css"]


def test_page_script_is_a_static_file_configured_by_data() -> None:
    """Issue 26: the page's JavaScript is a file of its own, never Python text; the Python side
    renders the HTML shell, and what varies reaches the script as a JSON data block."""
    module = Path(sys.modules[render_graphiql_page.__module__].__file__ or "").read_text()
    for javascript in ("ReactDOM.createRoot", "getReader", "function (", "localStorage"):
        assert javascript not in module, f"JavaScript in graphiql.py: {javascript!r}"
    script = (PAGE_DIR / "graphiql-page.js").read_text(encoding="utf-8")
    assert 'getElementById("graphiql-config")' in script
    first = render_graphiql_page(asset_base=ASSET_BASE, examples=load_examples())
    other = render_graphiql_page(
        asset_base=ASSET_BASE,
        examples=[("Y", "query Y { y }")],
        graphql_path="/elsewhere/graphql",
        default_headers='{"X": "1"}',
        request_headers={"Y": "2"},
    )
    same_files = [u for u in page_parts(first).urls if u[1] != "data:,"]
    assert same_files == [u for u in page_parts(other).urls if u[1] != "data:,"]
    config = json.loads(page_parts(other).data_blocks["graphiql-config"])
    assert config["url"] == "/elsewhere/graphql"
    assert config["tabs"] == [{"query": "query Y { y }", "headers": '{"X": "1"}'}]
    assert config["headers"] == '{"X": "1"}'
    assert config["requestHeaders"] == {"Y": "2"}
    assert [name for name, _ in PAGE_FILES] == sorted(p.name for p in PAGE_DIR.iterdir())


def test_vendored_files_match_manifest_like_check() -> None:
    assert graphiql_refresh.check() == []
    assert graphiql_refresh.main(["--check"]) == 0
    for pin in graphiql_refresh.PINS:  # each package's licence sits beside its files
        assert (GRAPHIQL_DIR / pin.folder / "LICENSE").is_file(), pin.spec


@pytest.mark.parametrize("cwd", ["repo root", "elsewhere"])
def test_refresh_script_runs_as_the_makefile_runs_it(cwd: str, tmp_path: Path) -> None:
    """``python tools/graphiql_refresh.py --check`` from the repo root (the Makefile's
    ``graphiql-assets`` target runs the refresh so), and by its path from anywhere."""
    script = (
        "tools/graphiql_refresh.py"
        if cwd == "repo root"
        else str(REPO / "tools/graphiql_refresh.py")
    )
    result = subprocess.run(
        [sys.executable, script, "--check"],
        cwd=REPO if cwd == "repo root" else tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"{GRAPHIQL_DIR} matches MANIFEST.json" in result.stdout
    assert result.stderr == ""


def test_examples_are_embedded_as_one_tab_each(page: str) -> None:
    config = json.loads(page_parts(page).data_blocks["graphiql-config"])
    expected = [p.read_text(encoding="utf-8") for p in sorted(EXAMPLES_DIR.glob("*.graphql"))]
    assert [tab["query"] for tab in config["tabs"]] == expected
    assert {tab["headers"] for tab in config["tabs"]} == {DEFAULT_HEADERS}
    assert json.loads(DEFAULT_HEADERS) == {"Authorization": "Bearer demo-admin"}
    # The docs: GraphiQL sends Gateway-Cache-Report: true with every operation.
    assert config["requestHeaders"] == {"Gateway-Cache-Report": "true"}
    assert config["url"] == "/graphql"
    if SCHEMA_EXAMPLES.is_dir():
        source = [p.read_text(encoding="utf-8") for p in sorted(SCHEMA_EXAMPLES.glob("*.graphql"))]
        assert [tab["query"] for tab in config["tabs"]] == source


def test_example_copies_are_identical_to_schema_examples() -> None:
    if not SCHEMA_EXAMPLES.is_dir():
        pytest.skip("schema/examples/ is not here (an installed package): nothing to compare")
    ours = {p.name: p.read_bytes() for p in EXAMPLES_DIR.glob("*.graphql")}
    source = {p.name: p.read_bytes() for p in SCHEMA_EXAMPLES.glob("*.graphql")}
    fix = "cp schema/examples/*.graphql gateway/transports/static/examples/"
    assert sorted(ours) == sorted(source), f"the example files differ by name: {fix}"
    drifted = sorted(name for name in source if ours[name] != source[name])
    assert not drifted, f"{drifted} drifted from schema/examples/: {fix}"


def test_example_titles_come_from_operation_names(tmp_path: Path) -> None:
    assert [title for title, _ in load_examples()] == [
        "AvailableNumbers",
        "PeopleNumbers",
        "EveryNumberStreamed",
        "Features",
        "FirstNumbers",
        "WalkNumbers",
        "WatchAssignments",
    ]
    (tmp_path / "b-anonymous.graphql").write_text("{ numberCounts { total } }\n")
    (tmp_path / "a-broken.graphql").write_text("query {\n")
    (tmp_path / "c-named.graphql").write_text("fragment F on Query { x }\nquery Named { ...F }\n")
    (tmp_path / "ignored.txt").write_text("query Nope { x }\n")
    assert [title for title, _ in load_examples(tmp_path)] == ["a-broken", "b-anonymous", "Named"]


def test_embedded_examples_cannot_close_the_script_element() -> None:
    hostile = "# </script><script>alert(1)</script> <!-- \u2028\nquery X { x }\n"
    page = render_graphiql_page(asset_base=ASSET_BASE, examples=[("X", hostile)])
    assert "<script>alert" not in page
    assert "<!-- " not in page
    config = json.loads(page_parts(page).data_blocks["graphiql-config"])
    assert config["tabs"][0]["query"] == hostile
    assert config["titles"] == ["X"]


def test_page_paths_must_be_same_origin() -> None:
    for bad in ("https://cdn.example/", "//cdn.example/", "assets/", "/graphql/assets"):
        with pytest.raises(ValueError, match="asset_base"):
            render_graphiql_page(asset_base=bad, examples=[])
    for bad in ("https://elsewhere/graphql", "//elsewhere/graphql", "graphql"):
        with pytest.raises(ValueError, match="graphql_path"):
            render_graphiql_page(asset_base=ASSET_BASE, examples=[], graphql_path=bad)
    with pytest.raises(ValueError, match="asset_base"):
        graphiql_routes(asset_base="//cdn.example/")


def test_csp_allows_only_this_origin_and_the_page_has_no_inline_code(page: str) -> None:
    directives = {}
    for part in GRAPHIQL_CSP.split(";"):
        name, _, value = part.strip().partition(" ")
        directives[name] = value
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in GRAPHIQL_CSP
    assert "unsafe-eval" not in GRAPHIQL_CSP
    assert "http" not in GRAPHIQL_CSP
    assert directives["script-src"] == "'self'"  # no inline script to allow, by hash or else
    # Only GraphiQL's own dialog style (see DIALOG_SCROLL_LOCK_STYLE_HASH) besides this origin.
    assert re.fullmatch(r"'self' 'sha256-[A-Za-z0-9+/]+=*'", directives["style-src"])
    parts = page_parts(page)
    assert parts.inline_scripts == []
    assert parts.inline_styles == []
    assert list(parts.data_blocks) == ["graphiql-config"]  # data, which a browser never runs


def test_page_response_carries_the_csp(page: str) -> None:
    response = graphiql_response(page)
    assert response.headers["content-security-policy"] == GRAPHIQL_CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"].startswith("text/html")
    assert response.body == page.encode()


# --- the asset routes -------------------------------------------------------------------------


async def test_every_manifest_file_is_served_immutable(client: httpx.AsyncClient) -> None:
    for asset in (*load_manifest(), *load_page_assets()):
        response = await client.get(ASSET_BASE + asset.path)
        assert response.status_code == 200, asset.path
        assert hashlib.sha256(response.content).hexdigest() == asset.sha256
        assert response.headers["cache-control"] == ASSET_CACHE_CONTROL
        assert response.headers["x-content-type-options"] == "nosniff"
        expected_type = {
            "script": "text/javascript; charset=utf-8",
            "style": "text/css; charset=utf-8",
            "license": "text/plain; charset=utf-8",
        }[asset.role]
        assert response.headers["content-type"] == expected_type, asset.path
        # A bump (vendored) or an edit (ours) changes the URL, so immutable is safe.
        assert asset.version in asset.path
        again = await client.get(
            ASSET_BASE + asset.path, headers={"If-None-Match": response.headers["etag"]}
        )
        assert again.status_code == 304
        assert again.content == b""
    head = await client.head(ASSET_BASE + load_manifest()[0].path)
    assert head.status_code == 200


async def test_unknown_paths_are_404(client: httpx.AsyncClient) -> None:
    for path in (
        "",
        "nope.js",
        "MANIFEST.json",
        "graphiql-4.1.2/",
        "graphiql-4.1.2/graphiql.js",
        "graphiql-0.0.0/graphiql.min.js",
        "graphiql-page.js",
        "page/graphiql-page.js",
        "page-0000000000000000/graphiql-page.js",
        f"{load_page_assets()[0].path.split('/')[0]}/graphiql-page.js",  # right name, wrong hash
        "%2e%2e/graphiql.py",
        "graphiql-4.1.2/%2e%2e/%2e%2e/graphiql.py",
        "..%2fgraphiql.py",
        "%2fetc%2fpasswd",
    ):
        response = await client.get(ASSET_BASE + path)
        assert response.status_code == 404, path
        assert "cache-control" not in response.headers, path


async def _status(app: Starlette, path: str) -> int:
    """Send a raw ASGI request whose path is taken as is (no client normalises '..')."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)  # type: ignore[arg-type]
    return statuses[0]


async def test_dot_dot_traversal_is_refused(assets_app: Starlette) -> None:
    real = load_manifest()[0].path
    assert await _status(assets_app, ASSET_BASE + real) == 200
    for path in (
        "../graphiql.py",
        "../../http/graphiql.py",
        "graphiql-4.1.2/../../graphiql.py",
        f"{real}/../../MANIFEST.json",
        "./" + real,
        "/" + real,
        real.replace("/", "\\"),
    ):
        assert await _status(assets_app, ASSET_BASE + path) == 404, path


def test_a_file_that_differs_from_the_manifest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "graphiql"
    shutil.copytree(GRAPHIQL_DIR, copy)
    graphiql_routes(directory=copy)  # intact: fine
    target = copy / load_manifest(copy)[0].path
    target.write_bytes(target.read_bytes() + b"\n// tampered")
    (copy / "stray.js").write_text("alert(1)")
    with pytest.raises(AssetError, match="differs"):
        graphiql_routes(directory=copy)
    problems = graphiql_refresh.check(copy)
    assert any("bytes" in p for p in problems)
    assert any("sha256" in p for p in problems)
    assert any("stray.js" in p for p in problems)
    monkeypatch.setattr(graphiql_refresh, "STATIC_DIR", copy)
    assert graphiql_refresh.main(["--check"]) == 1
    assert "sha256 differs" in capsys.readouterr().err


async def test_an_edited_page_file_gets_a_new_url(tmp_path: Path) -> None:
    """Our page files are cached as immutable, so an edit must change their URL: each is
    named by its own sha256, and only the current bytes are served."""
    copy = tmp_path / "page"
    shutil.copytree(PAGE_DIR, copy)
    before = {a.path for a in load_page_assets(copy)}
    script = copy / "graphiql-page.js"
    script.write_text(script.read_text(encoding="utf-8") + "// edited\n", encoding="utf-8")
    after = {a.path for a in load_page_assets(copy)}
    [old_script] = before - after  # the style is untouched: same URL
    [new_script] = after - before
    assert old_script.endswith("/graphiql-page.js")
    assert new_script.endswith("/graphiql-page.js")
    app = Starlette(routes=graphiql_routes(asset_base=ASSET_BASE, page_directory=copy))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        assert (await client.get(ASSET_BASE + old_script)).status_code == 404
        served = await client.get(ASSET_BASE + new_script)
        assert served.status_code == 200
        assert served.content == script.read_bytes()
    page = render_graphiql_page(
        asset_base=ASSET_BASE,
        examples=[],
        assets=[*load_manifest(), *load_page_assets(copy)],
    )
    assert ASSET_BASE + new_script in page
    assert ASSET_BASE + old_script not in page


def test_a_missing_page_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "page"
    shutil.copytree(PAGE_DIR, copy)
    (copy / "graphiql-page.js").unlink()
    with pytest.raises(AssetError, match=r"graphiql-page\.js"):
        graphiql_routes(page_directory=copy)


def test_manifest_with_an_unsafe_path_is_refused(tmp_path: Path) -> None:
    manifest = json.loads((GRAPHIQL_DIR / "MANIFEST.json").read_text())
    manifest["files"][0]["path"] = "../../gateway/transports/graphiql.py"
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(AssetError, match="unsafe path"):
        load_manifest(tmp_path)


def test_refresh_writes_files_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refresh without npm: each "downloaded" tarball is built from the vendored files."""
    vendored = {(a.package, a.version, a.path.split("/", 1)[1]): a for a in load_manifest()}

    def fake_npm_pack(pin: graphiql_refresh.Pin, into: Path) -> tuple[Path, dict[str, Any]]:
        tarball = into / f"{pin.folder}.tgz"
        with tarfile.open(tarball, "w:gz") as archive:
            members = {"package.json": json.dumps({"name": pin.package, "license": "MIT"})}
            for pinned in pin.files:
                asset = vendored[(pin.package, pin.version, Path(pinned.source).name)]
                members[pinned.source] = (GRAPHIQL_DIR / asset.path).read_bytes().decode()
            for name, text in members.items():
                data = text.encode()
                info = tarfile.TarInfo(f"package/{name}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return tarball, {"filename": tarball.name, "integrity": "sha512-test"}

    monkeypatch.setattr(graphiql_refresh, "npm_pack", fake_npm_pack)
    target = tmp_path / "static" / "graphiql"
    manifest = graphiql_refresh.refresh(static_dir=target)
    assert graphiql_refresh.check(target) == []
    assert [f["path"] for f in manifest["files"]] == [a.path for a in load_manifest()]
    for asset in load_manifest():
        assert (target / asset.path).read_bytes() == (GRAPHIQL_DIR / asset.path).read_bytes()
    assert not target.with_name("graphiql.old").exists()
    graphiql_refresh.refresh(static_dir=target)  # again, over the existing folder
    assert graphiql_refresh.check(target) == []


# --- a real browser ---------------------------------------------------------------------------


@strawberry.type
class _Query:
    @strawberry.field(  # type: ignore[untyped-decorator]
        description="A greeting, so the docs explorer has something to show."
    )
    def hello(self) -> str:
        return GREETING


class _PageOrGraphQL:
    """``/graphql``: GET is our page, POST a trivial strawberry schema; POSTs are recorded."""

    def __init__(self, page: str) -> None:
        self.page = page
        self.graphql = GraphQL[None, None](strawberry.Schema(query=_Query), graphql_ide=None)
        self.posts: list[tuple[dict[str, str], dict[str, Any]]] = []  # (headers, JSON body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in ("GET", "HEAD"):
            await graphiql_response(self.page)(scope, receive, send)
            return
        messages = [await receive()]
        while messages[-1].get("more_body"):
            messages.append(await receive())
        body = b"".join(m.get("body", b"") for m in messages)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.posts.append((headers, json.loads(body)))

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.graphql(scope, replay, send)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian) to run the browser test")
    return found


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_graphiql_runs_offline_in_chromium() -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: `pip install playwright`"
    )
    executable = _chromium()
    examples = [("Hello", "query Hello { hello }\n"), *load_examples()]
    endpoint = _PageOrGraphQL(render_graphiql_page(asset_base=ASSET_BASE, examples=examples))
    app = Starlette(
        routes=[
            Route("/graphql", endpoint, methods=["GET", "POST"]),
            *graphiql_routes(asset_base=ASSET_BASE),
        ]
    )
    console_errors: list[str] = []
    requests: list[str] = []
    blocked: list[str] = []

    def only_loopback(route: Any) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
            blocked.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    with serve_on_loopback(app) as origin, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(20_000)
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.route("**/*", only_loopback)
        expect = sync_api.expect
        try:
            page.goto(f"{origin}/graphql")
            page.wait_for_selector(".graphiql-container")
            expect(page.locator(".graphiql-tab")).to_have_text(
                [title for title, _ in examples], use_inner_text=True
            )
            headers_tab = page.locator('.graphiql-editor-tools button[data-name="headers"]')
            expect(headers_tab).to_have_class(re.compile(r"\bactive\b"))
            expect(page.get_by_role("region", name="Headers")).to_contain_text("Bearer demo-admin")

            page.locator(".graphiql-execute-button").click()
            expect(page.locator(".result-window")).to_contain_text(GREETING)

            page.get_by_label("Show Documentation Explorer").click()
            docs = page.locator(".graphiql-doc-explorer")
            expect(docs).to_contain_text("Root Types")
            docs.get_by_text("Query", exact=True).first.click()
            expect(docs).to_contain_text("A greeting, so the docs explorer")

            page.get_by_label("Open settings dialog").click()  # GraphiQL's one inline style
            expect(page.get_by_role("dialog")).to_be_visible()
            page.keyboard.press("Escape")
            expect(page.get_by_role("dialog")).to_have_count(0)

            assert blocked == [], f"the page tried to leave the machine: {blocked}"
            assert console_errors == [], console_errors  # CSP violations are console errors
            assert all(urlsplit(u).hostname == "127.0.0.1" for u in requests if "://" in u)
            assert {urlsplit(u).path for u in requests if u.startswith(origin)} >= {
                f"{ASSET_BASE}{a.path}"
                for a in (*load_manifest(), *load_page_assets())
                if a.role != "license"
            }
            assert {body.get("operationName") for _, body in endpoint.posts} >= {
                "IntrospectionQuery",  # the docs explorer's schema, over the same fetcher
                "Hello",
            }
            for headers, body in endpoint.posts:
                assert headers["content-type"] == "application/json"
                if body.get("operationName") == "Hello":  # the open headers editor's text
                    assert headers["authorization"] == "Bearer demo-admin"
                # The page's own, with every operation (the schema's introspection too).
                assert headers["gateway-cache-report"] == "true"
        except BaseException as exc:
            folder = tempfile.mkdtemp(prefix="graphiql-browser-")
            shot = Path(folder) / "failure.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"GraphiQL browser test failed; screenshot: {shot}")
            exc.add_note(f"screenshot: {shot}; console errors: {console_errors}")
            raise
        finally:
            browser.close()
