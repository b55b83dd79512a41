"""Canaries: the simulator must catch planted bugs, or its passing seeds prove nothing.

- `cloud_forgets`: the cloud keeps forwarding dedup records in memory only (a restart forgets
  them): a record whose answer was lost, re-sent after a restart, is charged twice.
- `remove_first`: the reader deletes a record as it sends it, before the outcome is in hand: a
  lost request loses the payment.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stowpay.sim.runner import Runner, RunResult

#: Seeds tried before giving up on catching a planted bug.
LIMIT = 300


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    with Runner() as r:
        yield r


def _first_failure(runner: Runner, plant: str) -> RunResult | None:
    for seed in range(LIMIT):
        result = runner.run_seed(seed, plant=plant)
        if not result.verdict.passed:
            print(f"{plant}: caught at seed {seed} ({seed + 1} seeds run)")
            return result
    return None


def test_a_cloud_that_forgets_is_caught_charging_twice(runner: Runner) -> None:
    caught = _first_failure(runner, "cloud_forgets")
    assert caught is not None, f"cloud_forgets not caught in {LIMIT} seeds"
    assert caught.verdict.duplicated
    assert f"seed {caught.seed} FAILED" in caught.report()


def test_a_reader_that_removes_first_is_caught_losing(runner: Runner) -> None:
    caught = _first_failure(runner, "remove_first")
    assert caught is not None, f"remove_first not caught in {LIMIT} seeds"
    assert caught.verdict.lost


@pytest.mark.xfail(strict=True, reason="planted bug: the checker must report duplicates")
def test_planted_forgetful_cloud_passes(runner: Runner) -> None:
    for seed in range(LIMIT):
        assert runner.run_seed(seed, plant="cloud_forgets").verdict.passed, f"seed {seed}"
