"""GraphiQL served by the gateway itself, so it works offline: our page, our asset routes.

The page is ours (strawberry's template loads its scripts from a public CDN): a small HTML
document that loads React, ReactDOM and GraphiQL from the gateway's own origin (the files
vendored under ``static/graphiql/`` and listed in its ``MANIFEST.json``, see
``tools/graphiql_refresh.py``), and mounts GraphiQL with one tab per example operation,
the headers editor open, and a fetcher that POSTs ``application/json`` to the GraphQL path
(operations with ``@defer``/``@stream`` and subscriptions ask for ``text/event-stream`` and
hand GraphiQL each payload as it arrives).

- ``render_graphiql_page(...)``: the HTML. Its one inline script is constant (the examples
  travel in a JSON data block), so ``GRAPHIQL_CSP`` can name it by hash.
- ``graphiql_response(html)``: an ``HTMLResponse`` with ``GRAPHIQL_PAGE_HEADERS`` (the CSP).
- ``graphiql_routes(...)``: Starlette routes serving exactly the files in MANIFEST.json,
  cached as immutable (each URL names the package version); anything else is 404.
- ``load_examples()``: the example operations shipped in ``static/examples/`` (copies of
  ``schema/examples/``; a test keeps them identical).

Every script and stylesheet tag carries its sha256 as ``integrity``, so the browser refuses a
file that differs from the manifest.
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
MANIFEST_NAME = "MANIFEST.json"

# A hint in the headers editor of every tab; against the embedded simulator no header means
# demo-admin anyway, and another demo token is one edit away.
DEFAULT_HEADERS = '{\n  "Authorization": "Bearer demo-admin"\n}'

ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
_CONTENT_TYPES: Mapping[str, str] = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}

PAGE_STYLE = "html,body{height:100%;margin:0}#graphiql{height:100vh}"

# The page's only inline script. It is constant (configuration comes from the JSON block
# #graphiql-config), so the CSP allows it by hash. Tab state is kept in localStorage under a
# key that changes with the examples, so a changed example set opens fresh tabs instead of
# what an older page (or strawberry's GraphiQL on this origin) left behind; headers (tokens)
# are never stored.
BOOT_SCRIPT = """
(function () {
  "use strict";
  var root = document.getElementById("graphiql");
  var config = JSON.parse(document.getElementById("graphiql-config").textContent);
  if (!window.React || !window.ReactDOM || !window.GraphiQL) {
    root.textContent = "GraphiQL could not start: its scripts did not load from " +
      config.assetBase;
    return;
  }

  // Operations that stream (@defer, @stream, subscriptions) go as GraphQL over SSE and come
  // back as an async iterable, whose payloads GraphiQL shows (and merges) as they arrive.
  var STREAMING = /@(defer|stream)\\b|\\bsubscription\\b/;

  function readEvents(response) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffered = "";
    var queue = [];
    var finished = false;
    function pull() {
      if (queue.length) { return Promise.resolve({value: queue.shift(), done: false}); }
      if (finished) { return Promise.resolve({value: undefined, done: true}); }
      return reader.read().then(function (chunk) {
        if (chunk.done) { finished = true; return pull(); }
        buffered += decoder.decode(chunk.value, {stream: true});
        var blocks = buffered.split("\\n\\n");
        buffered = blocks.pop();
        blocks.forEach(function (block) {
          var event = null;
          var data = "";
          block.split("\\n").forEach(function (line) {
            if (line.indexOf("event: ") === 0) { event = line.slice(7); }
            else if (line.indexOf("data: ") === 0) { data += line.slice(6); }
          });
          if (event === "next") { queue.push(JSON.parse(data)); }
          else if (event === "complete") { finished = true; }
        });
        return pull();
      });
    }
    var iterator = {
      next: pull,
      return: function () {
        finished = true;
        reader.cancel();
        return Promise.resolve({value: undefined, done: true});
      }
    };
    iterator[Symbol.asyncIterator] = function () { return iterator; };
    return iterator;
  }

  function fetcher(params, options) {
    var streaming = STREAMING.test(params.query || "");
    var headers = {
      "Content-Type": "application/json",
      "Accept": streaming ? "text/event-stream, application/json" : "application/json"
    };
    var extra = (options && options.headers) || {};
    Object.keys(extra).forEach(function (name) { headers[name] = String(extra[name]); });
    return fetch(config.url, {
      method: "POST",
      headers: headers,
      body: JSON.stringify(params),
      credentials: "same-origin"
    }).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      if (type.indexOf("text/event-stream") === 0) { return readEvents(response); }
      return response.text().then(function (text) {
        try {
          return JSON.parse(text);
        } catch (error) {
          return {errors: [{message: "HTTP " + response.status + " with a body that is not JSON: " +
            text.slice(0, 500)}]};
        }
      });
    });
  }

  var prefix = "numbers-gateway:" + config.storageKey + ":";
  var memory = {};
  var local = null;
  try {
    local = window.localStorage;
    local.getItem(prefix);
  } catch (error) {
    local = null;
  }
  function ownKeys() {
    if (!local) { return Object.keys(memory); }
    var keys = [];
    for (var i = 0; i < local.length; i += 1) {
      var key = local.key(i);
      if (key !== null && key.indexOf(prefix) === 0) { keys.push(key.slice(prefix.length)); }
    }
    return keys;
  }
  var storage = {
    getItem: function (key) {
      if (local) { return local.getItem(prefix + key); }
      return Object.prototype.hasOwnProperty.call(memory, key) ? memory[key] : null;
    },
    setItem: function (key, value) {
      if (local) { local.setItem(prefix + key, value); } else { memory[key] = String(value); }
    },
    removeItem: function (key) {
      if (local) { local.removeItem(prefix + key); } else { delete memory[key]; }
    },
    clear: function () { ownKeys().forEach(function (key) { storage.removeItem(key); }); },
    key: function (index) { return ownKeys()[index] || null; },
    get length() { return ownKeys().length; }
  };

  ReactDOM.createRoot(root).render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultTabs: config.tabs,
    defaultHeaders: config.headers,
    isHeadersEditorEnabled: true,
    defaultEditorToolsVisibility: "headers",
    shouldPersistHeaders: false,
    storage: storage
  }));
})();
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


