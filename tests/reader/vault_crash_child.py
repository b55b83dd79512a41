"""Child process of the crash tests: stores (and removes) payments until it is killed.

Prints one line per acknowledgement, flushed, only after the vault call returned:
``S <local_id> <sequence>`` for a store, ``R <sequence>`` for a removal (announced by
``X <sequence>`` before the call, so a removal cut off by the kill is known to be in doubt).
With ``--ack-early`` it prints the store line *before* calling the vault — the planted bug
("acknowledge before commit") that the crash test must catch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vault_kit import SEALING, payment

from stowpay.reader.vault import Vault
from stowpay.wire.clock import ManualClock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("run", type=int)
    parser.add_argument("--remove-every", type=int, default=3)
    parser.add_argument("--ack-early", action="store_true")
    args = parser.parse_args()
    clock = ManualClock(1_780_000_000.0 + args.run * 1000)
    vault = Vault.open(args.directory, clock=clock, sealing_key=SEALING)
    out = sys.stdout
    out.write(f"READY {vault.head_sequence}\n")
    out.flush()
    i = 0
    while True:
        i += 1
        clock.advance(1)
        local_id = f"pio_r{args.run}_{i}"
        if args.ack_early:
            out.write(f"S {local_id} ?\n")
            out.flush()
        stored = vault.store(payment(100 + i, local_id=local_id))
        if not args.ack_early:
            out.write(f"S {local_id} {stored.sequence}\n")
            out.flush()
        # Forward (remove) the oldest every few stores, and after every store once the backlog
        # is long, so that long runs keep the vault (and each reopen's checks) bounded.
        due = args.remove_every and (i % args.remove_every == 0 or vault.summary().count > 300)
        if due:
            oldest = vault.pending(limit=1)
            if oldest:
                # Announced first: a kill between the commit and the "R" line leaves it unknown.
                out.write(f"X {oldest[0].sequence}\n")
                out.flush()
                if vault.remove(oldest[0].sequence):
                    out.write(f"R {oldest[0].sequence}\n")
                    out.flush()


if __name__ == "__main__":
    main()
