"""A reader that restarts, a token provider that fails while forwarding, a reader that is
gone mid-call: the SDK answers with a `TerminalException`, never hangs, and recovers."""

from __future__ import annotations

from pathlib import Path

import pytest
from terminal_kit import BackendTokens, Cloud, Merchant, ReaderBox, Recorder, wait_until

from stowpay.reader.daemon import request_forward
from stowpay.terminal import (
    CreateConfiguration,
    ErrorCode,
    NetworkStatus,
    OfflineBehavior,
    PaymentIntentParameters,
    Terminal,
    TerminalException,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def stored_sale(terminal: Terminal, order: str, amount: int = 500) -> None:
    pi = terminal.create_payment_intent(
        PaymentIntentParameters(amount=amount, currency="usd", metadata={"order_id": order}),
        CreateConfiguration(offline_behavior=OfflineBehavior.FORCE_OFFLINE),
    )
    pi = terminal.confirm_payment_intent(terminal.collect_payment_method(pi))
    assert pi.offline_details is not None and pi.offline_details.requires_upload


def test_connect_again_after_the_reader_restarted(
    tmp_path: Path, cloud: Cloud, merchant: Merchant, smart_reader: ReaderBox
) -> None:
    reader_id = smart_reader.register(merchant)
    events = Recorder()
    terminal = Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "pos"
    )
    try:
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK online")
        reader = smart_reader.as_reader(reader_id)
        terminal.connect_reader(reader)
        smart_reader.stop()
        # The reader is gone: calls fail at once with a code, they do not hang.
        with pytest.raises(TerminalException) as caught:
            terminal.create_payment_intent(PaymentIntentParameters(amount=100, currency="usd"))
        assert caught.value.code is ErrorCode.NOT_CONNECTED_TO_READER
        with pytest.raises(TerminalException) as caught:
            terminal.connect_reader(reader)
        assert caught.value.code is ErrorCode.NOT_CONNECTED_TO_READER

        # Back online: the same Reader connects again.
        smart_reader.start()
        connected = terminal.connect_reader(reader)
        assert connected.id == reader_id
        stored_sale(terminal, "B-1")

        # Restarted while the cloud is down: it connects offline, under the offline rules.
        cloud.stop()
        wait_until(lambda: events.saw_network(NetworkStatus.OFFLINE), "the SDK offline")
        smart_reader.stop()
        smart_reader.start()
        wait_until(lambda: smart_reader.status()["network"] == "offline", "the reader offline")
        terminal.connect_reader(reader)
        stored_sale(terminal, "B-2")
        status = terminal.get_offline_status()
        assert status.reader is not None and status.reader.offline_payments_count >= 1

        cloud.start()
        wait_until(
            lambda: sorted(events.forwarded_orders()) == ["B-1", "B-2"],
            "both payments forwarded",
            timeout=90,
        )
        assert all(len(p) == 1 for p in events.forwarded_orders().values())
    finally:
        terminal.close()


def test_a_failing_token_provider_while_forwarding_keeps_the_payments(
    tmp_path: Path, cloud: Cloud, merchant: Merchant, smart_reader: ReaderBox
) -> None:
    reader_id = smart_reader.register(merchant)
    tokens = BackendTokens(merchant)
    events = Recorder()
    terminal = Terminal(tokens, events, api_base=cloud.url, data_dir=tmp_path / "pos")
    try:
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK online")
        terminal.connect_reader(smart_reader.as_reader(reader_id))
        cloud.stop()
        wait_until(lambda: smart_reader.status()["network"] == "offline", "the reader offline")
        tokens.fail = True
        stored_sale(terminal, "C-1")
        stored_sale(terminal, "C-2", 700)

        cloud.start()
        wait_until(
            lambda: any(
                e.code is ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING
                for e in list(events.failures)
            ),
            "on_forwarding_failure for the token provider",
            timeout=90,
        )
        assert events.forwarded == []
        status = terminal.get_offline_status()
        assert status.reader is not None and status.reader.offline_payments_count == 2
        assert smart_reader.status()["offline"]["count"] == 2

        # The backend is back: the next attempt forwards them, each reported once.
        tokens.fail = False
        request_forward(smart_reader.url)
        wait_until(lambda: len(events.forwarded) >= 2, "both forwarded", timeout=90)
        assert sorted(events.forwarded_orders()) == ["C-1", "C-2"]
        assert [len(p) for p in events.forwarded_orders().values()] == [1, 1]
        for pi, error in events.forwarded:
            assert error is None and pi.id is not None
        for order in ("C-1", "C-2"):
            assert len(merchant.by_order(order)) == 1
    finally:
        terminal.close()


