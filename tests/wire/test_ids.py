"""Ids and secrets: their length, their alphabet, and an even spread over it."""

from __future__ import annotations

import itertools
import string
from collections import Counter

from stowpay.wire.ids import CountingIds, RandomIds, random_token

BASE62 = set(string.ascii_letters + string.digits)


def test_random_ids_have_prefix_and_24_base62_characters() -> None:
    ids = RandomIds()
    made = [ids.new("pi") for _ in range(2000)]
    assert len(set(made)) == len(made)
    for one in made:
        prefix, _, rest = one.partition("_")
        assert prefix == "pi"
        assert len(rest) == 24
        assert set(rest) <= BASE62


def test_tokens_have_the_length_their_byte_count_gives() -> None:
    for nbytes, length in ((9, 12), (16, 21), (18, 24), (24, 32), (36, 48)):
        token = random_token(nbytes)
        assert len(token) == length
        assert set(token) <= BASE62


def test_every_character_is_about_equally_likely() -> None:
    # 496,000 characters: about 8,000 each (standard deviation 89). Taking random bytes modulo
    # 62 without rejecting any would give the first 8 characters about 9,700 each.
    counts = Counter("".join(random_token(48)[:62] for _ in range(8000)))
    assert set(counts) == BASE62
    assert min(counts.values()) > 7_000
    assert max(counts.values()) < 9_000


def test_counting_ids_are_predictable() -> None:
    ids = CountingIds()
    assert ids.new("pi") == "pi_" + "1".zfill(24)
    assert ids.new("ch") == "ch_" + "2".zfill(24)


def test_ids_made_later_sort_later_and_keep_18_random_characters() -> None:
    # Index pages: the ids of one batch sort next to each other, after every older id.
    now = [1_790_000_000.0]
    ids = RandomIds(clock=lambda: now[0])
    made = []
    for step in (0.0, 0.4, 1.0, 61.0, 3_600.0, 86_400.0 * 365, 86_400.0 * 365 * 50):
        now[0] = 1_790_000_000.0 + step
        made.append([ids.new("evt") for _ in range(50)])
    assert {i[4:10] for i in made[0] + made[1]} == {made[0][0][4:10]}  # one second, one prefix
    for earlier, later in itertools.pairwise(made[1:]):
        assert max(earlier) < min(later)
    flat = [i for group in made for i in group]
    assert len({i[10:] for i in flat}) == len(flat)  # the random part differs every time


def test_the_random_part_of_ids_is_evenly_spread() -> None:
    ids = RandomIds(clock=lambda: 1_790_000_000.0)
    counts = Counter("".join(ids.new("pi")[9:] for _ in range(27_600)))
    assert set(counts) == BASE62
    assert min(counts.values()) > 7_000
    assert max(counts.values()) < 9_000
