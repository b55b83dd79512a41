"""Answers lost after the cloud committed: every forwarded payment is charged exactly once.

A reader process forwards through a `FaultProxy` that drops about 30% of the cloud's answers
to `POST /device/v1/offline_payments`: the cloud has ingested the batch and committed, the
reader sees a reset connection, keeps the records and sends them again under the same
forward keys. The backlog (well over 1,000 payments) is made beforehand with the vault
library in the registered reader's data directory, as the reader itself would have stored
it offline. In the end: every payment has exactly one PaymentIntent, all succeeded, and the
proxy did drop answers (its counts are printed).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from procs import Ledger, Site, Verdict, free_port, register_reader, start_reader, wait_drained

from stowpay.reader.state import ReaderState
from stowpay.reader.vault import CardRead, OfflinePayment, SealingKey, Vault
from stowpay.sim.proxy import DROP_RESPONSE, PASS, FaultProxy, Faults
from stowpay.wire.clock import SystemClock

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Payments stored before the reader starts; it forwards 100 to a request.
BACKLOG = 3000
#: Cards the test issuer approves, with their brands.
CARDS = (
    ("4242424242424242", "visa"),
    ("5555555555554444", "mastercard"),
    ("378282246310005", "amex"),
    ("6011111111111117", "discover"),
)


def store_backlog(data: Path, count: int) -> Ledger:
    """Store `count` offline payments in a stopped reader's vault, as its core would."""
    state = ReaderState.inspect(data)
    identity, context = state.identity, state.context
    assert identity is not None and context is not None
    ledger = Ledger()
    vault = Vault.open(
        state.vault_dir,
        clock=SystemClock(),
        sealing_key=SealingKey.from_document(context.sealing_key),
    )
    try:
        for i in range(count):
            number, brand = CARDS[i % len(CARDS)]
            # Amounts ending in 00: the test issuer declines some other endings.
            order, amount = f"L-{i}", 100 * (1 + (i * 7919) % 99)
            vault.store(
                OfflinePayment(
                    account=identity.account,
                    reader=identity.reader,
                    amount=amount,
                    currency="usd",
                    capture_method="automatic",
                    card=CardRead(number, 12, 2034, brand, "contact_emv", "Ada Lovelace"),
                    metadata={"order_id": order},
                )
            )
            ledger.started[order] = amount
            ledger.acknowledged.add(order)
    finally:
        vault.close()
    return ledger


def test_answers_dropped_after_the_cloud_committed_charge_nothing_twice(tmp_path: Path) -> None:
    site = Site(tmp_path)
    data = tmp_path / "reader"
    proxy: FaultProxy | None = None
    reader = None
    try:
        first, _, _ = register_reader(site, data)
        assert first.stop() == 0
        began = time.monotonic()
        ledger = store_backlog(data, BACKLOG)
        stored_in = time.monotonic() - began

        where = urlsplit(site.url)
        faults = Faults(drop_response=0.3, only="/device/v1/offline_payments", seed=11)
        proxy = FaultProxy((where.hostname or "127.0.0.1", where.port or 80), faults).start()
        log_mark = (site.logs / "reader.log").stat().st_size
        began = time.monotonic()
        port = free_port()
        reader, _ = start_reader(
            proxy.url,
            data,
            port,
            site.logs,
            "--unattended-forwarding",
            "--log-level",
            "info",
        )
        status = wait_drained(f"http://127.0.0.1:{port}", timeout=480)
        drained_in = time.monotonic() - began
        assert status["offline"]["quarantined"] == 0
        intents = site.payment_intents()
        verdict = Verdict(ledger, intents)
    finally:
        if reader is not None:
            reader.stop()
        if proxy is not None:
            proxy.stop()
        site.close()
    log = (site.logs / "reader.log").read_bytes()[log_mark:].decode()
    replayed = sum(int(n) for n in re.findall(r"offline_payments_forwarded.*replayed=(\d+)", log))
    statuses = {pi.status for pi in intents}
    figures = (
        f"{BACKLOG} payments stored in {stored_in:.1f}s, forwarded in {drained_in:.1f}s; proxy: "
        f"{dict(proxy.counts)}; {replayed} outcomes came back as replays; {verdict}; "
        f"statuses {statuses}"
    )
    print(figures)
    assert proxy.counts[DROP_RESPONSE] > 0 and proxy.counts[PASS] > 0, figures
    assert replayed > 0, figures
    assert verdict.ok and verdict.intents == BACKLOG, figures
    assert statuses == {"succeeded"}, figures
