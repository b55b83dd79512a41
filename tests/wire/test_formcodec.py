"""The Stripe form codec: round trips, the wire forms clients send, and hostile input."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stripe._encode import _api_encode

from stowpay.wire.errors import InvalidRequestError
from stowpay.wire.formcodec import MAX_DEPTH, MAX_INDEX, MAX_PAIRS, _pairs, decode, encode

# -- round trips ---------------------------------------------------------------------------

#: A key the codec can carry: brackets are its syntax, and a nested key of digits alone
#: would read back as a list index.
# NUL is refused by the decoder (tested below), so round trips use every other character.
text = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
keys = st.text(text, min_size=1, max_size=12).filter(lambda k: "[" not in k and "]" not in k)
nested_keys = keys.filter(lambda k: re.fullmatch(r"[0-9]{1,9}", k) is None)
values = st.text(text, max_size=20)


def trees(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nested dicts and lists of strings, none of them empty (they have no wire form)."""
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, min_size=1, max_size=4)
            | st.dictionaries(nested_keys, inner, min_size=1, max_size=4)
        ),
        max_leaves=20,
    )


params = st.dictionaries(keys, trees(values), max_size=6)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()))
    if isinstance(value, list):
        return 1 + max(map(depth, value))
    return 0


def _shallow_enough(p: dict[str, Any]) -> bool:
    return all(depth(v) < MAX_DEPTH for v in p.values())


@given(params.filter(_shallow_enough))
def test_decode_undoes_encode(p: dict[str, Any]) -> None:
    assert decode(encode(p)) == p


@given(params.filter(_shallow_enough))
def test_decode_reads_what_the_official_client_sends(p: dict[str, Any]) -> None:
    # stripe-python's own encoder (indexed arrays, brackets left readable), as it sends bodies.
    wire = urlencode(list(_api_encode(p))).replace("%5B", "[").replace("%5D", "]")
    assert decode(wire) == p


@given(params.filter(_shallow_enough))
def test_bytes_and_text_decode_alike(p: dict[str, Any]) -> None:
    wire = encode(p)
    assert decode(wire.encode()) == decode(wire)


def test_encode_writes_what_stripe_clients_write() -> None:
    wire = encode(
        {
            "amount": 1000,
            "confirm": True,
            "capture": False,
            "description": None,
            "metadata": {"order id": "A-17&B"},
            "payment_method_types": ["card_present"],
        }
    )
    assert wire == (
        "amount=1000&confirm=true&capture=false&metadata[order%20id]=A-17%26B"
        "&payment_method_types[0]=card_present"
    )


# -- what clients send ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("metadata[k]=v", {"metadata": {"k": "v"}}),
        ("metadata[order_id]=A-17&metadata[n]=2", {"metadata": {"order_id": "A-17", "n": "2"}}),
        ("expand[]=a&expand[]=b", {"expand": ["a", "b"]}),
        ("expand[0]=a&expand[1]=b", {"expand": ["a", "b"]}),
        ("expand[1]=b&expand[0]=a", {"expand": ["a", "b"]}),  # indexes order, not arrival
        ("items[0][x]=1", {"items": [{"x": "1"}]}),
        (
            "items[0][x]=1&items[0][y]=2&items[1][x]=3",
            {"items": [{"x": "1", "y": "2"}, {"x": "3"}]},
        ),
        ("a[b][c][d]=deep", {"a": {"b": {"c": {"d": "deep"}}}}),
        ("description=", {"description": ""}),  # an empty value is kept: it unsets
        ("metadata[k]=", {"metadata": {"k": ""}}),
        ("metadata=", {"metadata": ""}),
        ("a=1&a=2", {"a": "2"}),  # the last of a repeated scalar wins
        ("q=a+b%26c", {"q": "a b&c"}),
        ("name=%C3%A9t%C3%A9", {"name": "été"}),
        ("", {}),
        ("&&", {}),
    ],
)
def test_decodes_the_wire_forms_clients_send(wire: str, expected: dict[str, Any]) -> None:
    assert decode(wire) == expected
    assert decode(wire.encode()) == expected


