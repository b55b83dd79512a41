"""The cloud's storage: the only package that speaks SQL.

`Store` opens a SQLite file or a PostgreSQL URL, applies migrations, and hands out
transactions (`Tx`) whose methods are the whole vocabulary the rest of the cloud uses.
"""

from .conflicts import lost_race, retry_races
from .store import IdempotencyRecord, Page, Store, Tx

__all__ = ["IdempotencyRecord", "Page", "Store", "Tx", "lost_race", "retry_races"]
