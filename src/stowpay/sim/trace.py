"""The trace of one run: every event in order, and its hash (equal hashes, equal runs)."""

from __future__ import annotations

import hashlib


class Trace:
    """An append-only list of event lines; `digest` hashes them all."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._hash = hashlib.sha256()

    def add(self, tick: int, kind: str, *details: object) -> None:
        """Record one event at `tick`."""
        line = f"{tick:04d} {kind}" + "".join(f" {d}" for d in details)
        self.lines.append(line)
        self._hash.update(line.encode() + b"\n")

    def digest(self) -> str:
        """The run's trace hash (hex, 16 digits: enough to tell runs apart)."""
        return self._hash.hexdigest()[:16]

    def tail(self, n: int = 40, *, mentioning: tuple[str, ...] = ()) -> list[str]:
        """A shortened trace: the lines that mention any of `mentioning`, then the last `n`."""
        picked = [line for line in self.lines if any(f" {m} " in line for m in mentioning)]
        # Heartbeats that went through say little and are many.
        last = [line for line in self.lines if not line.endswith("/heartbeat 200")][-n:]
        seen = set(picked)
        return picked + [line for line in last if line not in seen]
