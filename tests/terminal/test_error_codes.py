"""Each offline error code the reader and the SDK can raise, through the SDK against real
servers: one cloud process for the module, reader daemons on loopback, the merchant's backend
through the official `stripe` client. Codes that need a 30-day window or a record's age use a
reader whose clock is a `ManualClock` (the cloud keeps the wall clock)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe
from terminal_kit import (
    ADDRESS,
    CLI,
    BackendTokens,
    Cloud,
    Merchant,
    ReaderBox,
    Recorder,
    make_merchant,
    wait_until,
)

from stowpay.reader.daemon import ReaderConfig, ReaderDaemon
from stowpay.reader.rules import DAY
from stowpay.terminal import (
    CollectConfiguration,
    CreateConfiguration,
    ErrorCode,
    NetworkStatus,
    OfflineBehavior,
    PaymentIntent,
    PaymentIntentParameters,
    SimulatedCard,
    Terminal,
    TerminalException,
)
from stowpay.wire.clock import ManualClock

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

VISA = SimulatedCard(number="4242424242424242", read_method="contact_emv", cvm="offline_pin")
MASTERCARD = SimulatedCard(number="5555555555554444", read_method="contact_emv", cvm="offline_pin")
LONDON = {"line1": "1 High St", "city": "London", "postal_code": "SW1A 1AA", "country": "GB"}


@pytest.fixture(scope="module")
def shared_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """One cloud process for the module; a test that stops it starts it again."""
    server = Cloud(tmp_path_factory.mktemp("cloud"))
    yield server
    server.stop()


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Iterator[Cloud]:
    """The module's cloud, running at the start and at the end of each test."""
    if shared_cloud.proc is None:
        shared_cloud.start()
    yield shared_cloud
    if shared_cloud.proc is None:
        shared_cloud.start()


class ClockedReader(ReaderBox):
    """A reader daemon whose clock the test moves. `heartbeat_interval` is on that clock, so
    a long one keeps the reader from reporting in (and renewing its software check)."""

    def __init__(
        self, cloud: Cloud, data: Path, clock: ManualClock, *, heartbeat_interval: float = 2.0
    ) -> None:
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        super().__init__(cloud, data)

    def start(self) -> None:
        config = ReaderConfig(
            cloud_url=self.cloud.url,
            data_dir=self.data,
            port=self.port,
            heartbeat_interval=self.heartbeat_interval,
            offline_interval=self.offline_interval,
            registration_interval=0.2,
        )
        self.daemon = ReaderDaemon(config, clock=self.clock, out=self._out)
        self.daemon.start()


def merchant_at(
    cloud: Cloud,
    address: dict[str, str],
    policy: dict[str, Any] | None = None,
) -> Merchant:
    """A Location at `address` whose Configuration enables offline payments, with the
    merchant's offline risk policy (`stowpay_offline_policy`, a form-encoded extension the
    `stripe` client passes through as it is)."""
    client = stripe.StripeClient(
        cloud.account["secret_key"], base_addresses={"api": cloud.url}, max_network_retries=0
    )
    params: dict[str, Any] = {"offline": {"enabled": True}}
    if policy is not None:
        params["stowpay_offline_policy"] = policy
    config = client.v1.terminal.configurations.create(params=params)  # type: ignore[arg-type]
    if policy is not None:
        served = config.to_dict()["stowpay_offline_policy"]
        assert {k: served[k] for k in policy} == policy
    at: dict[str, Any] = {
        "display_name": "Shop",
        "address": address,
        "configuration_overrides": config.id,
    }
    location = client.v1.terminal.locations.create(params=at)  # type: ignore[arg-type]
    return Merchant(cloud, client, str(location.id))


def sale(
    terminal: Terminal,
    order: str,
    amount: int = 1000,
    *,
    currency: str = "usd",
    card: SimulatedCard = VISA,
    behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE,
) -> PaymentIntent:
    """Create, collect and confirm one payment; the confirmed PaymentIntent."""
    pi = terminal.create_payment_intent(
        PaymentIntentParameters(amount=amount, currency=currency, metadata={"order_id": order}),
        CreateConfiguration(offline_behavior=behavior),
    )
    terminal.simulated_card = card
    pi = terminal.collect_payment_method(pi, CollectConfiguration(update_payment_intent=False))
    return terminal.confirm_payment_intent(pi)


def refused(code: ErrorCode, call: Callable[[], object], *says: str) -> TerminalException:
    """`call` raises `code`, with a message holding each of `says`."""
    with pytest.raises(TerminalException) as caught:
        call()
    error = caught.value
    assert error.code is code, error
    assert error.message and all(part in error.message for part in says), error.message
    return error


