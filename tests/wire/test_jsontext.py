"""The JSON text objects are stored and served in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stowpay.wire import jsontext

# What objects hold: no floats (stored objects have none), text of any code point but
# surrogates, integers as wide as 64 bits.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(st.characters(exclude_categories=["Cs"]))
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@given(_values)
def test_compact_utf8_layout_that_reads_back(value: Any) -> None:
    text = jsontext.dumps(value)
    assert text == _compact(value)
    assert jsontext.dumps_bytes(value) == text.encode("utf-8")
    assert jsontext.loads(text) == value
    assert jsontext.loads(text.encode("utf-8")) == value


def test_values_orjson_refuses_are_written_in_the_same_layout() -> None:
    # A lone surrogate (JSON input can carry one) and an integer beyond 64 bits.
    value = {"a": "x\ud800y", "b": [2**70, -(2**70)]}
    text = jsontext.dumps(value)
    assert text == '{"a":"x\\ud800y","b":[1180591620717411303424,-1180591620717411303424]}'
    assert jsontext.dumps_bytes(value) == text.encode("ascii")
    assert jsontext.loads(text) == value


def test_reads_the_standard_library_layout_of_earlier_versions() -> None:
    value = {"id": "pi_1", "description": "Café", "metadata": {"k": "v"}, "n": None}
    assert jsontext.loads(json.dumps(value)) == value
    assert jsontext.loads(json.dumps(value, indent=2)) == value


@pytest.mark.parametrize("bad", ["", "{", "{'a': 1}", "[1,]"])
def test_refuses_text_that_is_not_json(bad: str) -> None:
    with pytest.raises(ValueError):
        jsontext.loads(bad)
