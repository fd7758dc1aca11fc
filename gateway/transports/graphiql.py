"""GraphiQL served by the gateway itself, so it works offline: our page, our asset routes.

The page is ours (strawberry's template loads its scripts from a public CDN): an HTML shell
that loads React, ReactDOM and GraphiQL from the gateway's own origin (the files vendored
under ``static/graphiql/`` and listed in its ``MANIFEST.json``, see
``tools/graphiql_refresh.py``) and then our page script and style (``static/page/``), which
mount GraphiQL with one tab per example operation, the headers editor open, and a fetcher
that POSTs ``application/json`` to the GraphQL path (operations with ``@defer``/``@stream``
and subscriptions ask for ``text/event-stream`` and hand GraphiQL each payload as it arrives).

- ``render_graphiql_page(...)``: the HTML shell. What varies (the GraphQL path, the example
  tabs, the headers editor's default, the headers sent with every operation) travels as data
  in one JSON block, ``#graphiql-config``, which the page script reads; the page has no
  inline script or style of its own, so ``GRAPHIQL_CSP`` is a constant that allows scripts
  and styles from this origin only.
- ``graphiql_response(html)``: an ``HTMLResponse`` with ``GRAPHIQL_PAGE_HEADERS`` (the CSP).
- ``graphiql_routes(...)``: Starlette routes serving exactly the vendored files of
  MANIFEST.json and our page files, cached as immutable (a vendored URL names the package
  version, a page file's URL its own sha256); anything else is 404.
- ``load_examples()``: the example operations shipped in ``static/examples/`` (copies of
  ``schema/examples/``; a test keeps them identical).

Every script and stylesheet tag carries its sha256 as ``integrity``, so the browser refuses a
file that differs from what the server checked (the manifest's sha256 for vendored files; the
file as read at start-up for ours).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

from graphql import GraphQLError, OperationDefinitionNode, parse
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.transports.routes import ASSET_BASE, GRAPHQL_PATH

STATIC_DIR = Path(__file__).resolve().parent / "static"
GRAPHIQL_DIR = STATIC_DIR / "graphiql"
EXAMPLES_DIR = STATIC_DIR / "examples"
EXAMPLE_MAX_TOKENS = 100_000  # an example's parse is bounded too, at GATEWAY_MAX_TOKENS' ceiling
# Our own page files (not vendored, so not in MANIFEST.json): in load order, each with its role.
PAGE_DIR = STATIC_DIR / "page"
PAGE_FILES: tuple[tuple[str, str], ...] = (
    ("graphiql-page.css", "style"),
    ("graphiql-page.js", "script"),
)
MANIFEST_NAME = "MANIFEST.json"

# The headers editor of a new tab starts with this hint; against the embedded simulator no
# header means demo-admin anyway, and another demo token is one edit away. GraphiQL does not
# keep headers across a reload (shouldPersistHeaders is off: tokens stay out of storage).
DEFAULT_HEADERS = '{\n  "Authorization": "Bearer demo-admin"\n}'

# Sent with every operation, whatever the headers editor holds (a header of the same name in
# the editor replaces one of these): every result shows ``extensions.cache`` (hits, misses,
# and per upstream call its status, tier and age), which is what a person exploring wants to
# see and what a frontend in production never asks for.
REQUEST_HEADERS: Mapping[str, str] = {"Gateway-Cache-Report": "true"}

ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
_CONTENT_TYPES: Mapping[str, str] = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}

# The one inline <style> GraphiQL itself adds: when a dialog (settings, short keys) opens,
# react-remove-scroll-bar (inside GraphiQL 4.1.2's dialogs) inserts a scroll-lock style whose
# text depends on the page's scrollbar gap and body margins, which our page style
# (static/page/graphiql-page.css) fixes at 0: the page never scrolls. Without this hash the
# browser blocks that style (harmless here) and logs a CSP error on every dialog. The browser
# test opens a dialog and fails on any CSP error, so a GraphiQL bump that changes this text is
# caught.
DIALOG_SCROLL_LOCK_STYLE_HASH = "'sha256-nzTgYzXYDNe6BAHiiI7NNlfK8n/auuOAhh2t92YvuXo='"

# Only this origin (and GraphiQL's own dialog style, by hash). GraphiQL's CSS embeds its fonts
# and a few icons as data: URLs; its scripts need neither eval nor inline code, and the page's
# configuration is a JSON data block, which a browser never runs.
GRAPHIQL_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        f"style-src 'self' {DIALOG_SCROLL_LOCK_STYLE_HASH}",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

GRAPHIQL_PAGE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": GRAPHIQL_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    """One file the page loads: a vendored one as MANIFEST.json lists it, or one of ours."""

    path: str  # its URL under the asset base, e.g. graphiql-4.1.2/graphiql.min.js
    role: str  # "script", "style" or "license"
    package: str
    version: str
    sha256: str
    size: int

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES.get(PurePosixPath(self.path).suffix, "application/octet-stream")

    @property
    def integrity(self) -> str:
        """The Subresource Integrity value of the file."""
        return "sha256-" + base64.b64encode(bytes.fromhex(self.sha256)).decode("ascii")


class AssetError(Exception):
    """MANIFEST.json is unreadable, lists an unsafe path, or a file differs from it; or a page
    file is missing."""


def _is_plain_relative(path: str) -> bool:
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and "\\" not in path and ".." not in pure.parts


def load_manifest(directory: Path = GRAPHIQL_DIR) -> tuple[Asset, ...]:
    """The files MANIFEST.json lists, in its order (the order the page loads scripts in)."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
        assets = tuple(
            Asset(
                path=str(entry["path"]),
                role=str(entry["role"]),
                package=str(entry["package"]),
                version=str(entry["version"]),
                sha256=str(entry["sha256"]),
                size=int(entry["size"]),
            )
            for entry in manifest["files"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AssetError(f"{directory / MANIFEST_NAME}: {exc}") from exc
    for asset in assets:
        if not _is_plain_relative(asset.path):
            raise AssetError(f"{MANIFEST_NAME} lists an unsafe path: {asset.path!r}")
    return assets


def _read_page_files(directory: Path) -> tuple[tuple[Asset, bytes], ...]:
    """Our page files with their bytes. Each URL is ``page-<first 16 hex of its sha256>/NAME``:
    an edited file gets a new URL, so immutable caching never serves a stale one."""
    files: list[tuple[Asset, bytes]] = []
    for name, role in PAGE_FILES:
        try:
            body = (directory / name).read_bytes()
        except OSError as exc:
            raise AssetError(f"page file {name}: {exc}") from exc
        digest = hashlib.sha256(body).hexdigest()
        asset = Asset(
            path=f"page-{digest[:16]}/{name}",
            role=role,
            package="numbers-gateway",
            version=digest[:16],
            sha256=digest,
            size=len(body),
        )
        files.append((asset, body))
    return tuple(files)


def load_page_assets(directory: Path = PAGE_DIR) -> tuple[Asset, ...]:
    """Our own page files (``PAGE_FILES``, in load order), as the page and routes name them."""
    return tuple(asset for asset, _ in _read_page_files(directory))


@lru_cache(maxsize=1)
def _default_assets() -> tuple[Asset, ...]:
    """What the page loads by default: the vendored files, then ours (our style after
    GraphiQL's, our script after the scripts it mounts)."""
    return load_manifest(GRAPHIQL_DIR) + load_page_assets(PAGE_DIR)


def _check_path(name: str, value: str, *, trailing_slash: bool) -> None:
    """Same-origin absolute paths only: ``/x``, never ``//host`` or ``https://host``."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        raise ValueError(f"{name} must be a path on this origin starting with one '/': {value!r}")
    if trailing_slash and not value.endswith("/"):
        raise ValueError(f"{name} must end with '/': {value!r}")


def _embed_json(value: object) -> str:
    """JSON safe inside a <script> element: no '<', so no '</script>' or '<!--'."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def operation_title(document: str, fallback: str) -> str:
    """The name of the first named operation in ``document``, else ``fallback``."""
    try:
        # The examples are this repository's files, but no document is parsed unbounded.
        parsed = parse(document, no_location=True, max_tokens=EXAMPLE_MAX_TOKENS)
    except GraphQLError:
        return fallback
    for definition in parsed.definitions:
        if isinstance(definition, OperationDefinitionNode) and definition.name is not None:
            return definition.name.value
    return fallback


def load_examples(directory: Path = EXAMPLES_DIR) -> list[tuple[str, str]]:
    """``(title, document)`` for each ``*.graphql`` in ``directory``, by file name; the title is
    the operation's name, or the file name without ``.graphql`` when it has none."""
    examples: list[tuple[str, str]] = []
    for path in sorted(directory.glob("*.graphql")):
        document = path.read_text(encoding="utf-8")
        examples.append((operation_title(document, path.stem), document))
    return examples


def render_graphiql_page(
    *,
    asset_base: str,
    examples: list[tuple[str, str]],
    graphql_path: str = GRAPHQL_PATH,
    default_headers: str = DEFAULT_HEADERS,
    request_headers: Mapping[str, str] = REQUEST_HEADERS,
    assets: Sequence[Asset] | None = None,
) -> str:
    """The GraphiQL page: scripts and styles from ``asset_base`` on this origin only (with
    SRI), one tab per ``(title, document)`` example, each with ``default_headers`` in its
    open headers editor, and a fetcher POSTing JSON to ``graphql_path`` with
    ``request_headers`` and the editor's; all of it handed to the page script as the JSON
    block ``#graphiql-config``. Serve it with
    ``GRAPHIQL_PAGE_HEADERS`` (``graphiql_response`` does). ``assets`` defaults to the
    vendored MANIFEST.json followed by our page files."""
    _check_path("asset_base", asset_base, trailing_slash=True)
    _check_path("graphql_path", graphql_path, trailing_slash=False)
    listed = _default_assets() if assets is None else tuple(assets)
    tabs = [{"query": document, "headers": default_headers} for _, document in examples]
    storage_key = hashlib.sha256(
        json.dumps([tabs, graphql_path], sort_keys=True).encode("utf-8")
    ).hexdigest()[:16]
    config = {
        "url": graphql_path,
        "assetBase": asset_base,
        "headers": default_headers,
        "requestHeaders": dict(request_headers),
        "storageKey": storage_key,
        "titles": [title for title, _ in examples],
        "tabs": tabs,
    }

    def url(asset: Asset) -> str:
        return html.escape(asset_base + asset.path, quote=True)

    styles = "\n".join(
        f'    <link rel="stylesheet" href="{url(a)}" integrity="{a.integrity}">'
        for a in listed
        if a.role == "style"
    )
    scripts = "\n".join(
        f'    <script src="{url(a)}" integrity="{a.integrity}"></script>'
        for a in listed
        if a.role == "script"
    )
    titles = ", ".join(html.escape(title) for title, _ in examples)
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <meta name="referrer" content="no-referrer">
    <title>numbers-gateway · GraphiQL</title>
    <link rel="icon" href="data:,">
{styles}
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL…</div>
    <noscript>GraphiQL needs JavaScript. Example operations: {titles}.
      POST them as JSON to {html.escape(graphql_path)}.</noscript>
    <script id="graphiql-config" type="application/json">{_embed_json(config)}</script>
{scripts}
  </body>
</html>
"""


def graphiql_response(page: str) -> HTMLResponse:
    """The page as a response carrying the CSP and the other ``GRAPHIQL_PAGE_HEADERS``."""
    return HTMLResponse(page, headers=dict(GRAPHIQL_PAGE_HEADERS))


def graphiql_routes(
    *,
    asset_base: str = ASSET_BASE,
    directory: Path = GRAPHIQL_DIR,
    page_directory: Path = PAGE_DIR,
) -> list[BaseRoute]:
    """``GET asset_base + PATH`` for exactly the files in MANIFEST.json and our page files
    (immutable caching, ETag = sha256, ``nosniff``); any other path, ``..`` included, is 404.
    The files are read once, here, and the vendored ones checked against their sha256: a file
    that differs raises ``AssetError``."""
    _check_path("asset_base", asset_base, trailing_slash=True)
    served: dict[str, tuple[Asset, bytes]] = {
        asset.path: (asset, body) for asset, body in _read_page_files(page_directory)
    }
    for asset in load_manifest(directory):
        try:
            body = (directory / asset.path).read_bytes()
        except OSError as exc:
            raise AssetError(f"{asset.path}: {exc}") from exc
        if hashlib.sha256(body).hexdigest() != asset.sha256 or len(body) != asset.size:
            raise AssetError(
                f"{asset.path} differs from {MANIFEST_NAME}: run `python tools/graphiql_refresh.py`"
            )
        served[asset.path] = (asset, body)

    async def serve_asset(request: Request) -> Response:
        found = served.get(request.path_params["path"])
        if found is None:
            return PlainTextResponse("Not Found", status_code=404)
        asset, body = found
        etag = f'"{asset.sha256}"'
        headers = {
            "Cache-Control": ASSET_CACHE_CONTROL,
            "ETag": etag,
            "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "same-origin",
        }
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=asset.content_type, headers=headers)

    return [Route(asset_base + "{path:path}", serve_asset, methods=["GET", "HEAD"])]
