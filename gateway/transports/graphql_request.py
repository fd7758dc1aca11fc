"""Reading a GraphQL-over-HTTP request: the parameters of a GET or a POST, checked before
anything else looks at them.

The gateway parses bodies itself (orjson, then an iterative nesting bound), so a hostile body
can cost neither a recursion error nor a traceback: everything malformed is a
``Refusal`` with a 4xx status and a message a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request

from gateway.transports.refusals import Refusal

# No operation of this schema needs JSON nested deeper than a handful of levels (a filter
# holding a list); 32 leaves room for any client's envelope and none for a recursion bomb.
MAX_JSON_DEPTH = 32
GRAPHQL_PARAMETERS = frozenset({"query", "variables", "operationName", "extensions", "documentId"})


@dataclass(frozen=True, slots=True)
class GraphQLParams:
    """The request's GraphQL parameters, typed and checked."""

    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None
    document_id: str | None  # a trusted document's id (the persisted-documents proposal)

    @property
    def persisted_hash(self) -> str | None:
        """``extensions.persistedQuery.sha256Hash`` (Apollo's APQ), if sent."""
        persisted = (self.extensions or {}).get("persistedQuery")
        if not isinstance(persisted, dict):
            return None
        digest = persisted.get("sha256Hash")
        return digest if isinstance(digest, str) else None


@dataclass(frozen=True, slots=True)
class Batch:
    """A POST body holding a JSON array of operations (``GATEWAY_BATCH_MAX`` > 0), in order:
    each one's parameters, or why it cannot run."""

    operations: tuple[GraphQLParams | Refusal, ...]


def nesting_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``value`` nests deeper than ``limit``; iterative, so any depth is safe."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _json(raw: bytes | str, what: str) -> Any:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in exc.msg:  # orjson's own bound, far past ours
            raise Refusal(400, _too_deep(what)) from None
        raise Refusal(400, f"{what} is not valid JSON ({exc.msg}).") from None
    if nesting_depth_exceeds(value):
        raise Refusal(400, _too_deep(what))
    return value


def _too_deep(what: str) -> str:
    return f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels."


def _optional(data: dict[str, Any], name: str, kind: type, label: str) -> Any:
    value = data.get(name)
    if value is not None and not isinstance(value, kind):
        raise Refusal(400, f"'{name}' must be {label} or null.")
    return value


def _params(data: dict[str, Any]) -> GraphQLParams:
    query = _optional(data, "query", str, "a string")
    if query is not None and not query.strip():
        raise Refusal(400, "'query' is empty: send a GraphQL document.")
    document_id = _optional(data, "documentId", str, "a string")
    params = GraphQLParams(
        query=query,
        variables=_optional(data, "variables", dict, "an object"),
        operation_name=_optional(data, "operationName", str, "a string"),
        extensions=_optional(data, "extensions", dict, "an object"),
        document_id=document_id,
    )
    for text, name in ((params.query, "query"), (params.operation_name, "operationName")):
        if text is not None and not text.isascii() and not _encodable(text):
            raise Refusal(400, f"'{name}' holds text that is not valid Unicode.")
    if params.query is None and params.document_id is None and params.persisted_hash is None:
        raise Refusal(400, "No GraphQL document: send 'query' (or a persisted query's hash or id).")
    return params


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a JSON \\ud800 escape
        return False
    return True


def params_from_body(body: bytes, *, batch_max: int = 0) -> GraphQLParams | Batch:
    """A POST body: one JSON object, or (with ``batch_max`` > 0) a JSON array of at most
    ``batch_max`` of them. A batch element that is not a valid operation becomes that
    operation's refusal; the others still run."""
    data = _json(body, "The request body")
    if isinstance(data, list):
        return _batch(data, batch_max)
    if not isinstance(data, dict):
        raise Refusal(400, "The request body must be a JSON object with a 'query' string.")
    return _params(data)


def _batch(data: list[Any], batch_max: int) -> Batch:
    if batch_max <= 0:
        raise Refusal(400, "Batched operations are not supported here: send one JSON object.")
    if not data:
        raise Refusal(400, "The batch is empty: send at least one operation.")
    if len(data) > batch_max:
        raise Refusal(
            400,
            f"The batch has {len(data)} operations; at most {batch_max} are allowed "
            "(GATEWAY_BATCH_MAX).",
        )
    return Batch(tuple(_batch_element(element) for element in data))


def _batch_element(element: Any) -> GraphQLParams | Refusal:
    if not isinstance(element, dict):
        return Refusal(400, "Each operation of a batch must be a JSON object with a 'query'.")
    try:
        return _params(element)
    except Refusal as refusal:
        return refusal


def params_from_query_string(query_params: QueryParams) -> GraphQLParams:
    """A GET: ``query`` and ``operationName`` as text, ``variables`` and ``extensions`` as
    JSON text."""
    data: dict[str, Any] = {}
    for name in GRAPHQL_PARAMETERS:
        values = query_params.getlist(name)
        if len(values) > 1:
            raise Refusal(400, f"'{name}' is given {len(values)} times; give it once.")
        if values:
            data[name] = values[0]
    for name in ("variables", "extensions"):
        if name in data:
            data[name] = _json(data[name], f"'{name}'") if data[name] else None
    return _params(data)


async def params_of(request: Request, *, batch_max: int = 0) -> GraphQLParams | Batch:
    """A GET's or a POST's parameters; a POST must be JSON (415 otherwise) and may be a
    batch when ``batch_max`` > 0 (a GET never is)."""
    if request.method == "GET":
        return _get_params(request)
    content_type = request.headers.get("content-type", "")
    essence = content_type.split(";")[0].strip().lower()
    if essence != "application/json":
        raise Refusal(
            415,
            "POST a JSON body with 'Content-Type: application/json'.",
            headers={"Accept-Post": "application/json"},
        )
    return params_from_body(await request.body(), batch_max=batch_max)


def _get_params(request: Request) -> GraphQLParams:
    """A GET's parameters; those of a recent query string are read once (a repeated GET
    costs a dictionary lookup, not a parse of the URL and its JSON). Refusals are never
    kept; the kept parameters are shared and never changed."""
    raw: bytes = request.scope.get("query_string", b"")
    params = _recent_get_params.get(raw)
    if params is None:
        params = params_from_query_string(request.query_params)
        if len(raw) <= _RECENT_GET_BYTES_MAX:
            if len(_recent_get_params) >= _RECENT_GET_MAX:
                _recent_get_params.pop(next(iter(_recent_get_params)))  # the oldest
            _recent_get_params[raw] = params
    return params


# Recent GET query strings and their parameters: bounded in count and in each one's size.
_RECENT_GET_MAX = 256
_RECENT_GET_BYTES_MAX = 8 * 1024
_recent_get_params: dict[bytes, GraphQLParams] = {}


def has_graphql_parameters(query_params: QueryParams) -> bool:
    """Whether a GET carries an operation (otherwise it may be a browser opening the IDE)."""
    return any(name in query_params for name in GRAPHQL_PARAMETERS)
