"""The simulator's data changing on demand, so a change feed can be watched offline.

``POST /_simulator/changes`` takes one change or ``{"changes": [...]}``; each change names an
``action`` and the entry it acts on (``phoneNumber``, or ``locationId`` with ``extension``):

    {"action": "assign", "phoneNumber": "+19725550001", "owner": {"id": "...", "type": "PEOPLE",
     "firstName": "Ada", "lastName": "Lovelace"}}       # owner optional: a new person is made
    {"action": "unassign", "phoneNumber": "+19725550001"}
    {"action": "state", "phoneNumber": "+19725550001", "state": "INACTIVE"}
    {"action": "remove", "locationId": "...", "extension": "1234"}
    {"action": "add", "locationId": "...", "phoneNumber": "+19725559999"}   # both optional

``Churn`` makes random changes of those kinds at a steady rate (``simulator --churn RATE``),
applied when the next request arrives (as many as the time since the last one calls for), so
it needs no background task and behaves the same embedded or served.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from gateway.simulator.dataset import NumberEntry, SimulatedOrg, SimulatorWorld, webex_id

ACTIONS = ("assign", "unassign", "state", "add", "remove")
STATES = ("ACTIVE", "INACTIVE")
_CHURN_BURST = 1000  # changes one request may catch up on at most


class ChangeError(ValueError):
    """A change the simulator cannot make; the message says why (answered as 400)."""


def _find(world: SimulatorWorld, change: Mapping[str, Any]) -> tuple[SimulatedOrg, int]:
    number = change.get("phoneNumber")
    location_id, extension = change.get("locationId"), change.get("extension")
    if not isinstance(number, str) and not (
        isinstance(location_id, str) and isinstance(extension, str)
    ):
        raise ChangeError("name the entry by phoneNumber, or by locationId and extension")
    for org in world.orgs.values():
        for index, entry in enumerate(org.entries):
            if isinstance(number, str):
                if entry.phone_number == number:
                    return org, index
            elif entry.location_id == location_id and entry.extension == extension:
                return org, index
    raise ChangeError("no entry has that phoneNumber (or locationId and extension)")


def _owned(entry: NumberEntry, owner: Mapping[str, Any] | None) -> NumberEntry:
    payload = dict(entry.payload)
    if owner is None:
        payload.pop("owner", None)
        return dataclasses.replace(
            entry, payload=payload, owner_id=None, owner_type=None, owner_name="", last_name=None
        )
    owner = dict(owner)
    if not isinstance(owner.get("id"), str) or not isinstance(owner.get("type"), str):
        raise ChangeError("owner needs an id and a type")
    payload["owner"] = owner
    first, last = owner.get("firstName"), owner.get("lastName")
    names = " ".join(str(part) for part in (first, last) if part) or owner.get("displayName", "")
    return dataclasses.replace(
        entry,
        payload=payload,
        owner_id=owner["id"],
        owner_type=owner["type"],
        owner_name=str(names).lower(),
        last_name=last if isinstance(last, str) else None,
    )


def new_person(rng: random.Random) -> dict[str, Any]:
    first, last = rng.choice(("Ada", "Grace", "Alan", "Radia")), rng.choice(("Hopper", "Turing"))
    person_id = webex_id("PEOPLE", uuid.UUID(int=rng.getrandbits(128), version=4))
    return {
        "id": person_id,
        "type": "PEOPLE",
        "firstName": first,
        "lastName": last,
        "displayName": f"{first} {last}",
    }


def _new_entry(world: SimulatorWorld, change: Mapping[str, Any], rng: random.Random) -> NumberEntry:
    org = world.demo_org
    location_id = change.get("locationId", org.location_ids[0])
    location = next(
        (e.payload["location"] for o in world.orgs.values() for e in o.entries
         if e.location_id == location_id),
        None,
    )  # fmt: skip
    if location is None:
        raise ChangeError("no location has that locationId")
    number = change.get("phoneNumber") or f"+1999{rng.randrange(10**7):07d}"
    if not isinstance(number, str):
        raise ChangeError("phoneNumber must be a string")
    if any(e.phone_number == number for o in world.orgs.values() for e in o.entries):
        raise ChangeError("an entry with that phoneNumber exists already")
    payload = {
        "phoneNumber": number,
        "state": "ACTIVE",
        "phoneNumberType": "PRIMARY",
        "mainNumber": False,
        "includedTelephonyTypes": "PSTN_NUMBER",
        "tollFreeNumber": False,
        "isServiceNumber": False,
        "isReservedNumber": False,
        "elinEnabled": False,
        "location": dict(location),
    }
    return NumberEntry.from_payload(payload)


def apply_change(
    world: SimulatorWorld, change: Mapping[str, Any], rng: random.Random
) -> tuple[SimulatedOrg, dict[str, Any] | None]:
    """Make one change; the org it touched and the entry as it now is (None: removed)."""
    action = change.get("action")
    if action not in ACTIONS:
        raise ChangeError(f"action must be one of {', '.join(ACTIONS)}")
    if action == "add":
        entry = _new_entry(world, change, rng)
        org = next(o for o in world.orgs.values() if entry.location_id in o.location_ids)
        org.entries.append(entry)
        return org, entry.payload
    org, index = _find(world, change)
    entry = org.entries[index]
    if action == "remove":
        del org.entries[index]
        return org, None
    if action == "assign":
        owner = change.get("owner")
        if owner is not None and not isinstance(owner, Mapping):
            raise ChangeError("owner must be an object")
        entry = _owned(entry, owner if owner is not None else new_person(rng))
    elif action == "unassign":
        entry = _owned(entry, None)
    else:  # state
        state = change.get("state")
        if state not in STATES or entry.phone_number is None:
            raise ChangeError("state must be ACTIVE or INACTIVE, on an entry with a number")
        entry = dataclasses.replace(entry, payload={**entry.payload, "state": state}, state=state)
    org.entries[index] = entry
    return org, entry.payload


class Churn:
    """Random changes at ``rate`` per second, caught up on whenever a request arrives."""

    def __init__(
        self, rate: float, *, seed: int = 7, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.clock = clock
        self._last = clock()
        self._owed = 0.0

    def due(self) -> int:
        """How many changes the time since the last call asks for."""
        if self.rate <= 0:
            return 0
        now = self.clock()
        self._owed = min(_CHURN_BURST, self._owed + (now - self._last) * self.rate)
        self._last = now
        whole = int(self._owed)
        self._owed -= whole
        return whole

    def random_change(self, world: SimulatorWorld) -> dict[str, Any]:
        action = self.rng.choice(ACTIONS)
        org = world.demo_org
        if action == "add" or not org.entries:
            return {"action": "add"}
        entry = self.rng.choice(org.entries)
        if action == "state" and entry.phone_number is None:
            action = "assign" if entry.owner_id is None else "unassign"
        change: dict[str, Any] = {"action": action}
        if entry.phone_number is not None:
            change["phoneNumber"] = entry.phone_number
        else:
            change.update(locationId=entry.location_id, extension=entry.extension)
        if action == "state":
            change["state"] = "INACTIVE" if entry.state == "ACTIVE" else "ACTIVE"
        return change
