"""Shared helpers for the reader core, LAN and CLI tests: a merchant's shop on a live cloud, a
reader rig (state, vault, core) on a data directory, and a cloud line that can be cut."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stripe

from stowpay.cloud.testing import LiveCloud
from stowpay.reader.cloud_link import (
    Activation,
    CloudUnreachable,
    DeviceDescription,
    ForwardOutcome,
    HttpCloudLink,
    OnlinePayment,
    ReaderContext,
    RegistrationCode,
    TokenGrant,
)
from stowpay.reader.core import Event, ReaderCore
from stowpay.reader.presentment import Presentment
from stowpay.reader.state import ReaderState
from stowpay.reader.vault import StoredPayment, Vault, VaultError
from stowpay.wire.clock import ManualClock

ADDRESSES = {
    "US": {"line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"},
    "FR": {"line1": "1 rue de Rivoli", "city": "Paris", "postal_code": "75001", "country": "FR"},
}


def merchant(cloud: LiveCloud, n: int = 0) -> stripe.StripeClient:
    """The official client, as account `n` of the cloud."""
    return stripe.StripeClient(
        cloud.accounts[n].secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )


@dataclass
class Shop:
    """A merchant's Location with its Configuration."""

    cloud: LiveCloud
    client: stripe.StripeClient
    location: str
    account: str

    def token(self) -> str:
        """A fresh connection token, as the merchant's backend makes it."""
        return str(self.client.v1.terminal.connection_tokens.create().secret)

    def register(self, code: str) -> str:
        """Register a reader with the code it shows; its id."""
        reader = self.client.v1.terminal.readers.create(
            params={"registration_code": code, "location": self.location}
        )
        return str(reader.id)


def make_shop(
    cloud: LiveCloud,
    n: int = 0,
    *,
    offline: bool = True,
    country: str = "US",
    policy: dict[str, Any] | None = None,
) -> Shop:
    """A Location in `country` whose Configuration enables offline (or not), with a policy."""
    client = merchant(cloud, n)
    params: dict[str, Any] = {"offline": {"enabled": offline}}
    if policy:
        params["stowpay_offline_policy"] = policy
    config = client.v1.terminal.configurations.create(params=params)
    location = client.v1.terminal.locations.create(
        params={
            "display_name": "Shop",
            "address": ADDRESSES[country],
            "configuration_overrides": config.id,
        }
    )
    return Shop(cloud, client, str(location.id), cloud.accounts[n].account["id"])


class Line:
    """The reader's real link to the cloud, with a switch that cuts it (CloudUnreachable)."""

    def __init__(self, link: HttpCloudLink) -> None:
        self.link = link
        self.down = False
        self.forward_calls = 0

    def _check(self) -> None:
        if self.down:
            raise CloudUnreachable("the line is cut")

    def request_registration_code(self, device: DeviceDescription) -> RegistrationCode:
        self._check()
        return self.link.request_registration_code(device)

    def activate(self, code: str) -> Activation | None:
        self._check()
        return self.link.activate(code)

    def heartbeat(
        self,
        device_key: str,
        *,
        status: str,
        ip_address: str | None,
        device_sw_version: str,
        lan_url: str | None = None,
        offline: dict[str, Any] | None = None,
    ) -> ReaderContext:
        self._check()
        return self.link.heartbeat(
            device_key,
            status=status,
            ip_address=ip_address,
            device_sw_version=device_sw_version,
            lan_url=lan_url,
            offline=offline,
        )

    def redeem_connection_token(self, device_key: str, token: str) -> TokenGrant:
        self._check()
        return self.link.redeem_connection_token(device_key, token)

    def forward(
        self, device_key: str, records: Sequence[StoredPayment], *, connection_token: str | None
    ) -> list[ForwardOutcome]:
        self._check()
        self.forward_calls += 1
        return self.link.forward(device_key, records, connection_token=connection_token)

    def ping(self) -> float:
        self._check()
        return self.link.ping()

    def discover(self, connection_token: str, *, location: str | None = None) -> Any:
        self._check()
        return self.link.discover(connection_token, location=location)

    def create_payment_intent(self, device_key: str, payment: OnlinePayment) -> Any:
        self._check()
        return self.link.create_payment_intent(device_key, payment)

    def confirm_payment_intent(
        self, device_key: str, payment_intent: str, *, sealed: bytes, display: Any
    ) -> Any:
        self._check()
        return self.link.confirm_payment_intent(
            device_key, payment_intent, sealed=sealed, display=display
        )

    def cancel_payment_intent(self, device_key: str, payment_intent: str) -> Any:
        self._check()
        return self.link.cancel_payment_intent(device_key, payment_intent)

    def capture_payment_intent(
        self, device_key: str, payment_intent: str, *, amount_to_capture: int | None = None
    ) -> Any:
        self._check()
        return self.link.capture_payment_intent(
            device_key, payment_intent, amount_to_capture=amount_to_capture
        )


@dataclass
class Rig:
    """A reader on a data directory: its state, vault and core, and what it said."""

    directory: Path
    clock: ManualClock
    line: Line
    state: ReaderState
    vault: Vault
    core: ReaderCore
    codes: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def close(self) -> None:
        self.core.close()
        with contextlib.suppress(VaultError):
            self.vault.close()


def open_rig(
    directory: Path,
    cloud: LiveCloud,
    clock: ManualClock,
    *,
    line: Line | None = None,
    seed: int = 7,
    **core_options: Any,
) -> Rig:
    """Open (or reopen) a reader on `directory` talking to `cloud`."""
    rng = random.Random(seed)
    state = ReaderState.open(directory, rng=rng)
    vault_options = core_options.pop("vault_options", {})
    vault = Vault.open(state.vault_dir, clock=clock, **vault_options)
    line = line if line is not None else Line(HttpCloudLink(cloud.url))
    codes: list[str] = []
    core = ReaderCore(
        state, vault, line, clock=clock, rng=rng, on_registration_code=codes.append, **core_options
    )
    return Rig(directory, clock, line, state, vault, core, codes)


def register(rig: Rig, shop: Shop) -> str:
    """Take the rig through registration at `shop`; the reader's id."""
    assert rig.core.poll_registration() is False
    reader = shop.register(rig.codes[-1])
    assert rig.core.poll_registration() is True
    rig.core.set_online(True)
    return reader


def connect_online(rig: Rig, shop: Shop, pos_id: str = "till-1", **kw: Any) -> dict[str, Any]:
    """A POS connects online with a fresh token of the shop's account."""
    return rig.core.connect(pos_id=pos_id, connection_token=shop.token(), **kw)


def card(number: str = "4242424242424242", **over: Any) -> Presentment:
    """A presented card (contact chip by default)."""
    fields: dict[str, Any] = {
        "number": number,
        "exp_month": 12,
        "exp_year": 2031,
        "read_method": "contact_emv",
        "cardholder_name": "Ada Lovelace",
    }
    fields.update(over)
    return Presentment(**fields)


def sell(
    core: ReaderCore,
    session: str,
    amount: int = 1299,
    *,
    number: str = "4242424242424242",
    behavior: str = "force_offline",
    **intent: Any,
) -> dict[str, Any]:
    """Create, collect and confirm one offline payment; the confirmed intent."""
    pi = core.create_payment_intent(
        session, amount=amount, currency="usd", offline_behavior=behavior, **intent
    )
    core.collect(session, pi["local_id"], card(number))
    return core.confirm(session, pi["local_id"])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for a condition another thread brings about (the deadline only stops a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.02)
