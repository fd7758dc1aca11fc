"""Who is calling: the one place a request's ``Authorization`` becomes a caller.

The auth scheme is case-insensitive (RFC 9110) and upstreams accept odd spacing, so
``bearer  tok``, ``BEARER tok`` and `` Bearer tok `` are one caller. ``Callers.identify`` turns
the header into a ``Caller``: the normalised credential (``Bearer <token>``, what the upstream
gets) and an identity, an HMAC of it under the server secret. Every per-caller thing keys on
that identity: page cache keys, fair upstream slots, store shares, answer reuse, persisted
documents. The token itself is never a key, a log field or a metric label.

A credential without the ``Bearer`` scheme, or longer than ``MAX_CREDENTIAL_LENGTH``, is
refused as ``UNAUTHENTICATED`` here, before any upstream call; a missing header means the
embedded simulator's demo token when there is one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from gateway.errors import Unauthenticated

NO_CREDENTIALS = "Send the caller's Webex token as 'Authorization: Bearer <token>'."
UNUSABLE_CREDENTIALS = (
    "The Authorization header must be printable ASCII ('Bearer <token>'); this one cannot "
    "be sent upstream."
)
NOT_BEARER = (
    "The Authorization scheme must be Bearer: send the caller's Webex token as "
    "'Authorization: Bearer <token>'."
)
_SCHEME = "Bearer"
# The longest credential accepted (Webex tokens are a few hundred characters; a proxy's
# header limit is near 8 KiB too): a longer one is refused before it is hashed, keyed or
# forwarded, so a huge token cannot be sent upstream on every call.
MAX_CREDENTIAL_LENGTH = 8 * 1024
TOO_LONG = (
    f"The Authorization header is longer than {MAX_CREDENTIAL_LENGTH} characters; no Webex "
    "token is. Send the caller's token as 'Authorization: Bearer <token>'."
)


@dataclass(frozen=True, slots=True)
class Caller:
    """One caller: what the upstream is sent, and the name everything else knows it by."""

    # ``Bearer <token>``: forwarded upstream, never logged, kept out of every repr.
    authorization: str = field(repr=False)
    identity: str  # an HMAC of ``authorization``: safe as a key, not reversible to the token


def normalised_credential(header: str) -> str:
    """``Bearer <token>`` for any spelling of the scheme and spacing; raises
    ``Unauthenticated`` (saying why) for a header that cannot be a bearer credential."""
    if len(header) > MAX_CREDENTIAL_LENGTH:
        raise Unauthenticated(TOO_LONG)
    value = header.strip()
    if not (value.isascii() and value.replace("\t", " ").isprintable()):
        raise Unauthenticated(UNUSABLE_CREDENTIALS)
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != _SCHEME.lower():
        raise Unauthenticated(NOT_BEARER)
    return f"{_SCHEME} {parts[1]}"


class Callers:
    """Derives callers from headers under one secret. One per app (the cache's secret, so
    identities and cache keys agree across replicas sharing it)."""

    def __init__(self, secret: bytes, default_authorization: str | None = None) -> None:
        self._secret = secret
        # The embedded simulator's demo token stands in for a caller who sent none.
        self._default = (
            normalised_credential(default_authorization) if default_authorization else None
        )

    def identify(self, header: str | None) -> Caller:
        """The caller behind ``header`` (exactly as sent); raises ``Unauthenticated``. A blank
        header counts as none."""
        if header is None or not header.strip():
            if self._default is None:
                raise Unauthenticated(NO_CREDENTIALS)
            credential = self._default
        else:
            credential = normalised_credential(header)
        digest = hmac.new(self._secret, b"caller\x00" + credential.encode(), hashlib.sha256)
        return Caller(authorization=credential, identity=digest.hexdigest()[:32])

    def known(self, header: str | None) -> Caller | None:
        """The caller, or None when the header names none that could call the upstream."""
        try:
            return self.identify(header)
        except Unauthenticated:
            return None
