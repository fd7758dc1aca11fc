"""The cost directives this subgraph publishes, so a router's demand control prices its fields
as the gateway's own estimate (``execution.cost``) does: the IBM cost directives as federation
2.9 defines them (``@cost``, ``@listSize``), imported through the SDL's ``@link``.

Weights, in the estimate's units (an upstream call is ``CALL_COST``, an item 1):

- every ``phoneNumbers`` field: ``@cost(weight: CALL_COST)`` (its upstream call) and
  ``@listSize`` sizing its ``nodes`` and ``edges`` (``sizedFields``) by Relay's ``first`` and
  ``last`` (``slicingArguments``); with neither, the page holds ``DEFAULT_PAGE_SIZE`` entries
  (``assumedSize``). ``requireOneSlicingArgument`` is false: both are optional (the gateway
  refuses a mix itself). ``page.first`` is not among them: the IBM spec and Apollo Router read
  an input object's field as a path (``"page.first"``), but neither composer accepts one
  (``@apollo/composition`` 2.14: "is not an argument of"; ``@theguild/federation-composition``
  0.27: "does not exist"), so a router prices ``page: {first: n}`` as a page without a size
  (Apollo Router: ``assumedSize``; Hive Gateway reads no ``assumedSize`` beside slicing
  arguments: one entry). The gateway's own estimate still refuses what it must;
- Relay's ``last``: ``@cost(weight: CALL_COST)`` on the argument, the probe that places a window
  at the list's end (``last`` without ``before``; with ``before`` the router overcounts by it);
- every ``numberCounts`` field: ``@cost(weight: CALL_COST)``;
- ``phoneNumberChanges``: one poll of its feed at the default settings (the counts call and a
  walk of ``GATEWAY_CHANGES_MAX_ITEMS`` entries, ``GATEWAY_MAX_PAGE_SIZE`` at a time).

A router adds its own weights (1 per object in the IBM model), multiplies by the lists around
a field and prices what it plans, so its estimate of an operation is at least this gateway's;
lists under ``@stream``, which the gateway prices by their calls, it prices held. The SDL is
static: a deployment with other limits than the defaults still publishes these weights.
"""

from __future__ import annotations

import math
from typing import Final

from strawberry.federation.schema_directives import Cost, ListSize

from gateway.domain.arguments import DEFAULT_PAGE_SIZE
from gateway.domain.query import CALL_COST
from gateway.settings import Settings

# The federation version whose @link defines @cost and @listSize.
COST_FEDERATION_VERSION: Final = "2.9"

# The fields a page's size applies to, and the arguments that set it.
SIZED_FIELDS: Final = ("nodes", "edges")
SLICING_ARGUMENTS: Final = ("first", "last")

_DEFAULT_FEED_ITEMS: Final[int] = Settings.model_fields["changes_max_items"].default
_DEFAULT_MAX_PAGE_SIZE: Final[int] = Settings.model_fields["max_page_size"].default
FEED_POLL_CALLS: Final = 1 + math.ceil(_DEFAULT_FEED_ITEMS / _DEFAULT_MAX_PAGE_SIZE)


def page_directives() -> list[object]:
    """What every ``phoneNumbers`` field carries: its call, and the size of its page."""
    return [
        Cost(weight=CALL_COST),
        ListSize(
            assumed_size=DEFAULT_PAGE_SIZE,
            slicing_arguments=list(SLICING_ARGUMENTS),
            sized_fields=list(SIZED_FIELDS),
            require_one_slicing_argument=False,
        ),
    ]


def counts_directives() -> list[object]:
    """What every ``numberCounts`` field carries: its call."""
    return [Cost(weight=CALL_COST)]


def tail_probe_directives() -> list[object]:
    """What Relay's ``last`` argument carries: the probe call a window at the end may make."""
    return [Cost(weight=CALL_COST)]


def feed_directives() -> list[object]:
    """What ``phoneNumberChanges`` carries: one poll of its feed at the default settings."""
    return [Cost(weight=FEED_POLL_CALLS * CALL_COST)]
