"""The control plane's wire format: length-prefixed JSON objects, bounded, checked field by field.

A frame is a 4-byte big-endian length, then that many bytes of a UTF-8 JSON object with a string
field "t" (the type). Nothing is unpickled; a frame longer than MAX_FRAME, bytes that are not a
JSON object, or a field of the wrong type or range raise ProtocolError, and the plane drops the
connection that sent it (only a peer that passed the job-secret handshake gets this far).
"""
from __future__ import annotations

import json
import struct

from ..errors import TransportError

MAX_FRAME = 1 << 20          # a decision naming 100,000 failed ranks still fits
_LEN = struct.Struct(">I")


class ProtocolError(TransportError):
    """A control-plane peer sent something that is not a valid message."""


def frame(msg: dict) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"control message of {len(data)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(data)) + data


class Reader:
    """Reassembles frames from a byte stream."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise ProtocolError(f"control frame of {n} bytes announced (at most {MAX_FRAME})")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            try:
                msg = json.loads(body)
            except (UnicodeDecodeError, ValueError):
                raise ProtocolError("control frame is not JSON") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                raise ProtocolError("control frame is not a typed JSON object")
            out.append(msg)
        return out


def check_int(m: dict, field: str, lo: int, hi: int) -> int:
    v = m.get(field)
    if type(v) is not int or not lo <= v <= hi:
        raise ProtocolError(f"field {field!r}: {v!r} is not an integer in [{lo}, {hi}]")
    return v


def check_ranks(v, n: int) -> list:
    if not isinstance(v, list) or len(v) > n or any(type(r) is not int or not 0 <= r < n for r in v):
        raise ProtocolError("a rank list is malformed")
    return v


def check_value(v, n: int) -> dict:
    """An agreement value: {"flag": bool, "failed": [ranks], "x": extra}."""
    if not isinstance(v, dict) or not isinstance(v.get("flag"), bool):
        raise ProtocolError("an agreement value is malformed")
    x = v.get("x")
    if x is not None and not (isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
                              and len(x[0]) <= 255 and type(x[1]) is int and 0 < x[1] < 65536):
        raise ProtocolError("an agreement value's store address is malformed")
    return {"flag": v["flag"], "failed": check_ranks(v.get("failed"), n), "x": x}
