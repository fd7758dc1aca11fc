"""The committed SDL matches the code, and every part of the public schema is described."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    parse,
    print_schema,
)

from gateway.schema.build import build_schema, export_sdl, graphql_schema
from gateway.server.app import create_app
from gateway.settings import load_settings
from tests.conftest import graphql, running_gateway
from tests.test_transports import multipart_parts

with warnings.catch_warnings():
    # starlette's TestClient warns about its httpx dependency on import; only the WebSocket
    # test client is used here.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SDL_PATH = Path(__file__).resolve().parents[1] / "schema" / "numbers.graphql"


def test_committed_sdl_matches_the_code() -> None:
    assert SDL_PATH.read_text(encoding="utf-8") == export_sdl(), (
        "schema/numbers.graphql is stale: run 'make schema' and commit it"
    )


@pytest.mark.e2e
def test_export_schema_command_prints_the_sdl() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.server.cli", "export-schema"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == export_sdl()


def test_the_graphql_core_schema_is_the_one_strawberry_built() -> None:
    """``build.graphql_schema`` reads strawberry's private ``Schema._schema`` (no public
    accessor): this fails first if an upgrade renames or changes it."""
    schema = build_schema()
    built = graphql_schema(schema)
    assert isinstance(built, GraphQLSchema)
    assert built.query_type is not None
    assert built.query_type.name == "Query"
    assert print_schema(built) == print_schema(schema._schema)
    assert {"defer", "stream"} <= {directive.name for directive in built.directives}


def test_every_type_field_argument_and_enum_value_is_described() -> None:
    schema = graphql_schema(build_schema())
    missing: list[str] = []
    for name, named_type in schema.type_map.items():
        # Built-in scalars, introspection and the federation spec's own types (_Any,
        # _Entity, _Service, link__*) are described by their specs, not by us.
        if (
            name.startswith("_")
            or "__" in name
            or name in {"String", "Int", "Boolean", "ID", "Float"}
        ):
            continue
        if not named_type.description:
            missing.append(name)
        if isinstance(named_type, GraphQLObjectType):
            for field_name, field in named_type.fields.items():
                if field_name.startswith("_"):
                    continue  # _entities and _service: the federation spec's fields
                if not field.description:
                    missing.append(f"{name}.{field_name}")
                missing.extend(
                    f"{name}.{field_name}({arg})"
                    for arg, argument in field.args.items()
                    if not argument.description
                )
        if isinstance(named_type, GraphQLInputObjectType):
            missing.extend(
                f"{name}.{field_name}"
                for field_name, field in named_type.fields.items()
                if not field.description
            )
        if isinstance(named_type, GraphQLEnumType):
            missing.extend(
                f"{name}.{value}"
                for value, enum in named_type.values.items()
                if not enum.description
            )
    assert missing == []


def test_contract_surface() -> None:
    schema = graphql_schema(build_schema())
    query = schema.query_type
    assert query is not None
    phone_numbers = query.fields["phoneNumbers"]
    relay = {"first", "after", "last", "before"}
    assert set(phone_numbers.args) == {"orgId", "filter", "order", "page"} | relay
    for entity in ("Location", "Person", "Organization"):
        entity_type = schema.get_type(entity)
        assert isinstance(entity_type, GraphQLObjectType)
        assert set(entity_type.fields["phoneNumbers"].args) == {"filter", "order", "page"} | relay
        assert str(entity_type.fields["phoneNumbers"].type) == "PhoneNumberConnection"
    for name in ("first", "last"):
        assert str(phone_numbers.args[name].type) == "Int"
    for name in ("after", "before"):
        assert str(phone_numbers.args[name].type) == "String"
    assert str(phone_numbers.type) == "PhoneNumberConnection", "nullable on purpose"
    assert set(query.fields["numberCounts"].args) == {"orgId", "filter"}
    assert str(query.fields["numberCounts"].type) == "NumberCounts"
    connection = schema.get_type("PhoneNumberConnection")
    assert isinstance(connection, GraphQLObjectType)
    assert {name: str(f.type) for name, f in connection.fields.items()} == {
        "nodes": "[PhoneNumber!]!",
        "edges": "[PhoneNumberEdge!]!",
        "pageInfo": "PageInfo!",
        "totalCount": "Int!",
    }
    owner_type = schema.get_type("OwnerType")
    assert isinstance(owner_type, GraphQLEnumType)
    assert len(owner_type.values) == 18
    assert "direction: SortDirection! = ASC" in export_sdl()


EXAMPLES = sorted((SDL_PATH.parent / "examples").glob("*.graphql"))
EXAMPLE_TEXT = {path.name: path.read_text(encoding="utf-8") for path in EXAMPLES}


def test_there_are_example_operations() -> None:
    assert len(EXAMPLES) >= 3


def _is_subscription(text: str) -> bool:
    return any(
        isinstance(node, OperationDefinitionNode) and node.operation == OperationType.SUBSCRIPTION
        for node in parse(text).definitions
    )


@pytest.mark.parametrize(
    "name", sorted(name for name, text in EXAMPLE_TEXT.items() if not _is_subscription(text))
)
async def test_example_operations_run_against_the_simulator(name: str) -> None:
    text = EXAMPLE_TEXT[name]
    async with running_gateway(load_settings()) as client:
        if "@stream" not in text and "@defer" not in text:
            body = await graphql(client, text)
            assert "errors" not in body, body
            assert all(value is not None for value in body["data"].values())
            return
        # Incremental examples run as GraphiQL and Apollo Client run them: over multipart.
        response = await client.post(
            "/graphql", json={"query": text}, headers={"Accept": "multipart/mixed"}
        )
    assert response.status_code == 200, response.text
    payloads = [payload for _, payload in multipart_parts(response.content)]
    assert payloads[0]["hasNext"] is True
    assert payloads[-1]["hasNext"] is False
    for payload in payloads:
        assert "errors" not in payload, payload
        for entry in payload.get("incremental", ()):
            assert "errors" not in entry, entry
    assert all(value is not None for value in payloads[0]["data"].values())


@pytest.mark.parametrize(
    "name", sorted(name for name, text in EXAMPLE_TEXT.items() if _is_subscription(text))
)
def test_example_subscriptions_run_against_the_simulator(name: str) -> None:
    """A subscription example is run as GraphiQL runs it over graphql-transport-ws: its first
    event (the feed's baseline) arrives without errors."""
    with (
        TestClient(create_app(load_settings())) as client,
        client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as socket,
    ):
        socket.send_json({"type": "connection_init", "payload": {}})
        assert socket.receive_json()["type"] == "connection_ack"
        socket.send_json({"type": "subscribe", "id": "1", "payload": {"query": EXAMPLE_TEXT[name]}})
        message = socket.receive_json()
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        assert all(value is not None for value in message["payload"]["data"].values())
        socket.send_json({"type": "complete", "id": "1"})


async def test_graphiql_opens_with_a_tab_for_every_example() -> None:
    async with running_gateway(load_settings()) as client:
        page = await client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for text in EXAMPLE_TEXT.values():
        assert json.dumps(text).replace("<", "\\u003c") in page.text
