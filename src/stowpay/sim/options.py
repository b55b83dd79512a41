"""What one seed expands into: the workload and the fault probabilities of one run.

Every number of a run comes from `Options.from_seed`, so a seed and the code's commit replay a
run exactly; `Options.describe` prints them with a failing seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

#: Planted bugs the simulator must catch (`stowpay simulate --plant`), to show it bites:
#: the cloud keeps its forwarding dedup records in memory only (a restart forgets them), and
#: the reader deletes a record before the cloud's outcome is in hand.
PLANTS = ("cloud_forgets", "remove_first")

#: Clock jumps (seconds): an hour, a day, past a week (record age), past 30 days (the offline
#: connection window).
JUMPS = (3600.0, 86400.0, 8 * 86400.0, 31 * 86400.0)


@dataclass(frozen=True)
class Options:
    """The parameters of one run, drawn from its seed."""

    seed: int
    #: payments the POS attempts during the fault phase
    payments: int
    #: ticks of the fault phase (the liveness phase follows, with every fault healed)
    fault_ticks: int
    #: per request on the reader's link: lost before the cloud, lost after the cloud committed,
    #: delivered twice, held and delivered later (after other requests: reordering)
    drop_request: float
    drop_response: float
    duplicate: float
    delay: float
    #: per write boundary of the reader (vault commit, tip file, state file): crash there
    crash_write: float
    #: per tick: the reader crashes between writes; the cloud restarts; the clock jumps
    crash_tick: float
    cloud_restart: float
    clock_jump: float
    #: swizzle-clogging: how many link outages, and their longest length in ticks
    partitions: int
    partition_ticks: int
    #: per payment: the POS does not hear the confirm's answer and confirms again
    lan_retry: float
    #: per token request: the POS's backend hands out a token that expired (or was used)
    stale_token: float
    #: share of payments taken `prefer_online` (the rest `force_offline`)
    prefer_online: float
    #: share of payments with a card the issuer declines; share with manual capture
    decline: float
    manual: float
    #: the reader forwards with its device key alone (no POS needed)
    unattended: bool
    batch_size: int
    base_delay: float
    max_delay: float
    plant: str | None = None

    @classmethod
    def from_seed(cls, seed: int, *, plant: str | None = None) -> Options:
        """The options of `seed` (CI size: a few payments, tens of ticks)."""
        if plant is not None and plant not in PLANTS:
            raise ValueError(f"unknown planted bug {plant!r}; one of {', '.join(PLANTS)}")
        r = random.Random(f"stowpay-sim-options:{seed}")
        return cls(
            seed=seed,
            payments=r.randint(1, 4),
            fault_ticks=r.randint(10, 25),
            drop_request=r.choice((0.0, 0.05, 0.15)),
            drop_response=r.choice((0.0, 0.1, 0.3)),
            duplicate=r.choice((0.0, 0.05, 0.15)),
            delay=r.choice((0.0, 0.05, 0.15)),
            crash_write=r.choice((0.0, 0.01, 0.05)),
            crash_tick=r.choice((0.0, 0.02, 0.05)),
            cloud_restart=r.choice((0.0, 0.02, 0.05)),
            clock_jump=r.choice((0.0, 0.0, 0.03)),
            partitions=r.randint(0, 3),
            partition_ticks=r.randint(1, 10),
            lan_retry=r.choice((0.0, 0.1)),
            stale_token=r.choice((0.0, 0.0, 0.1)),
            prefer_online=r.choice((0.0, 0.5, 0.9)),
            decline=r.choice((0.0, 0.1)),
            manual=r.choice((0.0, 0.2)),
            unattended=r.random() < 0.3,
            batch_size=r.choice((1, 2, 5, 100)),
            base_delay=r.choice((1.0, 5.0)),
            max_delay=r.choice((30.0, 300.0)),
            plant=plant,
        )

    def describe(self) -> str:
        """One line with every option, to print with a failing seed."""
        return " ".join(f"{k}={v}" for k, v in asdict(self).items())
