"""`stowpay simulate`: a summary and exit 0 when every seed passes; the failing seed, its
options and a shortened trace, and exit 1, when one fails."""

from __future__ import annotations

import re

from click.testing import CliRunner

from stowpay.cli.main import main


def test_passing_seeds_exit_zero() -> None:
    result = CliRunner().invoke(main, ["simulate", "--seeds", "4", "--start", "10"])
    assert result.exit_code == 0, result.output
    assert re.search(
        r"^4 seeds, \d+ payments .* lost 0, duplicated 0, stuck 0", result.output, re.M
    )


def test_one_seed_prints_its_trace_hash_the_same_twice() -> None:
    runs = [CliRunner().invoke(main, ["simulate", "--seed", "5"]) for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    hashes = [re.search(r"^seed 5: trace ([0-9a-f]{16})$", r.output, re.M) for r in runs]
    assert hashes[0] and hashes[1]
    assert hashes[0].group(1) == hashes[1].group(1)


def test_a_planted_bug_fails_with_the_seed() -> None:
    result = CliRunner().invoke(main, ["simulate", "--seeds", "12", "--plant", "remove_first"])
    assert result.exit_code == 1, result.output
    failed = re.search(r"^seed (\d+) FAILED \(trace [0-9a-f]{16}\)$", result.output, re.M)
    assert failed, result.output
    assert "lost: " in result.output
    assert "options: seed=" in result.output
    assert f"FAILED seeds: {failed.group(1)}" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_plant_is_one_line() -> None:
    result = CliRunner().invoke(main, ["simulate", "--plant", "nonsense"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
