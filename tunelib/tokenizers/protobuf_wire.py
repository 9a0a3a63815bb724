"""A minimal reader for the protobuf wire format.

SentencePiece reports piece offsets and piece types only as protobuf messages. Reading the few
fields we need by hand keeps `protobuf` out of tunelib's dependencies.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int | float | bytes]]:
    """Yield (field number, value) for each field of a serialized message.

    Varints come back as int, 32-bit fields as float (SentencePiece's only fixed32 fields are
    scores), length-delimited fields as bytes. 64-bit fields come back as raw bytes.
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack("<f", buf[pos : pos + 4])[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value
