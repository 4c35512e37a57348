"""The one exception the wire layer raises for bad bytes.

Every codec reports malformed input as `WireError` (a `ValueError`) with a short, stable `reason`
string, so the stack can keep per-reason drop counters with a plain `counters[err.reason] += 1`
instead of matching on exception types or messages. Parsers never let `IndexError`,
`struct.error` and the like escape: those would be indistinguishable from bugs.
"""

from __future__ import annotations

from typing import Final

#: The buffer is shorter than a length the packet needs (fixed header, header length field,
#: total/segment length field).
TRUNCATED: Final = "truncated"
#: A length field is self-inconsistent (IHL < 5, total length < header length, UDP length < 8,
#: TCP data offset < 5, ...).
BAD_LENGTH: Final = "bad-length"
#: A checksum did not verify.
BAD_CHECKSUM: Final = "bad-checksum"
#: IP version nibble is not 4.
BAD_VERSION: Final = "bad-version"
#: A TCP option has an impossible length or the options do not fit the header.
BAD_OPTION: Final = "bad-option"
#: Well-formed, but a kind this layer does not decode (ARP for non-Ethernet/IPv4, unknown ICMP
#: type). Counted separately so that "malformed" and "not for us" stay distinguishable.
UNSUPPORTED: Final = "unsupported"
#: Emitting: the destination buffer is too small for what is being written.
NO_ROOM: Final = "no-room"
#: Emitting: a repr field does not fit its wire field (port > 65535, negative TTL, ...).
BAD_FIELD: Final = "bad-field"

REASONS: Final = frozenset(
    {TRUNCATED, BAD_LENGTH, BAD_CHECKSUM, BAD_VERSION, BAD_OPTION, UNSUPPORTED, NO_ROOM, BAD_FIELD}
)


class WireError(ValueError):
    """Malformed packet (parsing) or impossible request (emitting).

    `reason` is one of `REASONS`, machine-readable and suitable as a counter key; the message
    adds a human-readable detail for logs.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
