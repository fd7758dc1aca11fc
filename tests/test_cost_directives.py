"""The cost directives of the SDL (issue 29): every ``phoneNumbers``, ``numberCounts`` and
``phoneNumberChanges`` carries them, with the weights of the gateway's own estimate
(``execution.cost``), imported through the ``@link`` of federation 2.9. Routers compose and
read them end to end in ``tests/test_demand_control_e2e.py``."""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldDefinitionNode,
    ObjectTypeDefinitionNode,
    SchemaDefinitionNode,
    parse,
    value_from_ast_untyped,
)

from gateway.domain.arguments import DEFAULT_PAGE_SIZE
from gateway.execution.cost import CALL_COST
from gateway.schema.build import export_sdl
from tests.conftest import estimated_cost

SDL = parse(export_sdl())
PAGE_OWNERS = ("Query", "Location", "Person", "Organization")
COUNTS_OWNERS = ("Query", "Location", "Organization")


def fields() -> dict[tuple[str, str], FieldDefinitionNode]:
    return {
        (definition.name.value, field.name.value): field
        for definition in SDL.definitions
        if isinstance(definition, ObjectTypeDefinitionNode)
        for field in definition.fields or ()
    }


def applied(node: Any) -> dict[str, dict[str, Any]]:
    return {
        directive.name.value: {
            argument.name.value: value_from_ast_untyped(argument.value)
            for argument in directive.arguments or ()
        }
        for directive in node.directives or ()
    }


def test_the_link_imports_the_cost_directives_of_federation_2_9() -> None:
    schema = next(d for d in SDL.definitions if isinstance(d, SchemaDefinitionNode))
    assert applied(schema)["link"] == {
        "url": "https://specs.apollo.dev/federation/v2.9",
        "import": ["@cost", "@key", "@listSize", "@shareable"],
    }


def test_every_field_that_calls_the_upstream_carries_its_weight() -> None:
    found = fields()
    priced = {key for key, field in found.items() if "cost" in applied(field)}
    assert priced == {
        *((owner, "phoneNumbers") for owner in PAGE_OWNERS),
        *((owner, "numberCounts") for owner in COUNTS_OWNERS),
        ("Subscription", "phoneNumberChanges"),
    }
    for owner in PAGE_OWNERS:
        page = found[(owner, "phoneNumbers")]
        assert applied(page) == {
            "cost": {"weight": CALL_COST},
            "listSize": {
                "assumedSize": DEFAULT_PAGE_SIZE,
                "slicingArguments": ["first", "last"],
                "sizedFields": ["nodes", "edges"],
                "requireOneSlicingArgument": False,
            },
        }
        arguments = {argument.name.value: applied(argument) for argument in page.arguments or ()}
        assert arguments.pop("last") == {"cost": {"weight": CALL_COST}}
        assert all(not directives for directives in arguments.values()), arguments
    for owner in COUNTS_OWNERS:
        assert applied(found[(owner, "numberCounts")]) == {"cost": {"weight": CALL_COST}}


def test_the_weights_are_the_estimates_own() -> None:
    """Each weight is what the gateway's own estimate charges for the same thing."""
    page = estimated_cost("{ phoneNumbers { totalCount } }")
    assert page == CALL_COST  # @cost of phoneNumbers
    default = estimated_cost("{ phoneNumbers { nodes { phoneNumber } } }")
    assert default == CALL_COST + DEFAULT_PAGE_SIZE  # assumedSize, the nodes' size
    for size in ("first: 7", 'last: 7, before: "c"'):
        assert estimated_cost(f"{{ phoneNumbers({size}) {{ edges {{ cursor }} }} }}") == (
            CALL_COST + 7  # slicingArguments size the sized fields
        )
    probe = estimated_cost("{ phoneNumbers(last: 7) { nodes { phoneNumber } } }")
    assert probe == 2 * CALL_COST + 7  # @cost on `last`: the probe placing a tail window
    assert estimated_cost("{ numberCounts { total } }") == CALL_COST
    feed = fields()[("Subscription", "phoneNumberChanges")]
    poll = estimated_cost("subscription { phoneNumberChanges { kind } }")
    assert applied(feed) == {"cost": {"weight": poll}}
