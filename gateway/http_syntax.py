"""HTTP's own syntax, read the same way wherever the gateway meets it: in its requests'
headers as a server, and in the upstream's responses as a client.
"""

from __future__ import annotations

import re

# RFC 9110's 1*DIGIT: ASCII only. str.isdigit() also takes '²' and other digits int() refuses
# or reads differently, and int() alone takes ' 1_0' and '+1'.
_DIGITS = re.compile(r"[0-9]+")
_DIGITS_BYTES = re.compile(rb"[0-9]+")
# int() refuses strings longer than sys.get_int_max_str_digits() (4300 by default); no length,
# count or offset HTTP carries to us needs more than this many significant digits.
MAX_SIGNIFICANT_DIGITS = 64


def decimal_value(value: str | bytes | None) -> int | None:
    """The number a field of ASCII digits (``Content-Length``, delta-seconds, a page offset)
    spells, or None for anything else: no value, signs, spaces, non-ASCII digits, or more than
    ``MAX_SIGNIFICANT_DIGITS`` significant digits. Never raises."""
    if value is None:
        return None
    if isinstance(value, bytes):
        if not _DIGITS_BYTES.fullmatch(value):
            return None
        text = value.decode("ascii")
    elif _DIGITS.fullmatch(value):
        text = value
    else:
        return None
    significant = text.lstrip("0")
    if len(significant) > MAX_SIGNIFICANT_DIGITS:
        return None
    return int(significant or "0")
