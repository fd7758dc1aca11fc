"""The simulator's world: demo organizations, their numbers, and the demo tokens' rights.

The data is generated from a seed so every run (and every test) sees the same org. Each entry
keeps the exact JSON the upstream would send (``payload``) beside the few facts the filters
need, so serving a page copies nothing.

Owners are shaped as the current spec describes them: people and virtual lines have a first
name, a last name and a display name; workspaces and features (auto attendants, call queues,
hunt groups, ...) only a display name. Some PSTN numbers are ELINs (emergency callback numbers),
and a few of their owners carry a temporary ELIN assignment's ``elinExpiryTime``.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

DEMO_ORG_NAME = "Acme Telecom (demo)"
PARTNER_CUSTOMER_ORG_NAME = "Globex Corp (partner customer)"
MAIN_READ_SCOPE = "spark-admin:telephony_config_read"

# Every owner type seen in responses across spec versions.
OWNER_TYPES = (
    "PEOPLE",
    "PLACE",
    "VIRTUAL_LINE",
    "AUTO_ATTENDANT",
    "CALL_QUEUE",
    "GROUP_PAGING",
    "PAGING_GROUP",
    "HUNT_GROUP",
    "VOICE_MESSAGING",
    "OFFICE_ANYWHERE",
    "BROADWORKS_ANYWHERE",
    "CONTACT_CENTER_LINK",
    "CONTACT_CENTER_ADAPTER",
    "ROUTE_LIST",
    "VOICEMAIL_GROUP",
    "COLLABORATE_BRIDGE",
    "AI_RECEPTIONIST",
)
NAMED_OWNER_TYPES = frozenset({"PEOPLE", "VIRTUAL_LINE"})
FEATURE_OWNER_TYPES = ("AUTO_ATTENDANT", "CALL_QUEUE", "HUNT_GROUP")
# Share of assigned or unassigned PSTN numbers (not toll-free, not mobile) that are ELINs, and
# of those with a person as owner, the share with a temporary ELIN assignment that expires.
ELIN_SHARE = 0.12
ELIN_EXPIRY_SHARE = 0.3
# Temporary ELIN assignments expire within a day of this instant (fixed: the data is seeded).
_ELIN_EPOCH = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)

_DISPLAY_TOPICS = (
    "Sales", "Support", "Billing", "Reception", "After Hours", "Front Desk", "Operations",
    "Facilities", "IT Help", "Main Line",
)  # fmt: skip
_DISPLAY_KINDS = {
    "PLACE": "Workspace",
    "AUTO_ATTENDANT": "Auto Attendant",
    "CALL_QUEUE": "Queue",
    "GROUP_PAGING": "Paging",
    "PAGING_GROUP": "Paging",
    "HUNT_GROUP": "Hunt Group",
    "VOICE_MESSAGING": "Voice Messaging",
    "OFFICE_ANYWHERE": "Office Anywhere",
    "BROADWORKS_ANYWHERE": "Anywhere",
    "CONTACT_CENTER_LINK": "Contact Center Link",
    "CONTACT_CENTER_ADAPTER": "Contact Center Adapter",
    "ROUTE_LIST": "Route List",
    "VOICEMAIL_GROUP": "Voicemail Group",
    "COLLABORATE_BRIDGE": "Bridge",
    "AI_RECEPTIONIST": "AI Receptionist",
}

_FIRST_NAMES = (
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Tim",
    "Frances", "John", "Katherine", "Dennis", "Sophie", "Linus", "Hedy", "Vint", "Anita", "Guido",
    "Priya", "Arjun", "Mei", "Kenji", "Amara", "Lucas", "Ingrid", "Mateo", "Zara", "Omar",
)  # fmt: skip
_LAST_NAMES = (
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson",
    "Perlman", "Berners-Lee", "Allen", "McCarthy", "Johnson", "Ritchie", "Wilson", "Torvalds",
    "Lamarr", "Cerf", "Borg", "van Rossum", "Raman", "Iyer", "Chen", "Sato", "Okafor", "Silva",
    "Larsen", "Garcia", "Haddad", "Nakamura",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LocationSpec:
    name: str
    country_code: str
    area_code: str
    routing_prefix: str
    toll_free_prefix: str
    restricted_non_geo_prefix: str


_DEMO_LOCATIONS = (
    LocationSpec("Richardson", "1", "972", "8001", "800", "900"),
    LocationSpec("Washington", "1", "202", "8002", "888", "976"),
    LocationSpec("Bangalore", "91", "80", "8003", "1800", "1860"),
    LocationSpec("London", "44", "20", "8004", "800", "70"),
    LocationSpec("San Jose", "1", "408", "8005", "877", "900"),
)
_PARTNER_CUSTOMER_LOCATIONS = (
    LocationSpec("Toronto", "1", "416", "7001", "866", "900"),
    LocationSpec("Sydney", "61", "2", "7002", "1800", "190"),
    LocationSpec("Berlin", "49", "30", "7003", "800", "900"),
)


def webex_id(kind: str, raw_uuid: uuid.UUID | str) -> str:
    """Webex ids are unpadded base64url of ``ciscospark://us/<KIND>/<uuid>``."""
    text = f"ciscospark://us/{kind}/{raw_uuid}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@dataclass(slots=True)