# The one inline <style> GraphiQL itself adds: when a dialog (settings, short keys) opens,
# react-remove-scroll-bar (inside GraphiQL 4.1.2's dialogs) inserts a scroll-lock style whose
# text depends on the page's scrollbar gap and body margins, which PAGE_STYLE fixes at 0 (the
# page never scrolls). Without it the browser blocks that style (harmless here) and logs a CSP
# error on every dialog. The browser test opens a dialog and fails on any CSP error, so a
# GraphiQL bump that changes this text is caught.
DIALOG_SCROLL_LOCK_STYLE_HASH = "'sha256-nzTgYzXYDNe6BAHiiI7NNlfK8n/auuOAhh2t92YvuXo='"

# Only this origin, plus our one inline script and style by hash. GraphiQL's CSS embeds its
# fonts and a few icons as data: URLs; its scripts need neither eval nor inline code.
GRAPHIQL_CSP = "; ".join(
    [
        "default-src 'none'",
        f"script-src 'self' {_csp_hash(BOOT_SCRIPT)}",
        f"style-src 'self' {_csp_hash(PAGE_STYLE)} {DIALOG_SCROLL_LOCK_STYLE_HASH}",
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
    """One vendored file as MANIFEST.json lists it."""

    path: str  # relative to static/graphiql/, POSIX separators, e.g. graphiql-4.1.2/graphiql.min.js
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
    """MANIFEST.json is unreadable, lists an unsafe path, or a file differs from it."""


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


@lru_cache(maxsize=1)
def _default_manifest() -> tuple[Asset, ...]:
    return load_manifest(GRAPHIQL_DIR)


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
        parsed = parse(document, no_location=True)
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
    assets: Sequence[Asset] | None = None,
) -> str:
    """The GraphiQL page: scripts and styles from ``asset_base`` on this origin only (with
    SRI), one tab per ``(title, document)`` example, each with ``default_headers`` in its
    open headers editor, and a fetcher POSTing JSON to ``graphql_path``. Serve it with
    ``GRAPHIQL_PAGE_HEADERS`` (``graphiql_response`` does). ``assets`` defaults to the
    vendored MANIFEST.json."""
    _check_path("asset_base", asset_base, trailing_slash=True)
    _check_path("graphql_path", graphql_path, trailing_slash=False)
    listed = _default_manifest() if assets is None else tuple(assets)
    tabs = [{"query": document, "headers": default_headers} for _, document in examples]
    storage_key = hashlib.sha256(
        json.dumps([tabs, graphql_path], sort_keys=True).encode("utf-8")
    ).hexdigest()[:16]
    config = {
        "url": graphql_path,
        "assetBase": asset_base,
        "headers": default_headers,
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
    <style>{PAGE_STYLE}</style>
{styles}
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL…</div>
    <noscript>GraphiQL needs JavaScript. Example operations: {titles}.
      POST them as JSON to {html.escape(graphql_path)}.</noscript>
    <script id="graphiql-config" type="application/json">{_embed_json(config)}</script>
{scripts}
    <script>{BOOT_SCRIPT}</script>
  </body>
</html>
"""


def graphiql_response(page: str) -> HTMLResponse:
    """The page as a response carrying the CSP and the other ``GRAPHIQL_PAGE_HEADERS``."""
    return HTMLResponse(page, headers=dict(GRAPHIQL_PAGE_HEADERS))


def graphiql_routes(
    *, asset_base: str = ASSET_BASE, directory: Path = GRAPHIQL_DIR
) -> list[BaseRoute]:
    """``GET asset_base + PATH`` for exactly the files in MANIFEST.json (immutable caching,
    ETag = sha256, ``nosniff``); any other path, ``..`` included, is 404. The files are read
    and checked against their sha256 once, here: a file that differs raises ``AssetError``."""
    _check_path("asset_base", asset_base, trailing_slash=True)
    served: dict[str, tuple[Asset, bytes]] = {}
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