def stored_count(terminal: Terminal) -> int:
    status = terminal.get_offline_status().reader
    assert status is not None
    return status.offline_payments_count


def go_offline(cloud: Cloud, events: Recorder) -> None:
    """Stop the cloud and wait until the SDK has noticed."""
    cloud.stop()
    wait_until(lambda: events.saw_network(NetworkStatus.OFFLINE), "the SDK to see the outage")


def test_sca_location_currency_busy_and_stored_count(tmp_path: Path, cloud: Cloud) -> None:
    """A reader at a London Location whose policy holds one offline payment at most."""
    merchant = merchant_at(cloud, LONDON, {"max_stored_count": 1})
    box = ReaderBox(cloud, tmp_path / "reader")
    events = Recorder()
    terminal = Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "a"
    )
    other = Terminal(
        BackendTokens(merchant), Recorder(), api_base=cloud.url, data_dir=tmp_path / "b"
    )
    try:
        reader = box.as_reader(box.register(merchant))
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK to see the cloud")
        terminal.connect_reader(reader, location=merchant.location)

        # Another POS asking for a reader that is in use.
        refused(
            ErrorCode.READER_BUSY,
            lambda: other.connect_reader(reader, fail_if_in_use=True),
            "in use by another POS",
        )
        assert terminal.connected_reader is not None and other.connected_reader is None

        go_offline(cloud, events)
        # A currency the offline ceilings do not know cannot be taken offline.
        refused(
            ErrorCode.INVALID_OFFLINE_CURRENCY,
            lambda: terminal.create_payment_intent(
                PaymentIntentParameters(amount=1000, currency="inr")
            ),
            "currency is not enabled for offline payments",
        )
        # A tap cannot be stepped up to a PIN offline, so the SCA market refuses it.
        tap = SimulatedCard(number="4242424242424242", read_method="contactless_emv")
        refused(
            ErrorCode.CONTACTLESS_NOT_AVAILABLE_OFFLINE,
            lambda: sale(terminal, "GB-1", currency="gbp", card=tap),
            "Insert the card",
        )
        # Inserted, it is stored; the policy then holds no more.
        first = sale(terminal, "GB-2", currency="gbp")
        assert first.id is None and first.offline_details is not None
        refused(
            ErrorCode.OFFLINE_STORED_COUNT_EXCEEDED,
            lambda: sale(terminal, "GB-3", currency="gbp", card=MASTERCARD),
            "most offline payments",
        )
        assert stored_count(terminal) == 1
    finally:
        other.close()
        terminal.close()
        box.stop()


def test_the_risk_policy_limits_on_stored_payments(tmp_path: Path, cloud: Cloud) -> None:
    """Per-card uses, the stored total and the oldest record's age, on the reader's clock."""
    policy = {"max_stored_total": {"usd": 5000}, "max_uses_per_card": 1, "max_record_age": 3600}
    merchant = merchant_at(cloud, ADDRESS, policy)
    clock = ManualClock(time.time())
    box = ClockedReader(cloud, tmp_path / "reader", clock)
    events = Recorder()
    terminal = Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "a"
    )
    try:
        reader = box.as_reader(box.register(merchant))
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK to see the cloud")
        terminal.connect_reader(reader)
        go_offline(cloud, events)

        first = sale(terminal, "P-1", 1000, card=VISA)
        assert first.id is None and first.offline_details is not None
        refused(
            ErrorCode.OFFLINE_CARD_VELOCITY_EXCEEDED,
            lambda: sale(terminal, "P-2", 1000, card=VISA),
            "This card has been used offline",
        )
        refused(
            ErrorCode.OFFLINE_STORED_TOTAL_EXCEEDED,
            lambda: sale(terminal, "P-3", 4500, card=MASTERCARD),
            "offline total above",
        )
        clock.advance(2 * 3600)
        refused(
            ErrorCode.OFFLINE_RECORD_TOO_OLD,
            lambda: sale(terminal, "P-4", 1000, card=MASTERCARD),
            "go online to forward it",
        )
        assert stored_count(terminal) == 1
    finally:
        terminal.close()
        box.stop()


