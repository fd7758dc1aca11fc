"""Webex ids read for what they name: the kind of thing and its UUID.

A Webex id is the unpadded base64url of ``ciscospark://<region>/<KIND>/<uuid>`` (UPSTREAM.md,
"Ids"); the region part differs between clusters (``us``, ``urn:TEAM:eu-central-1_k``) while
the UUID names the thing. Only an id in exactly that form is read: padded, non-canonical
base64 or any other text (a bare UUID, a broadsoftId) is another form, and ``read_webex_id``
gives None for it. Ids stay opaque everywhere else, and nothing here decides what a caller
may see: ``data.entity_batches`` reads them only to tell that a walk the caller made with
their own token, holding every entry they may see, holds no entry of some person or location.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Final

_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
_DECODED: Final = re.compile(r"ciscospark://([^/\s]+)/([A-Z][A-Z_]*)/([0-9A-Fa-f-]{36})")
# Longer than any Webex id (about 80 characters); longer text is not read at all.
_MAX_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class WebexId:
    """What a Webex id names: its region, its kind (``PEOPLE``, ``LOCATION`` ...), its UUID."""

    region: str
    kind: str
    uuid: uuid.UUID


def read_webex_id(text: str) -> WebexId | None:
    """The region, kind and UUID ``text`` names when it is a Webex id in canonical form
    (unpadded base64url that encodes back to the same text); None for any other form."""
    if len(text) > _MAX_LENGTH or not _BASE64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        decoded = raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != text:
        return None  # stray bits in the last character: the same bytes, spelt another way
    found = _DECODED.fullmatch(decoded)
    if found is None:
        return None
    try:
        named = uuid.UUID(found.group(3))
    except ValueError:
        return None
    if str(named) != found.group(3):
        return None  # upper case or hyphens out of place: not the UUID form Webex writes
    return WebexId(found.group(1), found.group(2), named)