class NumberEntry:
    """One entry as the upstream sends it, plus what its filters look at."""

    payload: dict[str, Any]
    location_id: str
    phone_number: str | None
    extension: str | None
    owner_id: str | None
    owner_type: str | None
    owner_name: str  # "first last" (or the display name), lower-cased, for ownerName search
    last_name: str | None
    state: str | None
    phone_number_type: str | None
    telephony_type: str
    toll_free: bool
    service: bool
    reserved: bool
    restricted_non_geo: bool
    elin: bool = False

    @property
    def available(self) -> bool:
        """An available number is a real number that nobody owns and that isn't reserved."""
        return self.phone_number is not None and self.owner_id is None and not self.reserved

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> NumberEntry:
        """Index an item shaped like the upstream's (used for ``--data FILE``)."""
        location = payload.get("location") or {}
        owner = payload.get("owner") or {}
        first, last = owner.get("firstName"), owner.get("lastName")
        names = " ".join(part for part in (first, last) if part) or owner.get("displayName") or ""
        number = payload.get("phoneNumber") or None
        return cls(
            payload=dict(payload),
            location_id=str(location.get("id", "")),
            phone_number=number,
            extension=payload.get("extension") or None,
            owner_id=owner.get("id"),
            owner_type=owner.get("type"),
            owner_name=str(names).lower(),
            last_name=last,
            state=payload.get("state"),
            phone_number_type=payload.get("phoneNumberType"),
            telephony_type=payload.get("includedTelephonyTypes") or "PSTN_NUMBER",
            toll_free=bool(payload.get("tollFreeNumber")),
            service=bool(payload.get("isServiceNumber")),
            reserved=bool(payload.get("isReservedNumber")),
            restricted_non_geo=bool(payload.get("restrictedNonGeoNumber")),
            elin=payload.get("elinEnabled") is True,
        )


