"""The JSON text objects are stored and served in: compact (no spaces), UTF-8, written by orjson.

One layout for both, so the text an object was stored as can be its answer and can be
embedded in an event without serializing the object again. orjson writes it several times
faster than the standard library, and a forwarded payment's objects and events are a large
part of what the cloud spends on it.

Text that must stay the same across versions (request fingerprints, record digests) is not
written here: it keeps its own canonical encoding.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

#: What orjson refuses, the standard library writes, in the same compact layout: a string
#: holding a lone surrogate (JSON input can carry one as `\ud800`) or an integer beyond 64 bits.
_FALLBACK = json.JSONEncoder(separators=(",", ":"))


def dumps(obj: Any) -> str:
    """`obj` as compact JSON text."""
    return dumps_bytes(obj).decode()


def dumps_bytes(obj: Any) -> bytes:
    """`obj` as compact JSON, UTF-8 encoded."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return _FALLBACK.encode(obj).encode()


def loads(text: str | bytes) -> Any:
    """The value JSON `text` holds (as `json.loads` reads it)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson refuses some text the standard library reads: a lone surrogate's escape
        # (which the fallback above writes) and NaN or Infinity (which it never writes).
        return json.loads(text)
