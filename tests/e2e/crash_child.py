"""A reader run in-process (core, vault, forwarder) against a real cloud, for the crash tests.

`python crash_child.py sell DATA CLOUD_URL TOKEN PREFIX [--ack-before-commit]` opens the
registered reader on DATA, connects a POS with TOKEN and sells force_offline payments until it
is killed, forwarding in the background (unattended). It prints, flushed:
``READY``, then per payment ``S <order> <amount>`` once the intent exists (the order may be
stored from then on) and ``A <order>`` once confirm returned (the payment is acknowledged).

`--ack-before-commit` plants the bug the crash test exists to catch: the vault answers
`store` at once and commits a moment later in the background (a "write-behind" vault), so an
acknowledged payment is lost when the process dies in between.

`python crash_child.py drain DATA CLOUD_URL` forwards everything left and prints
``DRAINED <count>``.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
from pathlib import Path

from stowpay.reader import vault as vault_module
from stowpay.reader.cloud_link import HttpCloudLink
from stowpay.reader.core import ReaderCore
from stowpay.reader.presentment import Presentment
from stowpay.reader.state import ReaderState
from stowpay.reader.vault import OfflinePayment, StoredPayment, Vault
from stowpay.wire.clock import SystemClock

#: How long the planted write-behind vault waits before it commits (seconds).
WRITE_BEHIND = 0.2


def plant_write_behind() -> None:
    """Make `Vault.store` acknowledge before it commits (the planted bug)."""
    real_store = Vault.store

    def store_later(
        self: Vault, payment: OfflinePayment, *, card_tag: str | None = None
    ) -> StoredPayment:
        timer = threading.Timer(WRITE_BEHIND, real_store, (self, payment), {"card_tag": card_tag})
        timer.daemon = True
        timer.start()
        _, display, _ = vault_module._prepare(payment)
        return StoredPayment(
            sequence=0,
            stored_at=SystemClock().now(),
            account=payment.account,
            reader=payment.reader,
            amount=payment.amount,
            currency=payment.currency,
            capture_method=payment.capture_method,
            metadata=dict(payment.metadata),
            description=payment.description,
            local_id=payment.local_id or "pio_pending",
            sealed=b"",
            display=display,
        )

    Vault.store = store_later  # type: ignore[method-assign]


def open_core(data: Path, cloud_url: str) -> ReaderCore:
    clock = SystemClock()
    state = ReaderState.open(data, rng=random.Random())
    vault = Vault.open(state.vault_dir, clock=clock)
    core = ReaderCore(
        state, vault, HttpCloudLink(cloud_url), clock=clock, unattended_forwarding=True
    )
    assert core.heartbeat() is not None, "the cloud did not answer the heartbeat"
    core.set_online(True)
    return core


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def sell(core: ReaderCore, token: str, prefix: str) -> None:
    core.start()
    session = core.connect(pos_id="till-1", connection_token=token)["session"]
    out("READY")
    rng = random.Random(prefix)
    i = 0
    while True:
        order, amount = f"{prefix}-{i}", rng.randrange(100, 10_000)
        i += 1
        intent = core.create_payment_intent(
            session,
            amount=amount,
            currency="usd",
            metadata={"order_id": order},
            offline_behavior="force_offline",
        )
        out(f"S {order} {amount}")
        card = Presentment("4242424242424242", 12, 2034, "contact_emv", "Ada", "offline_pin")
        core.collect(session, intent["local_id"], card)
        core.confirm(session, intent["local_id"])
        out(f"A {order}")


def drain(core: ReaderCore) -> None:
    forwarded = 0
    for _ in range(100):
        result = core.forwarder.drain()
        forwarded += result.forwarded
        if result.remaining == 0 and result.error is None:
            break
    out(f"DRAINED {forwarded} {core.vault.summary().count}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sell", "drain"])
    parser.add_argument("data", type=Path)
    parser.add_argument("cloud_url")
    parser.add_argument("token", nargs="?")
    parser.add_argument("prefix", nargs="?", default="c")
    parser.add_argument("--ack-before-commit", action="store_true")
    args = parser.parse_args()
    if args.ack_before_commit:
        plant_write_behind()
    core = open_core(args.data, args.cloud_url)
    if args.mode == "drain":
        drain(core)
        core.close()
        core.vault.close()
    else:
        sell(core, args.token, args.prefix)


if __name__ == "__main__":
    main()
