"""Buffer normalisation shared by the codecs.

Codecs accept `bytes`, `bytearray` and `memoryview`; internally they want a flat, byte-indexed
`memoryview` so that slicing is zero-copy and lengths are in bytes whatever the caller passed
(a `memoryview` cast to "H" would otherwise slice in 2-byte units).
"""

from __future__ import annotations

from typing import TypeAlias

#: Anything the codecs accept as packet bytes.
BytesLike: TypeAlias = bytes | bytearray | memoryview


def as_view(buf: BytesLike) -> memoryview:
    """Return a 1-D unsigned-byte `memoryview` over `buf` without copying.

    Non-contiguous views cannot be byte-addressed without a copy; they raise `TypeError`, since
    passing one is a programming error rather than a malformed packet.
    """
    kind = type(buf)
    if kind is bytearray or kind is bytes:
        return memoryview(buf)  # always 1-D unsigned bytes
    view = buf if kind is memoryview else memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        return view.cast("B")
    return view  # already right: reuse it rather than wrap it again
