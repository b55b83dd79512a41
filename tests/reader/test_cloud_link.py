"""`HttpCloudLink`: the reader's client of the device API, against a live cloud on loopback
and against loopback servers that fail in the ways a network does."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import stripe
from vault_kit import OpenVault, payment

from stowpay.cloud.settings import Settings
from stowpay.cloud.testing import LiveCloud, live_cloud
from stowpay.reader.cloud_link import (
    Activation,
    CloudRefused,
    CloudUnreachable,
    DeviceDescription,
    HttpCloudLink,
    forward_document,
)
from stowpay.reader.rules import RiskPolicy
from stowpay.reader.vault import SealingKey, forward_key_for
from stowpay.wire.clock import ManualClock

DEVICE = DeviceDescription("bbpos_wisepos_e", "WSC513-0042", "1.4.0", "10.0.0.7")


@pytest.fixture
def live(tmp_path: Path, clock: ManualClock) -> Iterator[LiveCloud]:
    server = live_cloud(Settings(db=str(tmp_path / "cloud.db"), clock=clock))
    server.new_account()
    server.new_account()
    yield server
    server.stop()


@pytest.fixture
def link(live: LiveCloud) -> Iterator[HttpCloudLink]:
    with HttpCloudLink(live.url + "/") as client:
        yield client


def merchant(cloud: LiveCloud, n: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        cloud.accounts[n].secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )


def activate(link: HttpCloudLink, cloud: LiveCloud, n: int = 0) -> tuple[Activation, str]:
    """Register the device at a new Location of account `n`: its identity and Location."""
    shown = link.request_registration_code(DEVICE)
    c = merchant(cloud, n)
    config = c.v1.terminal.configurations.create(
        params={
            "offline": {"enabled": True},
            "stowpay_offline_policy": {"max_transaction": {"usd": 50000}, "max_stored_count": 9},
        }
    )
    location = c.v1.terminal.locations.create(
        params={
            "display_name": "Shop",
            "address": {"country": "US"},
            "configuration_overrides": config.id,
        }
    )
    c.v1.terminal.readers.create(params={"registration_code": shown.code, "location": location.id})
    activation = link.activate(shown.code)
    assert activation is not None
    return activation, location.id


def test_the_whole_device_life_over_http(
    live: LiveCloud, link: HttpCloudLink, clock: ManualClock, open_vault: OpenVault
) -> None:
    shown = link.request_registration_code(DEVICE)
    assert shown.expires_at == clock.now() + 30 * 60 and len(shown.code) > 10
    assert link.activate(shown.code) is None  # pending: no merchant has entered it yet

    activation, location = activate(link, live)
    assert activation.account == live.accounts[0].account["id"]
    assert activation.device_key.startswith("rdk_test_")
    assert activation.device_key not in repr(activation)

    ctx = link.heartbeat(
        activation.device_key, status="online", ip_address=None, device_sw_version="1.4.1"
    )
    assert ctx.account == activation.account and ctx.reader["id"] == activation.reader
    assert ctx.reader["status"] == "online" and ctx.reader["device_sw_version"] == "1.4.1"
    assert ctx.location["id"] == location and ctx.server_time == clock.now()
    assert ctx.configuration["offline"] == {"enabled": True}
    policy = RiskPolicy.from_config(ctx.configuration["stowpay_offline_policy"])
    assert policy.max_transaction == {"usd": 50000} and policy.max_stored_count == 9

    token = merchant(live).v1.terminal.connection_tokens.create().secret
    grant = link.redeem_connection_token(activation.device_key, token)
    assert (grant.account, grant.location) == (activation.account, location)

    vault = open_vault(sealing_key=SealingKey.from_document(ctx.sealing_key))
    records = [
        vault.store(payment(account=activation.account, reader=activation.reader)),
        vault.store(
            payment(account=activation.account, reader=activation.reader, number="4000000000000002")
        ),
    ]
    token = merchant(live).v1.terminal.connection_tokens.create().secret
    outcomes = link.forward(activation.device_key, records, connection_token=token)
    assert [(o.sequence, o.status, o.replayed) for o in outcomes] == [
        (records[0].sequence, "approved", False),
        (records[1].sequence, "declined", False),
    ]
    assert outcomes[0].payment_intent is not None
    assert outcomes[0].payment_intent["metadata"] == {"order_id": "A-1"}
    assert outcomes[1].error is not None and outcomes[1].error["decline_code"] == "generic_decline"

    again = link.forward(activation.device_key, records, connection_token=None)
    assert [o.replayed for o in again] == [True, True]
    assert [o.payment_intent for o in again] == [o.payment_intent for o in outcomes]


def test_refusals_carry_the_cloud_code(live: LiveCloud, link: HttpCloudLink) -> None:
    with pytest.raises(CloudRefused) as err:
        link.activate("never-shown-code")
    assert (err.value.status, err.value.code) == (404, "registration_code_invalid")

    with pytest.raises(CloudRefused) as err:
        link.heartbeat("rdk_test_forged", status="online", ip_address=None, device_sw_version="1")
    assert (err.value.status, err.value.code) == (401, "device_key_invalid")

    activation, _ = activate(link, live)
    foreign = merchant(live, 1).v1.terminal.connection_tokens.create().secret
    with pytest.raises(CloudRefused) as err:
        link.redeem_connection_token(activation.device_key, foreign)
    assert (err.value.status, err.value.code) == (403, "account_mismatch")
    with pytest.raises(CloudRefused) as err:
        link.forward(activation.device_key, [], connection_token=foreign)
    assert (err.value.status, err.value.code) == (403, "account_id_mismatch")

    merchant(live).v1.terminal.readers.delete(activation.reader)
    with pytest.raises(CloudRefused) as err:
        link.forward(activation.device_key, [], connection_token=None)
    assert (err.value.status, err.value.code) == (401, "device_key_invalid")


def test_a_record_is_forwarded_as_the_protocol_says(open_vault: OpenVault) -> None:
    vault = open_vault()
    record = vault.store(payment(metadata={"order_id": "B-2"}))
    doc = forward_document(record)
    assert set(doc) == {
        "sequence",
        "stored_at",
        "amount",
        "currency",
        "capture_method",
        "metadata",
        "description",
        "local_id",
        "account",
        "sealed",
        "display",
        "forward_key",
    }
    assert base64.b64decode(doc["sealed"]) == record.sealed
    assert doc["display"] == record.display.as_dict() and doc["display"]["last4"] == "4242"
    assert doc["forward_key"] == forward_key_for(record.account, record.reader, record.sequence)
    assert doc["metadata"] == {"order_id": "B-2"} and doc["stored_at"] == record.stored_at
    # The card number itself is sealed: nowhere in what is sent.
    assert "4242424242424242" not in json.dumps(doc)


# -- a network that fails ----------------------------------------------------------------------


class Canned:
    """A loopback HTTP server that answers every request the same way (or not at all)."""

    def __init__(self, status: int, body: bytes, *, hang: bool = False) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.release = threading.Event()
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                canned.requests.append((self.path, dict(self.headers), self.rfile.read(length)))
                if hang:
                    canned.release.wait(30)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def canned_link(status: int, body: Any, **kw: Any) -> Iterator[tuple[HttpCloudLink, Canned]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    server = Canned(status, raw, **kw)
    client = HttpCloudLink(server.url, timeout=0.5)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_failures_and_throttling_are_unreachable(status: int) -> None:
    for client, server in canned_link(status, {"error": {"type": "api_error", "message": "x"}}):
        with pytest.raises(CloudUnreachable):
            client.heartbeat("rdk_test_k", status="online", ip_address=None, device_sw_version="1")
        path, headers, body = server.requests[0]
        assert path == "/device/v1/heartbeat"
        assert headers["Authorization"] == "Bearer rdk_test_k"
        assert json.loads(body) == {"status": "online", "device_sw_version": "1"}


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", {"status": "registered"}, {"status": "maybe"}]
)
def test_unreadable_answers_are_unknown(body: Any) -> None:
    for client, _ in canned_link(200, body):
        with pytest.raises(CloudUnreachable):
            client.activate("some-code")


def test_outcomes_that_do_not_match_the_records_are_unknown(open_vault: OpenVault) -> None:
    vault = open_vault()
    records = [vault.store(payment()), vault.store(payment())]
    one = {"sequence": records[0].sequence, "status": "approved", "payment_intent": None}
    answer = {"outcomes": [{**one, "error": None, "replayed": False}]}
    for client, server in canned_link(200, answer):
        with pytest.raises(CloudUnreachable):
            client.forward("rdk_test_k", records, connection_token="pst_test_t")
        sent = json.loads(server.requests[0][2])
        assert sent["connection_token"] == "pst_test_t"
        assert sent["records"] == [forward_document(r) for r in records]


def test_a_refusal_without_an_error_body_is_still_a_refusal() -> None:
    for client, _ in canned_link(400, b"<html>bad request</html>"):
        with pytest.raises(CloudRefused) as err:
            client.redeem_connection_token("rdk_test_k", "pst_test_t")
        assert err.value.status == 400 and err.value.code == ""


def test_no_answer_in_time_is_unknown() -> None:
    for client, server in canned_link(200, {}, hang=True):
        with pytest.raises(CloudUnreachable):
            client.forward("rdk_test_k", [], connection_token=None)
        assert len(server.requests) == 1


def test_nobody_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with HttpCloudLink(f"http://127.0.0.1:{port}") as client, pytest.raises(CloudUnreachable):
        client.request_registration_code(DEVICE)