def test_a_reader_whose_software_check_is_stale(tmp_path: Path, cloud: Cloud) -> None:
    """Connected online recently, but its last software check (heartbeat) is over 30 days
    old: it may not be used offline until it reports in again."""
    merchant = make_merchant(cloud)
    clock = ManualClock(time.time())
    # Heartbeats 100 days apart on the reader's clock: only the first one checks the software.
    box = ClockedReader(cloud, tmp_path / "reader", clock, heartbeat_interval=100 * DAY)
    events = Recorder()
    terminal = Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "a"
    )
    try:
        reader = box.as_reader(box.register(merchant))
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK to see the cloud")
        clock.advance(29 * DAY)
        terminal.connect_reader(reader)  # online: the connection window opens now
        go_offline(cloud, events)
        clock.advance(2 * DAY)
        terminal.disconnect_reader()
        refused(
            ErrorCode.UNSUPPORTED_READER_VERSION,
            lambda: terminal.connect_reader(reader),
            "requires a software update",
        )
        assert terminal.connected_reader is None
    finally:
        terminal.close()
        box.stop()


class TwoAccountTokens(BackendTokens):
    """The app's token provider, which can be pointed at another account's backend."""

    def __init__(self, merchant: Merchant, other: stripe.StripeClient) -> None:
        super().__init__(merchant)
        self.other = other
        self.use_other = False

    def fetch_connection_token(self) -> str:
        if self.use_other:
            self.calls += 1
            return str(self.other.v1.terminal.connection_tokens.create().secret)
        return super().fetch_connection_token()


def test_another_accounts_token_while_forwarding(tmp_path: Path, cloud: Cloud) -> None:
    merchant = make_merchant(cloud)
    made = subprocess.run(
        [*CLI, "cloud", "create-account", "--db", cloud.db, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    other_key = json.loads(made.stdout)["secret_key"]
    assert other_key != cloud.account["secret_key"]
    other = stripe.StripeClient(other_key, base_addresses={"api": cloud.url}, max_network_retries=0)
    tokens = TwoAccountTokens(merchant, other)
    box = ReaderBox(cloud, tmp_path / "reader")
    events = Recorder()
    terminal = Terminal(tokens, events, api_base=cloud.url, data_dir=tmp_path / "a")
    try:
        reader = box.as_reader(box.register(merchant))
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK to see the cloud")
        terminal.connect_reader(reader)
        go_offline(cloud, events)
        wait_until(lambda: box.status()["network"] == "offline", "the reader offline")
        sale(terminal, "M-1", 1200)
        assert stored_count(terminal) == 1

        tokens.use_other = True
        cloud.start()
        error = wait_until(
            lambda: next(
                (
                    e
                    for e in list(events.failures)
                    if e.code is ErrorCode.ACCOUNT_ID_MISMATCH_WHILE_FORWARDING
                ),
                None,
            ),
            "the forwarding failure",
            timeout=90,
        )
        assert "stays stored" in error.message
        assert events.forwarded == []
        assert stored_count(terminal) == 1
        assert merchant.by_order("M-1") == []

        # With a token of the reader's own account, the same payment goes, once.
        tokens.use_other = False
        wait_until(lambda: events.forwarded_orders().get("M-1"), "the payment forwarded", 90)
        [(forwarded, failure)] = events.forwarded
        assert failure is None and forwarded.id is not None
        assert len(merchant.by_order("M-1")) == 1
    finally:
        terminal.close()
        box.stop()


class SmallVaultReader(ReaderBox):
    """A reader whose vault holds two payments (the device's storage budget)."""

    def start(self) -> None:
        config = ReaderConfig(
            cloud_url=self.cloud.url,
            data_dir=self.data,
            port=self.port,
            heartbeat_interval=2.0,
            offline_interval=self.offline_interval,
            registration_interval=0.2,
            vault_max_records=2,
        )
        self.daemon = ReaderDaemon(config, out=self._out)
        self.daemon.start()


def test_a_full_vault_refuses_and_keeps_what_it_holds(tmp_path: Path, cloud: Cloud) -> None:
    merchant = merchant_at(cloud, ADDRESS)
    box = SmallVaultReader(cloud, tmp_path / "reader")
    events = Recorder()
    terminal = Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "a"
    )
    try:
        reader = box.as_reader(box.register(merchant))
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK to see the cloud")
        terminal.connect_reader(reader)
        go_offline(cloud, events)
        sale(terminal, "F-1", 1000, card=VISA)
        sale(terminal, "F-2", 1000, card=MASTERCARD)
        refused(
            ErrorCode.OFFLINE_PAYMENTS_DATABASE_TOO_LARGE,
            lambda: sale(terminal, "F-3", 1000, card=VISA),
        )
        assert stored_count(terminal) == 2
    finally:
        terminal.close()
        box.stop()