def test_force_offline_while_online_is_forwarded_in_the_background(
    tmp_path: Path, cloud: Cloud, merchant: Merchant, smart_reader: ReaderBox
) -> None:
    reader_id = smart_reader.register(merchant)
    events = Recorder()
    with Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "pos"
    ) as terminal:
        terminal.connect_reader(smart_reader.as_reader(reader_id))
        stored_sale(terminal, "F-1", 1500)
        wait_until(lambda: len(events.forwarded) == 1, "forwarded", timeout=60)
        pi, error = events.forwarded[0]
        assert error is None and pi.id is not None
        assert pi.metadata == {"order_id": "F-1"} and pi.amount == 1500
        found = merchant.by_order("F-1")
        assert [f.id for f in found] == [pi.id]


def test_force_offline_needs_offline_enabled(
    tmp_path: Path, cloud: Cloud, smart_reader: ReaderBox
) -> None:
    from terminal_kit import make_merchant

    merchant = make_merchant(cloud, offline=False)
    reader_id = smart_reader.register(merchant)
    with Terminal(
        BackendTokens(merchant), api_base=cloud.url, data_dir=tmp_path / "pos"
    ) as terminal:
        terminal.connect_reader(smart_reader.as_reader(reader_id))
        with pytest.raises(TerminalException) as caught:
            stored_sale(terminal, "D-1")
        assert caught.value.code is ErrorCode.FORCE_OFFLINE_WITH_FEATURE_DISABLED


def test_connecting_offline_needs_an_online_connection_first(
    tmp_path: Path, cloud: Cloud, merchant: Merchant, smart_reader: ReaderBox
) -> None:
    reader_id = smart_reader.register(merchant)
    cloud.stop()
    events = Recorder()
    with Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "pos"
    ) as terminal:
        wait_until(lambda: events.saw_network(NetworkStatus.OFFLINE), "the SDK offline")
        with pytest.raises(TerminalException) as caught:
            terminal.connect_reader(smart_reader.as_reader(reader_id))
        assert caught.value.code is ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE


def test_created_online_and_confirmed_offline_keeps_its_id(
    tmp_path: Path, cloud: Cloud, merchant: Merchant, smart_reader: ReaderBox
) -> None:
    reader_id = smart_reader.register(merchant)
    events = Recorder()
    with Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "pos"
    ) as terminal:
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "the SDK online")
        terminal.connect_reader(smart_reader.as_reader(reader_id))
        pi = terminal.create_payment_intent(
            PaymentIntentParameters(amount=4200, currency="usd", metadata={"order_id": "G-1"})
        )
        assert pi.id is not None and pi.id.startswith("pi_")
        pi = terminal.collect_payment_method(pi)
        cloud.stop()
        confirmed = terminal.confirm_payment_intent(pi)
        assert confirmed.id == pi.id and confirmed.status == "succeeded"
        assert confirmed.offline_details is not None and confirmed.offline_details.requires_upload
        status = terminal.get_offline_status()
        assert status.reader is not None and status.reader.offline_payments_count == 1

        cloud.start()
        wait_until(lambda: len(events.forwarded) == 1, "forwarded", timeout=90)
        forwarded, error = events.forwarded[0]
        assert error is None and forwarded.id == pi.id
        [one] = merchant.by_order("G-1")
        assert one.id == pi.id and one.status == "succeeded" and one.amount == 4200
