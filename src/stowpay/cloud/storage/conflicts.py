"""Transactions that lost a race with another cloud process, and running them again.

On PostgreSQL several cloud processes write at once. Two of them may insert the same unique
key (one permanent key per forwarded record, one idempotency key, one claim per charge
attempt): the second insert waits for the first transaction and then fails with a unique
violation. Two may also lock rows in opposite orders (a deadlock) or, under a stricter
isolation level, fail to serialize. None of these is an error of the request: the whole
transaction is run again, and this time it reads what the winner committed (a replay, an
`Idempotent-Replayed` answer, the recorded outcome). On SQLite one writer holds the lock at a
time, so these do not arise there; a unique violation there is a bug and is raised again
after the last try, as any other error is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
import structlog

log = structlog.get_logger("stowpay.cloud.storage")

T = TypeVar("T")

#: SQLSTATEs of a lost race: unique_violation, serialization_failure, deadlock_detected.
RACE_STATES = frozenset({"23505", "40001", "40P01"})
#: Tries of one transaction before its error is answered as a failure.
ATTEMPTS = 4


def lost_race(exc: BaseException) -> bool:
    """Whether `exc` is a transaction that lost a race with a concurrent one (worth a retry)."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    state = getattr(exc.orig, "sqlstate", None)  # psycopg's errors carry it; sqlite3's do not
    return state in RACE_STATES


def retry_races(run: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
    """`run()` (one whole transaction), run again while it loses a race with another one."""
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except sa.exc.DBAPIError as exc:
            if attempt == attempts or not lost_race(exc):
                raise
            log.info("transaction lost a race; running it again", attempt=attempt)
    raise AssertionError("unreachable")  # the loop returns or raises
