"""Running seeds: one (`run_seed`), or many with a running tally (`Runner`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .checker import Verdict, check
from .options import Options
from .world import Simulation, Template, scratch_root


@dataclass
class RunResult:
    """One seed's run: its options, what the checker found, and its trace."""

    options: Options
    verdict: Verdict
    trace_hash: str
    trace: list[str]
    payments: int
    crashes: int

    @property
    def seed(self) -> int:
        return self.options.seed

    def report(self) -> str:
        """The failing seed, its options, the problems and a shortened trace."""
        out = [
            f"seed {self.seed} FAILED (trace {self.trace_hash})",
            f"  options: {self.options.describe()}",
        ]
        out += [f"  {p}" for p in self.verdict.problems()]
        out.append("  trace (lines naming the payments involved, then the last lines):")
        out += [f"    {line}" for line in self.trace]
        return "\n".join(out)


@dataclass
class Summary:
    """The tally over many seeds."""

    seeds: int = 0
    payments: int = 0
    acknowledged: int = 0
    ok: int = 0
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    crashes: int = 0
    failures: list[RunResult] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, result: RunResult) -> None:
        v = result.verdict
        self.seeds += 1
        self.payments += result.payments
        self.acknowledged += v.acknowledged
        self.ok += len(v.ok)
        self.lost += len(v.lost)
        self.duplicated += len(v.duplicated)
        self.stuck += len(v.stuck)
        self.crashes += result.crashes
        if not v.passed:
            self.failures.append(result)

    def line(self) -> str:
        """The summary line."""
        return (
            f"{self.seeds} seeds, {self.payments} payments ({self.acknowledged} acknowledged), "
            f"ok {self.ok}, lost {self.lost}, duplicated {self.duplicated}, stuck {self.stuck}, "
            f"{self.crashes} reader crashes, failing seeds {len(self.failures)}, "
            f"{self.seconds:.1f} s"
        )


class Runner:
    """Runs seeds one after another in scratch directories, over one template."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else scratch_root()
        self._owns_root = root is None
        self._template: Template | None = None
        #: the latest seed's result
        self.last: RunResult | None = None

    @property
    def template(self) -> Template:
        if self._template is None:
            self._template = Template.build(self.root / "template")
        return self._template

    def run_seed(self, seed: int, *, plant: str | None = None) -> RunResult:
        """Run one seed and check it."""
        options = Options.from_seed(seed, plant=plant)
        workdir = self.root / f"run-{seed}"
        try:
            sim = Simulation(options, self.template, workdir)
            sim.run()
            verdict = check(sim)
            if not verdict.passed:
                sim.trace.lines[:] = sim.trace.tail(60, mentioning=verdict.suspects)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self.last = RunResult(
            options=options,
            verdict=verdict,
            trace_hash=sim.trace.digest(),
            trace=sim.trace.lines,
            payments=len(sim.attempts),
            crashes=sim.crashes,
        )
        return self.last

    def run(
        self,
        seeds: Iterable[int],
        *,
        plant: str | None = None,
        progress: Callable[[RunResult], None] | None = None,
    ) -> Summary:
        """Run every seed; `progress` hears of each result."""
        summary = Summary()
        started = time.perf_counter()
        for seed in seeds:
            result = self.run_seed(seed, plant=plant)
            summary.add(result)
            if progress is not None:
                progress(result)
        summary.seconds = time.perf_counter() - started
        return summary

    def close(self) -> None:
        """Remove the scratch directory (if this runner made it)."""
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
