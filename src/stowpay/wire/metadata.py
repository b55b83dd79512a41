"""Stripe's metadata limits, shared by the cloud's API, its device API and the reader.

At most 50 keys; a key is 1 to 40 characters without square brackets (they would read as
nesting on the wire); a value is a string of at most 500 characters. A value that holds a
card number is refused: metadata is stored and shown in the clear, and a card number must
never be. A card number here is 13 to 19 digits starting with 2 to 6 (the networks' first
digits) and passing the Luhn check, written in one run or in the groups cards are printed
in (4-4-4-4 and its shorter or longer forms, Amex's 4-6-5), split by spaces or dashes.
Other groupings are not read across, nor groups glued to letters: a UUID's 8-4-4-4-12
characters, a date, a phone number (one UUID in 340 held 13 to 19 Luhn-valid digits across
its groups). One run of digits counts wherever it stands, inside a word too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_KEYS = 50
MAX_KEY = 40
MAX_VALUE = 500

#: Bounds of a forwarded record's shown card details, kept in the clear: the device API
#: takes no longer ones, and the reader's vault refuses them at the sale.
MAX_BRAND = 40
MAX_CARDHOLDER_NAME = 200
MAX_READ_METHOD = 60

#: Digits in groups split by single spaces or dashes. No nested repetition: the search stays
#: linear in the text (a pattern like `(?:\d[ -]?){13,19}` takes quadratic time on "1 1 1 ...",
#: seconds for a request of 50 such values).
_GROUPS = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_SEPARATOR = re.compile(r"[ -]")
#: A digit doubled, with the digits of the product summed (Luhn's rule).
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
#: The groups a card number is printed in, beyond one run of digits.
_GROUPINGS = frozenset(
    {(4, 4, 4, n) for n in range(1, 5)}
    | {(4, 4, 4, 4, n) for n in range(1, 4)}
    | {(4, 6, 5), (4, 6, 4)}
)
#: First digits of the card networks (Mastercard's 2-series, Amex and JCB, Visa, Mastercard,
#: Discover and UnionPay).
_FIRST_DIGITS = frozenset(range(2, 7))


def contains_card_number(text: str) -> bool:
    """Whether `text` holds a card number: a run of 13 to 19 digits, or whole groups of digits
    one after another in a card's grouping, starting with 2 to 6 and passing the Luhn check."""
    if len(text) < 13:
        return False  # too short to hold 13 digits: most keys and values, found at once
    return any(_holds_card_number(text, m) for m in _GROUPS.finditer(text))


def mask_card_numbers(text: str) -> str:
    """`text` with each run of digit groups that holds a card number (as
    `contains_card_number` reads one) written as asterisks of the same length."""
    if len(text) < 13:
        return text
    found = [m for m in _GROUPS.finditer(text) if _holds_card_number(text, m)]
    if not found:
        return text
    parts, end = [], 0
    for m in found:
        parts += [text[end : m.start()], "*" * (m.end() - m.start())]
        end = m.end()
    return "".join(parts) + text[end:]


def _holds_card_number(text: str, m: re.Match[str]) -> bool:
    if len(m.group()) < 13:
        return False  # a run of digits and separators shorter than any card number
    groups = _SEPARATOR.split(m.group())
    # Groups glued to a word are part of something else: a UUID's "…-4407-8941-9650-96ee…"
    # reads as 4-4-4-2, but its last group runs on into letters.
    closed_start = m.start() == 0 or not text[m.start() - 1].isalpha()
    closed_end = m.end() == len(text) or not text[m.end()].isalpha()
    return _any_card_number(groups, closed_start, closed_end)


def _any_card_number(groups: list[str], closed_start: bool, closed_end: bool) -> bool:
    # Prefix sums give the Luhn sum of any window in one step: `even[k]` sums the first k
    # digits with those at even indexes doubled, `odd[k]` with those at odd indexes doubled.
    # A window ending at index b (exclusive) doubles the indexes of b's parity.
    digits = [int(c) for c in "".join(groups)]
    even, odd = [0], [0]
    for i, d in enumerate(digits):
        even.append(even[-1] + (_DOUBLED[d] if i % 2 == 0 else d))
        odd.append(odd[-1] + (_DOUBLED[d] if i % 2 == 1 else d))
    starts = [0]
    for group in groups:
        starts.append(starts[-1] + len(group))
    for i, a in enumerate(starts[:-1]):
        if digits[a] not in _FIRST_DIGITS:
            continue
        for j, b in enumerate(starts[i + 1 :], start=i + 1):
            if b - a > 19:
                break
            if b - a < 13:
                continue
            if j - i > 1 and (
                tuple(len(g) for g in groups[i:j]) not in _GROUPINGS
                or (i == 0 and not closed_start)
                or (j == len(groups) and not closed_end)
            ):
                continue
            sums = even if b % 2 == 0 else odd
            if (sums[b] - sums[a]) % 10 == 0:
                return True
    return False


KEY_CARD_NUMBER = "metadata keys may not contain card numbers"


def any_key_is_card_number(metadata: Mapping[str, object]) -> bool:
    """Whether a key holds a card number (checked first: an error must not name that key)."""
    return any(isinstance(k, str) and contains_card_number(k) for k in metadata)


def key_problem(key: str) -> str | None:
    """Why `key` is not a metadata key, or None."""
    if not key or len(key) > MAX_KEY:
        return f"metadata keys must be 1 to {MAX_KEY} characters long"
    if "[" in key or "]" in key:
        return "metadata keys may not contain square brackets"
    return None


def value_problem(value: str) -> str | None:
    """Why `value` is not a metadata value, or None. The value itself is never quoted."""
    if len(value) > MAX_VALUE:
        return f"metadata values can be at most {MAX_VALUE} characters"
    if contains_card_number(value):
        return "metadata values may not contain card numbers"
    return None


def problem(metadata: Mapping[str, object]) -> tuple[str, str] | None:
    """The first thing wrong with `metadata` as (message, param), or None.

    A key that holds a card number is named as `metadata`, never by itself.
    """
    if len(metadata) > MAX_KEYS:
        return f"metadata can have at most {MAX_KEYS} keys", "metadata"
    if any_key_is_card_number(metadata):
        return KEY_CARD_NUMBER, "metadata"
    for key, value in metadata.items():
        param = f"metadata[{key}]"
        if not isinstance(key, str) or not isinstance(value, str):
            return "metadata keys and values must be strings", "metadata"
        found = key_problem(key) or value_problem(value)
        if found is not None:
            return found, param
    return None
