"""The reader core against a live cloud: registration, sessions, every offline rule's code,
durable confirms, forwarding through the POS's token, and what survives a restart."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reader_kit import (
    Line,
    Rig,
    Shop,
    card,
    connect_online,
    make_shop,
    open_rig,
    register,
    sell,
    wait_until,
)
from vault_kit import scan_for_pans, side_connection

from stowpay.cloud.testing import LiveCloud
from stowpay.reader.cloud_link import CloudUnreachable
from stowpay.reader.connectivity import ConnectivityMonitor
from stowpay.reader.core import Event, ReaderError
from stowpay.reader.rules import DAY
from stowpay.wire.clock import ManualClock
from stowpay.wire.terminal_codes import ErrorCode

Factory = Any


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_780_000_000.0)


@pytest.fixture
def rigs(tmp_path: Path, cloud: LiveCloud, clock: ManualClock) -> Iterator[Factory]:
    """Open readers (closed at teardown); `rigs(name, **options)`."""
    opened: list[Rig] = []

    def _open(name: str = "reader", **kw: Any) -> Rig:
        rig = open_rig(tmp_path / name, cloud, clock, **kw)
        opened.append(rig)
        return rig

    yield _open
    for rig in opened:
        rig.close()


@pytest.fixture
def shop(cloud: LiveCloud) -> Shop:
    return make_shop(cloud)


@pytest.fixture
def rig(rigs: Factory, shop: Shop) -> Rig:
    """A registered reader at `shop`, online."""
    r: Rig = rigs()
    register(r, shop)
    return r


def code_of(exc: pytest.ExceptionInfo[ReaderError]) -> ErrorCode:
    return exc.value.code


def answering_pos(rig: Rig, token: Any) -> list[Event]:
    """Subscribe a POS that answers each connection token request with `token()`."""
    session = rig.core._session
    assert session is not None
    seen: list[Event] = []

    def deliver(event: Event | None) -> None:
        if event is None:
            return
        seen.append(event)
        name, data = event
        if name == "connection_token_request":
            answer = token()
            if isinstance(answer, Exception):
                rig.core.answer_token_request(session.token, data["request_id"], error=str(answer))
            else:
                rig.core.answer_token_request(
                    session.token, data["request_id"], connection_token=answer
                )

    rig.core.subscribe(session.token, deliver)
    return seen


# -- registration and identity -----------------------------------------------------------------


def test_registration_shows_a_code_then_keeps_the_identity(rigs: Factory, shop: Shop) -> None:
    rig: Rig = rigs()
    assert rig.core.poll_registration() is False
    [code] = rig.codes
    status = rig.core.status()
    assert status["registered"] is False and status["registration_code"] == code
    # Polling again shows the same code (it is not asked for anew).
    assert rig.core.poll_registration() is False and rig.codes == [code]
    reader = shop.register(code)
    assert rig.core.poll_registration() is True
    identity = rig.state.identity
    assert identity is not None and identity.reader == reader
    assert identity.account == shop.account
    assert identity.device_key.startswith("rdk_")
    key_file = rig.directory / "identity.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((rig.directory / "reader.json").stat().st_mode) == 0o600
    # The heartbeat brought the context: Location, Configuration, sealing key.
    context = rig.state.context
    assert context is not None
    assert context.location_id == shop.location and context.offline_enabled
    assert context.country == "US"
    status = rig.core.status()
    assert status["registered"] and status["registration_code"] is None
    assert status["reader"] == reader and status["location"] == shop.location


def test_a_given_registration_code_is_used(rigs: Factory, shop: Shop, cloud: LiveCloud) -> None:
    first: Rig = rigs("first")
    first.core.poll_registration()
    # A second process on another directory is told the code (as `--registration-code`).
    other: Rig = rigs("other", registration_code=first.codes[0])
    assert other.core.poll_registration() is False
    assert other.codes == first.codes
    shop.register(first.codes[0])
    assert other.core.poll_registration() is True


def test_restart_keeps_identity_context_history_pairing_and_vault(
    rigs: Factory, shop: Shop, clock: ManualClock
) -> None:
    rig: Rig = rigs()
    reader = register(rig, shop)
    answer = connect_online(rig, shop, network_id="wifi-1")
    sell(rig.core, answer["session"])
    key = rig.state.device_key
    rig.close()
    # The cloud is gone when the reader comes back.
    line = Line(rig.line.link)
    line.down = True
    again: Rig = rigs(line=line)
    assert again.codes == []  # no new code: still registered
    assert again.state.identity is not None and again.state.identity.reader == reader
    assert again.state.device_key == key
    assert again.state.context is not None and again.state.context.location_id == shop.location
    clock.advance(DAY)
    offline = again.core.connect(
        pos_id="till-1", pairing_secret=answer["pairing_secret"], network_id="wifi-1"
    )
    assert offline["offline"] is True and offline["account"] == shop.account
    # The sealing key came from the cache: offline payments work at once.
    stored = sell(again.core, offline["session"], 700, behavior="prefer_online")
    assert stored["status"] == "succeeded"
    assert again.vault.summary().count == 2


# -- connecting --------------------------------------------------------------------------------


def test_online_connection_answers_a_pairing_secret_kept_only_as_a_hash(
    rig: Rig, shop: Shop
) -> None:
    answer = connect_online(rig, shop)
    assert answer["offline"] is False
    assert answer["account"] == shop.account and answer["location"] == shop.location
    secret = answer["pairing_secret"]
    assert secret.startswith("rps_")
    for path in rig.directory.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    history = rig.state.history
    assert history.account == shop.account
    assert ("simulated_wisepos_e", shop.location) in history.online_at


def test_a_token_of_another_account_is_refused(rig: Rig, cloud: LiveCloud) -> None:
    other = make_shop(cloud, 1)
    with pytest.raises(ReaderError) as caught:
        rig.core.connect(pos_id="till-1", connection_token=other.token())
    assert code_of(caught) == ErrorCode.STRIPE_API_ERROR
    assert caught.value.api_code in ("account_mismatch", "account_id_mismatch")
    assert rig.core.status()["connected_pos"] is None


def test_an_invalid_or_used_token_is_refused(rig: Rig, shop: Shop) -> None:
    with pytest.raises(ReaderError) as caught:
        rig.core.connect(pos_id="till-1", connection_token="pst_test_made_up")
    assert code_of(caught) == ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR
    token = shop.token()
    rig.core.connect(pos_id="till-1", connection_token=token)
    with pytest.raises(ReaderError) as caught:
        rig.core.connect(pos_id="till-1", connection_token=token)
    assert code_of(caught) == ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR


def test_one_pos_at_a_time(rig: Rig, shop: Shop) -> None:
    first = connect_online(rig, shop, "till-1")
    with pytest.raises(ReaderError) as caught:
        connect_online(rig, shop, "till-2", fail_if_in_use=True)
    assert code_of(caught) == ErrorCode.READER_BUSY
    rig.core.session(first["session"])  # still connected
    second = connect_online(rig, shop, "till-2")  # takes over
    with pytest.raises(ReaderError) as caught:
        rig.core.session(first["session"])
    assert code_of(caught) == ErrorCode.NOT_CONNECTED_TO_READER
    assert rig.core.status()["connected_pos"] == "till-2"
    rig.core.disconnect(second["session"])
    assert rig.core.status()["connected_pos"] is None
    # The same POS reconnecting is not "another POS".
    connect_online(rig, shop, "till-1")
    connect_online(rig, shop, "till-1", fail_if_in_use=True)


def test_an_unregistered_reader_cannot_be_connected(rigs: Factory) -> None:
    rig: Rig = rigs()
    rig.core.poll_registration()
    with pytest.raises(ReaderError) as caught:
        rig.core.connect(pos_id="till-1", connection_token="pst_test_x")
    assert code_of(caught) == ErrorCode.MISSING_PREREQUISITE
    assert rig.codes[0] in caught.value.message


def test_offline_connection_rules(rig: Rig, shop: Shop, clock: ManualClock) -> None:
    secret = {"till-1": connect_online(rig, shop, network_id="wifi-1")["pairing_secret"]}
    rig.line.down = True
    rig.core.set_online(False)

    def offline(**kw: Any) -> ErrorCode | None:
        kw.setdefault("pos_id", "till-1")
        kw.setdefault("pairing_secret", secret["till-1"])
        kw.setdefault("network_id", "wifi-1")
        try:
            rig.core.connect(**kw)
        except ReaderError as exc:
            return exc.code
        return None

    assert offline() is None
    # Only with the secret handed to this POS, on the same network.
    assert offline(pairing_secret="rps_wrong") == ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE
    assert offline(pos_id="till-9") == ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE
    assert offline(network_id="wifi-2") == ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE
    # A token alone while the cloud is down.
    assert (
        offline(pairing_secret=None, connection_token="pst_test_x")
        == ErrorCode.STRIPE_API_CONNECTION_ERROR
    )
    # A token and the secret: the secret is used when the cloud is down.
    assert offline(connection_token="pst_test_x") is None
    # The software counts as updated at each heartbeat: 31 days without one.
    rig.line.down = False
    clock.advance(20 * DAY)
    # Online again here (a new pairing secret), with no heartbeat.
    secret["till-1"] = connect_online(rig, shop, network_id="wifi-1")["pairing_secret"]
    rig.line.down = True
    clock.advance(11 * DAY)
    assert offline() == ErrorCode.UNSUPPORTED_READER_VERSION
    # 31 days after the last online connection at this Location...
    clock.advance(20 * DAY)
    assert offline() == ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE
    # ...while it connected online at another one lately.
    rig.state.record_online_connection(
        device_type="simulated_wisepos_e",
        location="tml_elsewhere",
        account=shop.account,
        network_id="wifi-1",
        now=clock.now(),
    )
    assert offline() == ErrorCode.LOCATION_CONNECTION_NOT_AVAILABLE_OFFLINE


def test_no_last_seen_account(rigs: Factory, shop: Shop) -> None:
    rig: Rig = rigs()
    register(rig, shop)
    # A pairing with no online connection on record (a history wiped by hand).
    rig.state.save_pairing("till-1", "rps_x", now=0)
    with pytest.raises(ReaderError) as caught:
        rig.core.connect(pos_id="till-1", pairing_secret="rps_x")
    assert code_of(caught) == ErrorCode.NO_LAST_SEEN_ACCOUNT


# -- creating, collecting, confirming ----------------------------------------------------------


def test_the_offline_intent_has_stripes_shape(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    pi = rig.core.create_payment_intent(
        session,
        amount=1299,
        currency="usd",
        offline_behavior="force_offline",
        metadata={"order_id": "A-17"},
        description="coffee",
    )
    assert pi["id"] is None and pi["local_id"].startswith("pio_")
    assert pi["status"] == "requires_payment_method" and pi["offline_details"] is None
    collected = rig.core.collect(session, pi["local_id"], card(cardholder_name="ADA L"))
    assert collected["status"] == "requires_confirmation"
    details = collected["offline_details"]["card_present_details"]
    assert details["last4"] == "4242" and details["brand"] == "visa"
    assert "4242424242424242" not in json.dumps(collected)
    confirmed = rig.core.confirm(session, pi["local_id"])
    assert "payment_method" not in confirmed
    assert confirmed["id"] is None and confirmed["status"] == "succeeded"
    offline = confirmed["offline_details"]
    assert offline["requires_upload"] is True
    assert offline["stored_at"] == rig.clock.now()
    assert set(offline["card_present_details"]) == {
        "brand",
        "cardholder_name",
        "exp_month",
        "exp_year",
        "last4",
        "read_method",
        "receipt_details",
    }
    assert offline["card_present_details"]["cardholder_name"] == "ADA L"
    [record] = rig.vault.pending()
    assert record.local_id == pi["local_id"] and record.metadata == {"order_id": "A-17"}
    assert record.reader == rig.state.identity.reader  # type: ignore[union-attr]
    manual = sell(rig.core, session, 500, capture_method="manual")
    assert manual["status"] == "requires_capture" and manual["amount_capturable"] == 500


def test_a_retried_confirm_is_the_same_payment(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    pi = rig.core.create_payment_intent(
        session, amount=1299, currency="usd", offline_behavior="force_offline"
    )
    rig.core.collect(session, pi["local_id"], card())
    first = rig.core.confirm(session, pi["local_id"])
    again = rig.core.confirm(session, pi["local_id"])
    assert again == first
    assert rig.vault.summary().count == 1
    with pytest.raises(ReaderError) as caught:
        rig.core.collect(session, pi["local_id"], card())
    assert code_of(caught) == ErrorCode.INVALID_REQUIRED_PARAMETER


def test_confirm_before_collect_and_unknown_intents(rig: Rig, shop: Shop, cloud: LiveCloud) -> None:
    session = connect_online(rig, shop)["session"]
    pi = rig.core.create_payment_intent(
        session, amount=100, currency="usd", offline_behavior="force_offline"
    )
    with pytest.raises(ReaderError) as caught:
        rig.core.confirm(session, pi["local_id"])
    assert code_of(caught) == ErrorCode.INVALID_REQUIRED_PARAMETER
    with pytest.raises(ReaderError) as caught:
        rig.core.confirm(session, "pio_unknown")
    assert code_of(caught) == ErrorCode.OFFLINE_PAYMENT_INTENT_NOT_FOUND
    with pytest.raises(ReaderError) as caught:
        rig.core.confirm("rss_forged", pi["local_id"])
    assert code_of(caught) == ErrorCode.NOT_CONNECTED_TO_READER
    assert rig.vault.summary().count == 0


def test_offline_behavior_rules(rigs: Factory, cloud: LiveCloud) -> None:
    disabled = make_shop(cloud, offline=False)
    rig: Rig = rigs()
    register(rig, disabled)
    session = connect_online(rig, disabled)["session"]

    def create(behavior: str, **kw: Any) -> ErrorCode | None:
        kw.setdefault("amount", 1000)
        kw.setdefault("currency", "usd")
        try:
            rig.core.create_payment_intent(session, offline_behavior=behavior, **kw)
        except ReaderError as exc:
            return exc.code
        return None

    assert create("force_offline") == ErrorCode.FORCE_OFFLINE_WITH_FEATURE_DISABLED
    # Online, both go to the cloud (tests/reader/test_core_online.py follows them further).
    assert create("prefer_online") is None
    assert create("require_online") is None
    rig.line.down = True
    rig.core.set_online(False)
    assert create("require_online") == ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET
    assert create("prefer_online") == ErrorCode.STRIPE_API_CONNECTION_ERROR
    assert create("sometimes") == ErrorCode.INVALID_REQUIRED_PARAMETER


def test_amount_and_currency_rules(rigs: Factory, cloud: LiveCloud) -> None:
    shop = make_shop(cloud, policy={"max_transaction": {"eur": 5000}})
    rig: Rig = rigs()
    register(rig, shop)
    session = connect_online(rig, shop)["session"]

    def create(amount: int, currency: str) -> ErrorCode | None:
        try:
            rig.core.create_payment_intent(
                session, amount=amount, currency=currency, offline_behavior="force_offline"
            )
        except ReaderError as exc:
            return exc.code
        return None

    assert create(1_000_000, "usd") is None
    assert create(1_000_001, "usd") == ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT
    assert create(5000, "eur") is None
    assert create(5001, "eur") == ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT
    assert create(100, "inr") == ErrorCode.INVALID_OFFLINE_CURRENCY
    assert create(0, "usd") == ErrorCode.INVALID_REQUIRED_PARAMETER
    assert create(100, "dollars") == ErrorCode.INVALID_REQUIRED_PARAMETER


@pytest.mark.parametrize(
    ("country", "presented", "code"),
    [
        ("US", card(read_method="magnetic_stripe_track2"), ErrorCode.CARD_SWIPE_NOT_AVAILABLE),
        ("US", card("4506445006931933"), ErrorCode.INTERAC_NOT_SUPPORTED_OFFLINE),
        ("FR", card(read_method="contactless_emv"), ErrorCode.CONTACTLESS_NOT_AVAILABLE_OFFLINE),
        ("US", card(exp_month=4, exp_year=2026), ErrorCode.OFFLINE_AND_CARD_EXPIRED),
        ("US", card("4001000360000005"), ErrorCode.ONLINE_PIN_NOT_SUPPORTED_OFFLINE),
        ("US", card(cvm="online_pin"), ErrorCode.ONLINE_PIN_NOT_SUPPORTED_OFFLINE),
    ],
)
def test_card_rules_at_collect(
    rigs: Factory, cloud: LiveCloud, country: str, presented: Any, code: ErrorCode
) -> None:
    shop = make_shop(cloud, country=country)
    rig: Rig = rigs()
    register(rig, shop)
    session = connect_online(rig, shop)["session"]
    pi = rig.core.create_payment_intent(
        session, amount=100, currency="usd", offline_behavior="force_offline"
    )
    with pytest.raises(ReaderError) as caught:
        rig.core.collect(session, pi["local_id"], presented)
    assert code_of(caught) == code
    # The intent is still there to collect another card.
    assert rig.core.collect(session, pi["local_id"], card())["status"] == "requires_confirmation"


def test_contactless_is_fine_outside_sca_markets(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    pi = rig.core.create_payment_intent(
        session, amount=100, currency="usd", offline_behavior="force_offline"
    )
    collected = rig.core.collect(session, pi["local_id"], card(read_method="contactless_emv"))
    assert collected["offline_details"]["card_present_details"]["read_method"] == (
        "contactless_emv"
    )


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        ({"max_stored_count": 2}, ErrorCode.OFFLINE_STORED_COUNT_EXCEEDED),
        ({"max_stored_total": {"usd": 2500}}, ErrorCode.OFFLINE_STORED_TOTAL_EXCEEDED),
        ({"max_uses_per_card": 2}, ErrorCode.OFFLINE_CARD_VELOCITY_EXCEEDED),
        ({"max_record_age": 3600}, ErrorCode.OFFLINE_RECORD_TOO_OLD),
    ],
)
def test_risk_policy_at_confirm(
    rigs: Factory, cloud: LiveCloud, clock: ManualClock, policy: dict[str, Any], code: ErrorCode
) -> None:
    shop = make_shop(cloud, policy=policy)
    rig: Rig = rigs()
    register(rig, shop)
    session = connect_online(rig, shop)["session"]
    sell(rig.core, session, 1000)
    sell(rig.core, session, 1000)
    clock.advance(3601)
    with pytest.raises(ReaderError) as caught:
        sell(rig.core, session, 1000)
    assert code_of(caught) == code
    assert rig.vault.summary().count == 2  # nothing stored for the refused one


def test_card_use_counts_are_per_card_and_forget_forwarded_payments(
    rigs: Factory, cloud: LiveCloud
) -> None:
    shop = make_shop(cloud, policy={"max_uses_per_card": 1})
    rig: Rig = rigs(unattended_forwarding=True)
    register(rig, shop)
    session = connect_online(rig, shop)["session"]
    sell(rig.core, session, 100)
    sell(rig.core, session, 100, number="5555555555554444")  # another card is fine
    with pytest.raises(ReaderError) as caught:
        sell(rig.core, session, 100)
    assert code_of(caught) == ErrorCode.OFFLINE_CARD_VELOCITY_EXCEEDED
    # The count is kept in the vault under a keyed hash, never the number.
    assert rig.vault.card_uses(rig.state.card_tag("4242424242424242")) == 1
    assert not scan_for_pans(rig.directory)
    assert rig.core.forwarder.drain().approved == 2
    assert rig.vault.card_uses(rig.state.card_tag("4242424242424242")) == 0
    sell(rig.core, session, 100)  # forwarded payments no longer count


def test_card_uses_an_older_version_kept_in_the_state_file_move_to_the_vault(
    rigs: Factory, cloud: LiveCloud
) -> None:
    shop = make_shop(cloud, policy={"max_uses_per_card": 1})
    rig: Rig = rigs()
    register(rig, shop)
    sell(rig.core, connect_online(rig, shop)["session"], 100)
    tag = rig.state.card_tag("4242424242424242")
    rig.close()
    # As an older version left it: the use in reader.json, none in the vault.
    conn = side_connection(rig.state.vault_dir)
    conn.execute("DELETE FROM card_uses")
    conn.close()
    path = rig.directory / "reader.json"
    doc = json.loads(path.read_text())
    doc["card_uses"] = {tag: [1, 99]}  # 99 is no longer held
    path.write_text(json.dumps(doc))

    again: Rig = rigs()
    assert again.vault.card_uses(tag) == 1
    assert "card_uses" not in json.loads(path.read_text())
    with pytest.raises(ReaderError) as caught:
        sell(again.core, connect_online(again, shop)["session"], 100)
    assert code_of(caught) == ErrorCode.OFFLINE_CARD_VELOCITY_EXCEEDED


def test_a_full_vault_refuses_with_the_stripe_code(rigs: Factory, shop: Shop) -> None:
    rig: Rig = rigs(vault_options={"max_records": 1})
    register(rig, shop)
    session = connect_online(rig, shop)["session"]
    sell(rig.core, session)
    with pytest.raises(ReaderError) as caught:
        sell(rig.core, session)
    assert code_of(caught) == ErrorCode.OFFLINE_PAYMENTS_DATABASE_TOO_LARGE
    assert rig.vault.summary().count == 1


def test_a_failed_write_declines_and_acknowledges_nothing(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    sell(rig.core, session, 100)
    # SQLITE_FULL on demand: cap the database at its current size (the vault's connection).
    conn = rig.vault._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = {f"k{i}": "y" * 500 for i in range(40)}
    declined = None
    for _ in range(50):
        try:
            sell(rig.core, session, 100, metadata=big)
        except ReaderError as exc:
            declined = exc
            break
    assert declined is not None and declined.code == ErrorCode.OFFLINE_TRANSACTION_DECLINED
    count = rig.vault.summary().count
    assert len(rig.vault.pending()) == count
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert sell(rig.core, session, 100)["status"] == "succeeded"
    assert rig.vault.summary().count == count + 1


def test_no_card_number_in_any_file(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    numbers = ("4242424242424242", "5555555555554444", "378282246310005", "6011111111111117")
    for number in numbers:
        sell(rig.core, session, 100, number=number)
    rig.core.close()
    rig.vault.close()
    assert scan_for_pans(rig.directory, numbers) == []


# -- forwarding --------------------------------------------------------------------------------


def test_forwarding_with_the_pos_token(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    seen = answering_pos(rig, shop.token)
    stored = sell(rig.core, session, 1299)
    result = rig.core.forwarder.drain()
    assert result.approved == 1 and result.remaining == 0
    forwarded = [data for name, data in seen if name == "payment_intent_forwarded"]
    assert len(forwarded) == 1
    assert forwarded[0]["local_id"] == stored["local_id"]
    assert forwarded[0]["status"] == "approved"
    pi = forwarded[0]["payment_intent"]
    assert pi["id"].startswith("pi_") and pi["amount"] == 1299
    assert any(name == "connection_token_request" for name, _ in seen)
    statuses = [data for name, data in seen if name == "offline_status"]
    assert statuses[-1]["offline"]["count"] == 0
    assert rig.vault.summary().count == 0


def test_forwarding_failures_keep_the_records(rig: Rig, shop: Shop, cloud: LiveCloud) -> None:
    session = connect_online(rig, shop)["session"]
    other = make_shop(cloud, 1)
    tokens: list[Any] = [other.token(), RuntimeError("backend down")]
    seen = answering_pos(rig, lambda: tokens.pop(0))
    sell(rig.core, session)
    assert rig.core.forwarder.drain().error is not None
    assert rig.core.forwarder.drain().error is not None
    failures = [data["code"] for name, data in seen if name == "forwarding_failure"]
    assert failures == [
        ErrorCode.ACCOUNT_ID_MISMATCH_WHILE_FORWARDING,
        ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING,
    ]
    assert rig.vault.summary().count == 1
    status = rig.core.status()["offline"]
    assert (
        status["last_error"]["code"] == ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING
    )
    assert status["next_retry_at"] is not None


def test_without_a_pos_records_wait_unless_unattended(rigs: Factory, shop: Shop) -> None:
    attended: Rig = rigs("attended", token_wait=0.5)
    register(attended, shop)
    session = connect_online(attended, shop)["session"]
    sell(attended.core, session)
    attended.core.disconnect(session)
    assert attended.core.forwarder.drain().forwarded == 0
    assert attended.line.forward_calls == 0
    unattended: Rig = rigs("unattended", unattended_forwarding=True)
    register(unattended, shop)
    session = connect_online(unattended, shop)["session"]
    sell(unattended.core, session)
    unattended.core.disconnect(session)
    assert unattended.core.forwarder.drain().approved == 1


def test_a_pos_that_does_not_answer_is_a_token_provider_error(rig: Rig, shop: Shop) -> None:
    rig.core._token_wait = 0.05
    session = connect_online(rig, shop)["session"]
    rig.core.subscribe(session, lambda event: None)  # listens, never answers
    sell(rig.core, session)
    result = rig.core.forwarder.drain()
    assert result.error is not None
    assert result.error.code == ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING
    assert rig.vault.summary().count == 1


def test_the_forwarder_wakes_on_store_while_online_and_when_the_cloud_returns(
    rigs: Factory, shop: Shop
) -> None:
    rig: Rig = rigs(unattended_forwarding=True)
    register(rig, shop)
    session = connect_online(rig, shop)["session"]
    rig.core.start()
    # force_offline while online: stored, then forwarded in the background.
    sell(rig.core, session)
    wait_until(lambda: rig.vault.summary().count == 0, "the forwarder drained the store")
    # Stored while the cloud is away: kept until the monitor sees it back.
    rig.line.down = True
    rig.core.set_online(False)
    sell(rig.core, session, behavior="prefer_online")
    assert rig.vault.summary().count == 1
    rig.line.down = False
    rig.core.set_online(True)
    wait_until(lambda: rig.vault.summary().count == 0, "the forwarder drained on reconnection")


def test_forward_now_wakes_the_forwarder(rigs: Factory, shop: Shop) -> None:
    rig: Rig = rigs(unattended_forwarding=True)
    register(rig, shop)
    session = connect_online(rig, shop)["session"]
    rig.core.set_online(False)  # so the store itself does not wake it
    sell(rig.core, session)
    rig.core.start()
    assert rig.core.forward_now() == {"started": True}
    wait_until(lambda: rig.vault.summary().count == 0, "forward_now drained the store")


def test_a_deleted_reader_is_reported_not_crashed(rig: Rig, shop: Shop) -> None:
    identity = rig.state.identity
    assert identity is not None
    shop.client.v1.terminal.readers.delete(identity.reader)
    assert rig.core.heartbeat() is None
    assert rig.core.cloud_problem is not None and "device_key" in rig.core.cloud_problem
    assert rig.core.status()["cloud_problem"] == rig.core.cloud_problem


def test_status_needs_no_cloud(rigs: Factory) -> None:
    rig: Rig = rigs()
    rig.line.down = True
    with pytest.raises(CloudUnreachable):
        rig.core.poll_registration()
    status = rig.core.status()
    assert status["registered"] is False and status["registration_code"] is None
    assert status["network"] == "offline" and status["offline"]["count"] == 0


def test_prefer_online_rechecks_a_cloud_believed_online(rig: Rig, shop: Shop) -> None:
    session = connect_online(rig, shop)["session"]
    monitor = ConnectivityMonitor(
        rig.core.heartbeat, on_change=rig.core.set_online, clock=rig.clock
    )
    rig.core.connectivity_check = monitor.check
    monitor.check()
    assert rig.core.online
    # The cloud went away a moment ago; the monitor has not probed since.
    rig.line.down = True
    stored = sell(rig.core, session, behavior="prefer_online")
    assert stored["status"] == "succeeded" and not rig.core.online
