"""The deterministic simulator: every seed's payments are charged exactly once, the store drains
once faults stop, and a seed replays exactly (docs/reliability.md, R2).

`STOWPAY_SIM_SEEDS=100000` runs the extended size (2,000 seeds by default).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator

import pytest

from stowpay.sim.runner import Runner, RunResult

SEEDS = int(os.environ.get("STOWPAY_SIM_SEEDS", "2000"))
#: Fault kinds the seeds must exercise between them (a schedule that never drops a response
#: would prove nothing).
FAULTS = (
    "net.drop_request",
    "net.drop_response",
    "net.duplicate",
    "net.delay",
    "net.late",
    "net.unreachable",
    "cloud.restart",
    "clock.jump",
    "reader.crash",
    "pos.stale_token",
    "pos.forwarded",
)
_KIND = re.compile(r"^\d+ (\S+)")


#: Seeds per test, so each stays well inside the per-test timeout on a busy machine.
CHUNK = 250
#: What the chunks saw between them, for the last test.
_SEEN: dict[str, Counter[str]] = {
    "kinds": Counter(),
    "crash_points": Counter(),
    "totals": Counter(),
}


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    with Runner() as r:
        yield r


@pytest.mark.slow
@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_every_seed_charges_each_payment_once(runner: Runner, start: int) -> None:
    kinds, crash_points, totals = _SEEN["kinds"], _SEEN["crash_points"], _SEEN["totals"]

    def seen(result: RunResult) -> None:
        for line in result.trace:
            m = _KIND.match(line)
            if m:
                kinds[m.group(1)] += 1
            if " reader.crash " in line:
                crash_points[line.rsplit(" ", 1)[-1]] += 1

    seeds = range(start, min(start + CHUNK, SEEDS))
    summary = runner.run(seeds, progress=seen)
    print(f"simulation, seeds {seeds.start}-{seeds.stop - 1}: {summary.line()}")
    reports = "\n".join(r.report() for r in summary.failures[:3])
    assert not summary.failures, f"failing seeds: {[r.seed for r in summary.failures]}\n{reports}"
    assert summary.seeds == len(seeds)
    assert summary.ok == summary.acknowledged > len(seeds)  # a few payments a seed, all settled
    assert summary.lost == summary.duplicated == summary.stuck == 0
    totals.update(
        seeds=summary.seeds,
        payments=summary.payments,
        acknowledged=summary.acknowledged,
        ok=summary.ok,
        crashes=summary.crashes,
    )


def test_the_seeds_exercised_every_fault() -> None:
    kinds, crash_points, totals = _SEEN["kinds"], _SEEN["crash_points"], _SEEN["totals"]
    if totals["seeds"] != SEEDS:
        pytest.skip("runs after all the chunks above")
    print(f"simulation, all {SEEDS} seeds: {dict(totals)}")
    print(f"faults: {dict(sorted(kinds.items()))}")
    print(f"crash points: {dict(sorted(crash_points.items()))}")
    missing = [k for k in FAULTS if not kinds[k]]
    assert not missing, f"no seed exercised {missing}"
    # Crashes land before and after commits, tip files and state files, and between writes.
    for point in ("vault.commit", "vault.committed", "state.write", "between_writes"):
        assert crash_points[point], f"no crash at {point}"


@pytest.mark.parametrize("seed", [0, 7, 101, 1234])
def test_a_seed_replays_exactly(runner: Runner, seed: int) -> None:
    first = runner.run_seed(seed)
    with Runner() as other:  # another template: other keys and secrets, the same run
        second = other.run_seed(seed)
    assert first.trace_hash == second.trace_hash
    assert first.trace == second.trace
    assert first.verdict.passed and second.verdict.passed


def test_seeds_differ(runner: Runner) -> None:
    hashes = {runner.run_seed(seed).trace_hash for seed in range(20)}
    assert len(hashes) == 20