@pytest.mark.parametrize(
    "wire",
    [
        "a=1&a[b]=2",  # a scalar, then a hash
        "a[b]=2&a=1",  # a hash, then a scalar
        "a[]=1&a[b]=2",  # a list, then a hash
        "a[b]=1&a[]=2",  # a hash, then a list
        "a[0]=1&a[]=2",  # indexed, then appended
        "a[]=1&a[0]=2",  # appended, then indexed
        "a[0]=1&a[x]=2",  # indexed, then a hash key
        "a[x][y]=1&a[x]=2",  # a hash replaced by a scalar
        f"a[{MAX_INDEX + 1}]=x",  # an index past the bound
        "a[0]=1&a[²]=2",  # a digit `int` cannot read, as an index
        "=v",  # no name
        "[a]=1",  # a name that starts with a bracket
        "a]=1",
        "a[b=1",
        "a[b]c=1",
        "a" + "[b]" * MAX_DEPTH + "=1",  # nested too deeply
        "description=a%00b",  # NUL: no field means it, PostgreSQL cannot store it
        "metadata[a%00]=b",
        "&".join(f"k{i}=v" for i in range(MAX_PAIRS + 1)),  # too many pairs
    ],
)
def test_refuses_what_has_no_single_meaning(wire: str) -> None:
    with pytest.raises(InvalidRequestError):
        decode(wire)


def test_a_conflict_names_the_parameter() -> None:
    with pytest.raises(InvalidRequestError) as err:
        decode("metadata=1&metadata[b]=2")
    assert err.value.param == "metadata"


def test_bodies_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        decode(b"description=\xff\xfe")


# -- hostile input -------------------------------------------------------------------------

#: Bytes that look like a form body often enough to reach the deeper paths.
form_like = st.lists(
    st.one_of(
        st.sampled_from([b"&", b"=", b"[", b"]", b"[]", b"[0]", b"[1]", b"%", b"+", b"a", b"0"]),
        st.sampled_from([b"%5B", b"%5D", b"%00", b"%FF", b"\xff", b"\x00"]),
        st.sampled_from(["[²]", "[٣]", "[¹0]", "[0²]"]).map(str.encode),  # digits, to Python
        st.binary(max_size=4),
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=500)
@given(st.binary(max_size=200) | form_like)
def test_decoding_any_bytes_only_ever_refuses_cleanly(data: bytes) -> None:
    try:
        decoded = decode(data)
    except InvalidRequestError:
        return
    assert isinstance(decoded, dict)


@settings(max_examples=500)
@given(st.text(max_size=200) | form_like.map(lambda b: b.decode("utf-8", "replace")))
def test_decoding_any_text_only_ever_refuses_cleanly(text: str) -> None:
    try:
        decoded = decode(text)
    except InvalidRequestError:
        return
    assert isinstance(decoded, dict)


#: Forms built from the characters that matter to splitting and unquoting.
form_text = st.text(st.sampled_from("ab=&%+2041 \u00e9[]"), max_size=40)


@settings(max_examples=1000)
@given(form_text | st.text(max_size=60))
def test_fields_split_as_parse_qsl_splits_them(text: str) -> None:
    # Bodies with nothing to unquote skip parse_qsl: the pairs must be the ones it gives.
    assert _pairs(text) == parse_qsl(text, keep_blank_values=True)


def test_the_field_limit_holds_with_and_without_unquoting() -> None:
    for field in ("a=1", "a=%31"):
        assert len(_pairs("&".join([field] * MAX_PAIRS))) == MAX_PAIRS
        with pytest.raises(InvalidRequestError, match="Too many parameters"):
            _pairs("&".join([field] * (MAX_PAIRS + 1)))
