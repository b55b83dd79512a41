"""The checker: after a run, every payment the POS was told about, against the cloud's charges.

In the manner of a Jepsen set checker, each attempt is classified by what the POS was told and
what the cloud holds:

- told *stored* (offline) or *charged* (online): exactly one charge with its amount is **ok**;
  none and still in the reader's vault is **stuck**; none and gone is **lost**; more than one
  is **duplicated**. A declined card counts once too: its one failed charge is the outcome.
- told *unknown* (a crash or a lost answer mid-payment): at most one charge; more is
  **duplicated**, still held after the liveness phase is **stuck**.
- told *failed* (a definite refusal): no successful charge, or it is a **phantom**.

Every charge must belong to an attempt (else a **stranger**) and have its amount and currency.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .world import Attempt, Simulation

ACKNOWLEDGED = ("stored", "charged")


@dataclass
class Verdict:
    """What the checker found in one run; `passed` when nothing is wrong."""

    acknowledged: int = 0
    ok: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)
    wrong_amount: list[str] = field(default_factory=list)
    #: unexpected exceptions in the cloud (answered 500)
    errors: list[str] = field(default_factory=list)
    #: records quarantined in the vault (nothing in a simulation tampers with it)
    quarantined: int = 0
    #: ticks the store took to drain after the faults stopped; None: it did not
    drained_in: int | None = None

    @property
    def passed(self) -> bool:
        """No money invariant broken, and the store drained."""
        return not (
            self.lost
            or self.duplicated
            or self.stuck
            or self.phantom
            or self.strangers
            or self.wrong_amount
            or self.errors
            or self.quarantined
            or self.drained_in is None
        )

    def problems(self) -> list[str]:
        """One phrase per kind of problem found (empty when passed)."""
        found = [
            f"{name}: {', '.join(ids)}"
            for name, ids in (
                ("lost", self.lost),
                ("duplicated", self.duplicated),
                ("stuck", self.stuck),
                ("phantom", self.phantom),
                ("stranger charges", self.strangers),
                ("wrong amount", self.wrong_amount),
                ("cloud errors", self.errors),
            )
            if ids
        ]
        if self.quarantined:
            found.append(f"quarantined records: {self.quarantined}")
        if self.drained_in is None:
            found.append("the store did not drain after the faults stopped")
        return found

    @property
    def suspects(self) -> tuple[str, ...]:
        """The attempt ids involved in a problem (for the shortened trace)."""
        return tuple(self.lost + self.duplicated + self.stuck + self.phantom + self.wrong_amount)


def check(sim: Simulation) -> Verdict:
    """Classify every attempt of a finished run."""
    verdict = Verdict(
        errors=list(sim.cloud.errors),
        quarantined=sim.quarantined,
        drained_in=sim.liveness_ticks,
    )
    charges: dict[str, list[dict[str, Any]]] = defaultdict(list)
    attempts = {a.id: a for a in sim.attempts}
    for charge in sim.cloud.objects("charge"):
        owner = (charge.get("metadata") or {}).get("sim_attempt")
        if owner not in attempts:
            verdict.strangers.append(str(charge["id"]))
            continue
        charges[owner].append(charge)
    held = {r.metadata.get("sim_attempt") for r in sim.held_after_drain}
    for attempt in sim.attempts:
        _classify(verdict, attempt, charges.get(attempt.id, []), attempt.id in held)
    return verdict


def _classify(verdict: Verdict, a: Attempt, charges: list[dict[str, Any]], held: bool) -> None:
    paid = [c for c in charges if c.get("paid")]
    if any(c["amount"] != a.amount or c["currency"] != "usd" for c in charges):
        verdict.wrong_amount.append(a.id)
    if a.told in ACKNOWLEDGED:
        verdict.acknowledged += 1
        if len(charges) > 1:
            verdict.duplicated.append(a.id)
        elif charges:
            verdict.ok.append(a.id)
        elif held:
            verdict.stuck.append(a.id)
        else:
            verdict.lost.append(a.id)
    elif a.told == "unknown":
        if len(charges) > 1:
            verdict.duplicated.append(a.id)
        elif held:
            verdict.stuck.append(a.id)
    elif paid:
        verdict.phantom.append(a.id)