@dataclass(slots=True)
class SimulatedOrg:
    id: str
    name: str
    location_ids: tuple[str, ...]
    entries: list[NumberEntry]


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a demo token may do: its own org, read scope, location scoping, managed orgs."""

    description: str
    own_org_id: str
    has_read_scope: bool = True
    location_ids: frozenset[str] | None = None  # None: every location of the org
    managed_org_ids: frozenset[str] = frozenset()

    def may_read(self, org_id: str) -> bool:
        return org_id == self.own_org_id or org_id in self.managed_org_ids


@dataclass(slots=True)
class SimulatorWorld:
    orgs: dict[str, SimulatedOrg]
    tokens: dict[str, TokenGrant] = field(default_factory=dict)

    @property
    def demo_org(self) -> SimulatedOrg:
        return next(iter(self.orgs.values()))


DEMO_TOKEN_DESCRIPTIONS = {
    "demo-admin": "full admin of the demo org",
    "demo-readonly": "read-only admin of the demo org",
    "demo-location-admin": "admin of one location of the demo org: sees only its numbers",
    "demo-no-scope": "lacks spark-admin:telephony_config_read: every call is 403",
    "demo-partner": "partner admin: may pass orgId of the second demo org",
}


def demo_tokens(
    demo_org: SimulatedOrg, partner_customer: SimulatedOrg | None
) -> dict[str, TokenGrant]:
    first_location = frozenset(demo_org.location_ids[:1])
    managed = frozenset({partner_customer.id}) if partner_customer else frozenset()
    own = demo_org.id
    return {
        "demo-admin": TokenGrant(DEMO_TOKEN_DESCRIPTIONS["demo-admin"], own),
        "demo-readonly": TokenGrant(DEMO_TOKEN_DESCRIPTIONS["demo-readonly"], own),
        "demo-location-admin": TokenGrant(
            DEMO_TOKEN_DESCRIPTIONS["demo-location-admin"], own, location_ids=first_location
        ),
        "demo-no-scope": TokenGrant(
            DEMO_TOKEN_DESCRIPTIONS["demo-no-scope"], own, has_read_scope=False
        ),
        "demo-partner": TokenGrant(
            DEMO_TOKEN_DESCRIPTIONS["demo-partner"], own, managed_org_ids=managed
        ),
    }


class _OrgBuilder:
    """Generates one org's entries with a mix like the upstream docs' example response."""

    def __init__(self, rng: random.Random, name: str, locations: Sequence[LocationSpec]) -> None:
        self.rng = rng
        self.org_id = webex_id("ORGANIZATION", self._uuid())
        self.name = name
        self.locations = [(spec, webex_id("LOCATION", self._uuid())) for spec in locations]
        self.number_counters = [0] * len(locations)
        self.issued_numbers: set[str] = set()
        self.extension_counters = [100] * len(locations)
        self.entries: list[NumberEntry] = []
        self.owner_type_cycle = list(OWNER_TYPES)
        # ELINs and display names draw from their own generator (seeded by the org), so the
        # rest of the data is what it was before they existed.
        self.extras = random.Random(self.org_id)

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _next_number(self, index: int, prefix: str | None = None) -> str:
        """The location's next number; never one the org already has (two locations of one
        country may share a non-geographic prefix, and a number is unique in an org)."""
        spec = self.locations[index][0]
        area = prefix if prefix is not None else spec.area_code
        while True:
            self.number_counters[index] += 1
            serial = self.number_counters[index]
            number = f"+{spec.country_code}{area}{555 + serial // 10_000:03d}{serial % 10_000:04d}"
            if number not in self.issued_numbers:
                self.issued_numbers.add(number)
                return number

    def _next_extension(self, index: int) -> str:
        self.extension_counters[index] += 1
        return str(self.extension_counters[index])

    def _owner(self, owner_type: str) -> dict[str, Any]:
        kind = {"PEOPLE": "PEOPLE", "PLACE": "PLACE", "VIRTUAL_LINE": "VIRTUAL_LINE"}.get(
            owner_type, "FEATURE"
        )
        owner: dict[str, Any] = {"id": webex_id(kind, self._uuid()), "type": owner_type}
        if owner_type in NAMED_OWNER_TYPES:
            owner["firstName"] = self.rng.choice(_FIRST_NAMES)
            owner["lastName"] = self.rng.choice(_LAST_NAMES)
            owner["displayName"] = f"{owner['firstName']} {owner['lastName']}"
        else:
            topic = self.extras.choice(_DISPLAY_TOPICS)
            owner["displayName"] = f"{topic} {_DISPLAY_KINDS.get(owner_type, owner_type.title())}"
        return owner

    def _pick_owner_type(self) -> str:
        # The first owners cycle through every type so the smallest org still has them all.
        if self.owner_type_cycle:
            return self.owner_type_cycle.pop(0)
        return self.rng.choices(
            ("PEOPLE", "PLACE", "VIRTUAL_LINE", "AUTO_ATTENDANT", "CALL_QUEUE", "HUNT_GROUP"),
            weights=(70, 10, 5, 5, 5, 5),
        )[0]

    def add(
        self,
        index: int,
        *,
        with_number: bool,
        owner_type: str | None,
        telephony_type: str = "PSTN_NUMBER",
        main: bool = False,
        toll_free: bool = False,
        restricted_non_geo: bool = False,
        service: bool = False,
        reserved: bool = False,
        inactive: bool = False,
    ) -> None:
        spec, location_id = self.locations[index]
        payload: dict[str, Any] = {}
        number: str | None = None
        if with_number:
            prefix = (
                spec.toll_free_prefix
                if toll_free
                else spec.restricted_non_geo_prefix
                if restricted_non_geo
                else None
            )
            number = self._next_number(index, prefix)
            payload["phoneNumber"] = number
        else:
            payload["phoneNumber"] = None
        extension = None
        if (owner_type is not None and owner_type not in FEATURE_OWNER_TYPES) or not with_number:
            extension = self._next_extension(index)
            payload["extension"] = extension
            payload["routingPrefix"] = spec.routing_prefix
            payload["esn"] = spec.routing_prefix + extension
        state = phone_number_type = None
        if with_number:
            state = "INACTIVE" if inactive else "ACTIVE"
            phone_number_type = self.rng.choices(
                ("PRIMARY", "ALTERNATE", "FAX", "DNIS"), weights=(85, 9, 3, 3)
            )[0]
            payload["state"] = state
            payload["phoneNumberType"] = phone_number_type
        payload["mainNumber"] = main
        payload["includedTelephonyTypes"] = telephony_type
        if telephony_type == "MOBILE_NUMBER":
            payload["mobileNetwork"] = self.rng.choice(("AT&T", "Verizon", "T-Mobile"))
            payload["routingProfile"] = "AttRtPf"
        payload["tollFreeNumber"] = toll_free
        payload["isServiceNumber"] = service
        elin = (
            with_number
            and telephony_type == "PSTN_NUMBER"
            and not toll_free
            and self.extras.random() < ELIN_SHARE
        )
        if with_number:
            payload["isReservedNumber"] = reserved
            payload["elinEnabled"] = elin
        payload["location"] = {"id": location_id, "name": spec.name}
        owner = self._owner(owner_type) if owner_type is not None else None
        if owner is not None:
            if elin and owner_type == "PEOPLE" and self.extras.random() < ELIN_EXPIRY_SHARE:
                expiry = _ELIN_EPOCH + timedelta(minutes=self.extras.randrange(24 * 60))
                owner["elinExpiryTime"] = expiry.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            payload["owner"] = owner
        self.entries.append(
            NumberEntry(
                payload=payload,
                location_id=location_id,
                phone_number=number,
                extension=extension,
                owner_id=owner["id"] if owner else None,
                owner_type=owner_type,
                owner_name=(
                    " ".join(str(owner[key]) for key in ("firstName", "lastName") if key in owner)
                    or str(owner["displayName"])
                ).lower()
                if owner
                else "",
                last_name=owner.get("lastName") if owner else None,
                state=state,
                phone_number_type=phone_number_type,
                telephony_type=telephony_type,
                toll_free=toll_free,
                service=service,
                reserved=reserved,
                restricted_non_geo=restricted_non_geo,
                elin=elin,
            )
        )

    def populate(self, size: int) -> SimulatedOrg:
        location_count = len(self.locations)
        for index in range(location_count):
            # One main number (the location's caller ID) per location, owned by nobody.
            self.add(index, with_number=True, owner_type=None, main=True)
        while len(self.entries) < size:
            index = self.rng.randrange(location_count)
            roll = self.rng.random()
            if roll < 0.55:  # extension-only: a person or workspace with no DID
                self.add(index, with_number=False, owner_type=self._pick_owner_type())
            elif roll < 0.78:  # assigned PSTN number
                self.add(
                    index,
                    with_number=True,
                    owner_type=self._pick_owner_type(),
                    inactive=self.rng.random() < 0.05,
                )
            elif roll < 0.93:  # unassigned PSTN number, some reserved, some not yet active
                self.add(
                    index,
                    with_number=True,
                    owner_type=None,
                    reserved=self.rng.random() < 0.15,
                    inactive=self.rng.random() < 0.1,
                )
            elif roll < 0.95:  # mobile number: only people own them
                self.add(
                    index, with_number=True, owner_type="PEOPLE", telephony_type="MOBILE_NUMBER"
                )
            elif roll < 0.97:  # service (high-concurrency) number on a feature
                self.add(
                    index,
                    with_number=True,
                    owner_type=self.rng.choice(FEATURE_OWNER_TYPES),
                    service=True,
                )
            elif roll < 0.985:
                self.add(index, with_number=True, owner_type=None, toll_free=True)
            else:
                self.add(index, with_number=True, owner_type=None, restricted_non_geo=True)
        return SimulatedOrg(
            id=self.org_id,
            name=self.name,
            location_ids=tuple(location_id for _, location_id in self.locations),
            entries=self.entries,
        )


def build_demo_world(size: int = 1000, seed: int = 7) -> SimulatorWorld:
    """The demo org with ``size`` entries, and a smaller second org that only a partner reads."""
    rng = random.Random(seed)
    demo = _OrgBuilder(rng, DEMO_ORG_NAME, _DEMO_LOCATIONS).populate(size)
    customer_size = max(50, size // 10)
    customer = _OrgBuilder(rng, PARTNER_CUSTOMER_ORG_NAME, _PARTNER_CUSTOMER_LOCATIONS).populate(
        customer_size
    )
    return SimulatorWorld(
        orgs={demo.id: demo, customer.id: customer}, tokens=demo_tokens(demo, customer)
    )


def world_from_items(items: Iterable[Mapping[str, Any]], seed: int = 7) -> SimulatorWorld:
    """A world serving a user's own export: one org holding the given items."""
    rng = random.Random(seed)
    entries = [NumberEntry.from_payload(item) for item in items]
    location_ids = tuple(dict.fromkeys(entry.location_id for entry in entries))
    org = SimulatedOrg(
        id=webex_id("ORGANIZATION", uuid.UUID(int=rng.getrandbits(128), version=4)),
        name="Imported org",
        location_ids=location_ids,
        entries=entries,
    )
    return SimulatorWorld(orgs={org.id: org}, tokens=demo_tokens(org, None))
