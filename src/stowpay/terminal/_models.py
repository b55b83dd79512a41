"""The SDK's value objects: configurations going in, readers, PaymentIntents and statuses
coming out. Names mirror Stripe Terminal's, in Python spelling.

All are frozen dataclasses: a call returns a new `PaymentIntent` rather than changing the one
given. The private `_from_wire` helpers read the reader's JSON (the LAN API, or the in-process
core's dicts, which are the same documents).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any


class NetworkStatus(Enum):
    """Whether the cloud can be reached (Stripe's `NetworkStatus`)."""

    #: not determined yet: the initial value, and readers found by offline discovery
    UNKNOWN = "unknown"
    #: the cloud cannot be reached
    OFFLINE = "offline"
    #: the cloud can be reached
    ONLINE = "online"


class OfflineBehavior(Enum):
    """How a PaymentIntent may be taken when the cloud is out of reach."""

    #: online when the cloud is reachable, else stored offline (the default)
    PREFER_ONLINE = "prefer_online"
    #: online only; offline it fails with NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET
    REQUIRE_ONLINE = "require_online"
    #: stored offline even when online, forwarded in the background
    FORCE_OFFLINE = "force_offline"


class DiscoveryMethod(Enum):
    """Where the reader is and how the SDK talks to it."""

    #: a smart reader on the local network, found through the cloud (the default)
    INTERNET = "internet"
    #: a mobile reader; with ``simulated=True`` it runs in the app's process and the SDK itself
    #: stores offline payments (`OfflineStatus.sdk`)
    BLUETOOTH_SCAN = "bluetooth_scan"
    #: the app runs on the reader itself (Apps on Devices): the reader's core in-process
    HANDOFF = "handoff"


@dataclass(frozen=True)
class DiscoveryConfiguration:
    """What `Terminal.discover_readers` looks for."""

    #: readers registered at this Location (`tml_...`); None: every reader of the account
    location: str | None = None
    method: DiscoveryMethod = DiscoveryMethod.INTERNET
    #: a simulated reader (required for BLUETOOTH_SCAN: no radio is used)
    simulated: bool = False
    #: seconds to wait for the cloud before falling back to the cached readers
    timeout: float = 10.0


@dataclass(frozen=True)
class Reader:
    """A card reader the SDK can connect to."""

    #: the cloud's id (`tmr_...`); None for an in-process reader not registered yet
    id: str | None
    label: str | None = None
    device_type: str | None = None
    serial_number: str | None = None
    #: the reader's Location (`tml_...`)
    location: str | None = None
    #: the reader as last seen by the cloud; UNKNOWN for readers found by offline discovery
    network_status: NetworkStatus = NetworkStatus.UNKNOWN
    ip_address: str | None = None
    #: the reader's LAN API (``http://host:port``); None for in-process readers
    lan_url: str | None = None
    discovery_method: DiscoveryMethod = DiscoveryMethod.INTERNET
    simulated: bool = False
    #: while an in-process reader is unregistered: the code to register it with
    #: (``POST /v1/terminal/readers registration_code=...`` from the merchant's backend)
    registration_code: str | None = None


@dataclass(frozen=True)
class SimulatedCard:
    """The card the simulated reader reads at the next `collect_payment_method`.

    Holds a test card number: the reader seals it at once and only `last4` ever leaves.
    """

    number: str = field(default="4242424242424242", repr=False)
    #: contact_emv, contactless_emv, magnetic_stripe_track2, ...
    read_method: str = "contact_emv"
    exp_month: int = 12
    exp_year: int = 2040
    cardholder_name: str | None = None
    #: cardholder verification: offline_pin, online_pin, signature, none; None: the card's own
    cvm: str | None = None

    def _wire(self) -> dict[str, Any]:
        card: dict[str, Any] = {
            "number": self.number,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
            "read_method": self.read_method,
        }
        if self.cardholder_name is not None:
            card["cardholder_name"] = self.cardholder_name
        if self.cvm is not None:
            card["cvm"] = self.cvm
        return card


@dataclass(frozen=True)
class PaymentIntentParameters:
    """What to charge: the parameters of `Terminal.create_payment_intent`."""

    amount: int
    currency: str
    #: the app's own ids (an order id): the only link to an offline payment until forwarded
    metadata: dict[str, str] = field(default_factory=dict)
    #: "automatic" or "manual"
    capture_method: str = "automatic"
    description: str | None = None


@dataclass(frozen=True)
class CreateConfiguration:
    """How `Terminal.create_payment_intent` may take the payment."""

    offline_behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE


@dataclass(frozen=True)
class CollectConfiguration:
    """Options of `Terminal.collect_payment_method`."""

    #: attach the payment method to the PaymentIntent (online only; offline it stays absent)
    update_payment_intent: bool = False
    skip_tipping: bool = True


@dataclass(frozen=True)
class ReceiptDetails:
    """What a card-present receipt shows. Offline, `account_type`, `authorization_code` and
    `authorization_response_code` are None: only the issuer can tell them."""

    account_type: str | None = None
    application_preferred_name: str | None = None
    dedicated_file_name: str | None = None
    authorization_code: str | None = None
    authorization_response_code: str | None = None
    application_cryptogram: str | None = None
    terminal_verification_results: str | None = None
    transaction_status_information: str | None = None
    cardholder_verification_method: str | None = None

    @classmethod
    def _from_wire(cls, doc: Mapping[str, Any]) -> ReceiptDetails:
        return cls(
            account_type=_opt_str(doc.get("account_type")),
            application_preferred_name=_opt_str(doc.get("application_preferred_name")),
            dedicated_file_name=_opt_str(doc.get("dedicated_file_name")),
            authorization_code=_opt_str(doc.get("authorization_code")),
            authorization_response_code=_opt_str(doc.get("authorization_response_code")),
            application_cryptogram=_opt_str(doc.get("application_cryptogram")),
            terminal_verification_results=_opt_str(doc.get("terminal_verification_results")),
            transaction_status_information=_opt_str(doc.get("transaction_status_information")),
            cardholder_verification_method=_opt_str(doc.get("cardholder_verification_method")),
        )


@dataclass(frozen=True)
class OfflineCardPresentDetails:
    """The card of an offline payment, as far as it may be known: never its number."""

    brand: str | None
    cardholder_name: str | None
    exp_month: int
    exp_year: int
    last4: str | None
    read_method: str | None
    receipt_details: ReceiptDetails | None

    @classmethod
    def _from_wire(cls, doc: Mapping[str, Any]) -> OfflineCardPresentDetails:
        receipt = doc.get("receipt_details")
        return cls(
            brand=_opt_str(doc.get("brand")),
            cardholder_name=_opt_str(doc.get("cardholder_name")),
            exp_month=_int(doc.get("exp_month")),
            exp_year=_int(doc.get("exp_year")),
            last4=_opt_str(doc.get("last4")),
            read_method=_opt_str(doc.get("read_method")),
            receipt_details=ReceiptDetails._from_wire(receipt)
            if isinstance(receipt, Mapping)
            else None,
        )


@dataclass(frozen=True)
class OfflineDetails:
    """Set on a PaymentIntent confirmed offline."""

    #: when the payment was stored (UTC); None before confirm
    stored_at: datetime | None
    #: True until the payment was forwarded to the cloud (then it may be captured)
    requires_upload: bool
    card_present_details: OfflineCardPresentDetails | None

    @classmethod
    def _from_wire(cls, doc: Mapping[str, Any]) -> OfflineDetails:
        stored = doc.get("stored_at")
        card = doc.get("card_present_details")
        return cls(
            stored_at=None
            if not isinstance(stored, int | float)
            else datetime.fromtimestamp(float(stored), UTC),
            requires_upload=doc.get("requires_upload") is not False,
            card_present_details=OfflineCardPresentDetails._from_wire(card)
            if isinstance(card, Mapping)
            else None,
        )


@dataclass(frozen=True)
class PaymentIntent:
    """A payment, online (with the cloud's `id`) or offline (`id` None until forwarded)."""

    #: the cloud's id (`pi_...`); None while the payment exists only on the reader
    id: str | None
    amount: int
    currency: str
    #: requires_payment_method, requires_confirmation, requires_capture, succeeded, canceled
    status: str
    capture_method: str
    metadata: dict[str, str]
    description: str | None = None
    #: creation time (seconds since the epoch)
    created: int = 0
    amount_capturable: int = 0
    amount_received: int = 0
    livemode: bool = False
    #: set when the payment was (or is being) taken offline
    offline_details: OfflineDetails | None = None
    #: the reader's own id of the payment (`pio_...`): how the SDK finds it before forwarding
    local_id: str | None = None
    #: the latest Charge's id, once the cloud has one
    latest_charge: str | None = None
    #: the last failure (a decline): the cloud's `last_payment_error`
    last_payment_error: dict[str, Any] | None = None

    @classmethod
    def _from_wire(cls, doc: Mapping[str, Any]) -> PaymentIntent:
        offline = doc.get("offline_details")
        metadata = doc.get("metadata")
        charge = doc.get("latest_charge")
        if isinstance(charge, Mapping):
            charge = charge.get("id")
        error = doc.get("last_payment_error")
        return cls(
            id=_opt_str(doc.get("id")),
            amount=_int(doc.get("amount")),
            currency=str(doc.get("currency") or ""),
            status=str(doc.get("status") or ""),
            capture_method=str(doc.get("capture_method") or "automatic"),
            metadata={str(k): str(v) for k, v in metadata.items()}
            if isinstance(metadata, Mapping)
            else {},
            description=_opt_str(doc.get("description")),
            created=_int(doc.get("created")),
            amount_capturable=_int(doc.get("amount_capturable")),
            amount_received=_int(doc.get("amount_received")),
            livemode=doc.get("livemode") is True,
            offline_details=OfflineDetails._from_wire(offline)
            if isinstance(offline, Mapping)
            else None,
            local_id=_opt_str(doc.get("local_id")),
            latest_charge=_opt_str(charge),
            last_payment_error=dict(error) if isinstance(error, Mapping) else None,
        )

    @property
    def ready_to_capture(self) -> bool:
        """`requires_capture` and forwarded (or never offline): capture may be asked now."""
        return self.status == "requires_capture" and (
            self.offline_details is None or not self.offline_details.requires_upload
        )


@dataclass(frozen=True)
class OfflineStatusDetails:
    """One store's offline payments (the SDK's or the reader's) and its view of the network."""

    network_status: NetworkStatus = NetworkStatus.UNKNOWN
    offline_payments_count: int = 0
    #: stored amounts in minor units by lowercase currency, e.g. ``{"usd": 2598}``
    offline_payment_amounts_by_currency: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OfflineStatus:
    """The SDK's and the connected smart reader's offline payments."""

    #: the app's own store (in-process readers) and the SDK's reachability of the cloud
    sdk: OfflineStatusDetails = field(default_factory=OfflineStatusDetails)
    #: the connected smart reader's store; None with no smart reader connected
    reader: OfflineStatusDetails | None = None


def _details_from_wire(network: object, offline: object) -> OfflineStatusDetails:
    """An `OfflineStatusDetails` from the reader's ``network`` and ``offline`` block."""
    block = offline if isinstance(offline, Mapping) else {}
    amounts = block.get("amounts")
    status = {"online": NetworkStatus.ONLINE, "offline": NetworkStatus.OFFLINE}.get(
        str(network), NetworkStatus.UNKNOWN
    )
    return OfflineStatusDetails(
        network_status=status,
        offline_payments_count=_int(block.get("count")),
        offline_payment_amounts_by_currency={str(k): _int(v) for k, v in amounts.items()}
        if isinstance(amounts, Mapping)
        else {},
    )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return 0
