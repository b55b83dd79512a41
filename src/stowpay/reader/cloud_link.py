"""The reader's side of the device API: what the reader core asks of the cloud.

The core depends on the `CloudLink` protocol only, so it runs the same over HTTP
(`HttpCloudLink`, the daemon and the SDK) and in tests that cut the line at will. The wire
format of each call is in `docs/reader-protocol.md`.

Errors: `CloudUnreachable` when the answer is unknown (no connection, timeout, a 5xx or 429):
the caller may retry, and for forwarding it must assume the cloud may have committed.
`CloudRefused` when the cloud answered with a definite 4xx refusal and its error `code`;
`CloudDeclined` (a `CloudRefused`) when an online confirm was declined by the issuer. An online
confirm that ends in `CloudUnreachable` may have charged the card: see `confirm_payment_intent`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx2 as httpx

from .. import __version__
from ..wire import jsontext
from .vault import StoredPayment


class CloudError(Exception):
    """A call to the cloud did not succeed."""


class CloudUnreachable(CloudError):
    """No definite answer: the cloud could not be reached, timed out, or failed (5xx, 429)."""


class CloudRefused(CloudError):
    """The cloud refused the call (4xx) with an error code of the device API."""

    def __init__(
        self, status: int, code: str, message: str, error: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        #: the whole error object the cloud answered (empty when it sent none)
        self.error: Mapping[str, Any] = error or {}


class CloudDeclined(CloudRefused):
    """An online confirm the issuer declined (402 `card_error`): a definite answer."""

    @property
    def decline_code(self) -> str | None:
        """The issuer's reason (`insufficient_funds`, ...), when it gave one."""
        code = self.error.get("decline_code")
        return code if isinstance(code, str) else None

    @property
    def payment_intent(self) -> Mapping[str, Any] | None:
        """The PaymentIntent after the decline (`requires_payment_method`)."""
        pi = self.error.get("payment_intent")
        return pi if isinstance(pi, dict) else None


@dataclass(frozen=True)
class DeviceDescription:
    """What an unregistered device tells the cloud when it asks for a registration code."""

    device_type: str
    serial_number: str
    device_sw_version: str
    ip_address: str | None = None


@dataclass(frozen=True)
class RegistrationCode:
    """A code to show on screen until a merchant registers the device with it."""

    code: str
    expires_at: float


@dataclass(frozen=True)
class Activation:
    """The device's identity once a merchant registered it."""

    reader: str
    account: str
    #: the reader's own credential (`rdk_test_...`); sent as a bearer token from then on
    device_key: str = field(repr=False)


@dataclass(frozen=True)
class ReaderContext:
    """What each heartbeat brings back: the reader as the cloud sees it, and its settings."""

    reader: Mapping[str, Any]
    account: str
    location: Mapping[str, Any]
    #: the effective `terminal.configuration` (the Location's, else the account default)
    configuration: Mapping[str, Any]
    #: `{"kid", "public_key" (base64), "alg"}`: `vault.SealingKey.from_document` reads it
    sealing_key: Mapping[str, str]
    server_time: float
    #: the highest offline record sequence the cloud holds from this reader (0: none); None
    #: from a cloud that does not say. A vault behind it was restored from an older copy.
    highest_sequence: int | None = None


@dataclass(frozen=True)
class TokenGrant:
    """A redeemed connection token: whose it is and where it is good."""

    account: str
    location: str | None


@dataclass(frozen=True)
class OnlinePayment:
    """A PaymentIntent the reader asks the cloud to create while online."""

    amount: int
    currency: str
    capture_method: str
    metadata: Mapping[str, str]
    description: str | None
    #: the reader's id for it: the cloud answers the same PaymentIntent for a repeated create
    local_id: str


@dataclass(frozen=True)
class ForwardOutcome:
    """The cloud's answer for one forwarded record."""

    sequence: int
    #: "approved" | "declined" | "rejected" (permanent: the record will never be charged)
    status: str
    payment_intent: Mapping[str, Any] | None
    error: Mapping[str, Any] | None
    #: True when the cloud had this record already and answered from its permanent record
    replayed: bool


class CloudLink(Protocol):
    """The calls the reader core makes to the cloud."""

    def request_registration_code(self, device: DeviceDescription) -> RegistrationCode:
        """Ask for a code to show while unregistered."""
        ...

    def activate(self, code: str) -> Activation | None:
        """Poll with the shown code: the identity once registered, None while pending."""
        ...

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
        """Report in (with the LAN API's address, if it serves one, and the offline backlog);
        get the reader's Location, Configuration and the sealing key."""
        ...

    def ping(self) -> float:
        """The light probe (no credential): the cloud's clock."""
        ...

    def discover(
        self, connection_token: str, *, location: str | None = None
    ) -> list[Mapping[str, Any]]:
        """The readers of the token's account (at `location`), with their `lan_url`."""
        ...

    def redeem_connection_token(self, device_key: str, token: str) -> TokenGrant:
        """Use a POS's connection token (single use): whose it is."""
        ...

    def forward(
        self,
        device_key: str,
        records: Sequence[StoredPayment],
        *,
        connection_token: str | None,
    ) -> list[ForwardOutcome]:
        """Forward stored payments in one request; one outcome per record, in order."""
        ...

    def create_payment_intent(self, device_key: str, payment: OnlinePayment) -> Mapping[str, Any]:
        """Create the PaymentIntent online (the same one again for the same `local_id`)."""
        ...

    def confirm_payment_intent(
        self, device_key: str, payment_intent: str, *, sealed: bytes, display: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Charge the sealed card read; `CloudDeclined` when the issuer declines."""
        ...

    def cancel_payment_intent(self, device_key: str, payment_intent: str) -> Mapping[str, Any]:
        """Cancel a PaymentIntent at the cloud."""
        ...

    def capture_payment_intent(
        self, device_key: str, payment_intent: str, *, amount_to_capture: int | None = None
    ) -> Mapping[str, Any]:
        """Capture an authorized PaymentIntent at the cloud."""
        ...


# -- over HTTP -----------------------------------------------------------------------------

#: How long one call may take before its answer counts as unknown.
DEFAULT_TIMEOUT = 10.0
USER_AGENT = f"stowpay-reader/{__version__}"


T = TypeVar("T")


class _Malformed(Exception):
    """An answer that does not have the shape the protocol gives it."""


class HttpCloudLink:
    """`CloudLink` over the cloud's device API (`/device/v1`, JSON over HTTP).

    One `httpx` client (and its connection pool) serves every call; `close()` releases it.
    `transport` replaces the network (tests, fault injection). A 2xx answer that cannot be
    read counts as unknown (`CloudUnreachable`): the cloud may have acted on the call, and
    every call is safe to repeat (forwarding included, by the records' forward keys).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url + "/device/v1",
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> HttpCloudLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the calls -------------------------------------------------------------------------

    def request_registration_code(self, device: DeviceDescription) -> RegistrationCode:
        """Ask for a code to show while unregistered."""
        body: dict[str, Any] = {
            "device_type": device.device_type,
            "serial_number": device.serial_number,
            "device_sw_version": device.device_sw_version,
        }
        if device.ip_address is not None:
            body["ip_address"] = device.ip_address
        answer = self._post("/registration_codes", body)
        return self._read(
            lambda: RegistrationCode(
                code=_str(answer["registration_code"]), expires_at=_num(answer["expires_at"])
            )
        )

    def activate(self, code: str) -> Activation | None:
        """Poll with the shown code: the identity once registered, None while pending."""
        answer = self._post("/activations", {"registration_code": code})

        def read() -> Activation | None:
            if answer["status"] == "pending":
                return None
            if answer["status"] != "registered":
                raise _Malformed(f"unknown activation status {answer['status']!r}")
            return Activation(
                reader=_str(answer["reader"]),
                account=_str(answer["account"]),
                device_key=_str(answer["device_key"]),
            )

        return self._read(read)

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
        """Report in (with the LAN API's address, for discovery, and the offline backlog, for
        the merchant's dashboard); get the reader's Location, Configuration and the sealing
        key."""
        body: dict[str, Any] = {"status": status, "device_sw_version": device_sw_version}
        if ip_address is not None:
            body["ip_address"] = ip_address
        if lan_url is not None:
            body["lan_url"] = lan_url
        if offline is not None:
            body["offline"] = offline
        answer = self._post("/heartbeat", body, device_key)
        return self._read(
            lambda: ReaderContext(
                reader=_map(answer["reader"]),
                account=_str(answer["account"]),
                location=_map(answer["location"] or {}),
                configuration=_map(answer["configuration"]),
                sealing_key={k: _str(v) for k, v in _map(answer["sealing_key"]).items()},
                server_time=_num(answer["server_time"]),
                highest_sequence=_optional_sequence(answer.get("highest_sequence")),
            )
        )

    def redeem_connection_token(self, device_key: str, token: str) -> TokenGrant:
        """Use a POS's connection token (single use): whose it is."""
        answer = self._post("/connection_tokens/redeem", {"connection_token": token}, device_key)
        return self._read(
            lambda: TokenGrant(
                account=_str(answer["account"]),
                location=None if answer["location"] is None else _str(answer["location"]),
            )
        )

    def forward(
        self,
        device_key: str,
        records: Sequence[StoredPayment],
        *,
        connection_token: str | None,
    ) -> list[ForwardOutcome]:
        """Forward stored payments in one request; one outcome per record, in order."""
        body: dict[str, Any] = {"records": [forward_document(r) for r in records]}
        if connection_token is not None:
            body["connection_token"] = connection_token
        answer = self._post("/offline_payments", body, device_key)

        def read() -> list[ForwardOutcome]:
            outcomes = [_outcome(o) for o in answer["outcomes"]]
            sent = [r.sequence for r in records]
            if [o.sequence for o in outcomes] != sent:
                # Which outcome belongs to which record is unknowable: treat all as unknown.
                raise _Malformed("the outcomes do not match the records sent")
            return outcomes

        return self._read(read)

    # -- for the SDK and online payments -----------------------------------------------------

    def ping(self) -> float:
        """The light probe (no credential): the cloud's clock, if it answers."""
        answer = self._send("GET", "/ping", None)
        return self._read(lambda: _num(answer["server_time"]))

    def discover(
        self, connection_token: str, *, location: str | None = None
    ) -> list[Mapping[str, Any]]:
        """The readers of the token's account (at `location`) with their `lan_url`; uses the
        token up."""
        body: dict[str, Any] = {"connection_token": connection_token}
        if location is not None:
            body["location"] = location
        answer = self._post("/discover", body)
        return self._read(lambda: [_map(r) for r in answer["readers"]])

    def create_payment_intent(self, device_key: str, payment: OnlinePayment) -> Mapping[str, Any]:
        """Create the PaymentIntent online (the same one again for the same `local_id`)."""
        body = {
            "amount": payment.amount,
            "currency": payment.currency,
            "capture_method": payment.capture_method,
            "metadata": dict(payment.metadata),
            "description": payment.description,
            "local_id": payment.local_id,
        }
        answer = self._post("/payment_intents", body, device_key)
        return self._read(lambda: _payment_intent(answer))

    def confirm_payment_intent(
        self, device_key: str, payment_intent: str, *, sealed: bytes, display: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Charge the sealed card read; `CloudDeclined` when the issuer declines.

        `CloudUnreachable` here is the case that matters: the cloud may have charged. Asking
        again is safe (a charged PaymentIntent answers itself), and so is forwarding the
        payment stored under the PaymentIntent's id.
        """
        body = {"sealed": base64.b64encode(sealed).decode("ascii"), "display": dict(display)}
        answer = self._post(
            f"/payment_intents/{_path_id(payment_intent)}/confirm", body, device_key
        )
        return self._read(lambda: _payment_intent(answer))

    def cancel_payment_intent(self, device_key: str, payment_intent: str) -> Mapping[str, Any]:
        """Cancel a PaymentIntent at the cloud (one canceled already answers as it is)."""
        answer = self._post(f"/payment_intents/{_path_id(payment_intent)}/cancel", {}, device_key)
        return self._read(lambda: _payment_intent(answer))

    def capture_payment_intent(
        self, device_key: str, payment_intent: str, *, amount_to_capture: int | None = None
    ) -> Mapping[str, Any]:
        """Capture an authorized PaymentIntent at the cloud."""
        body: dict[str, Any] = {}
        if amount_to_capture is not None:
            body["amount_to_capture"] = amount_to_capture
        path = f"/payment_intents/{_path_id(payment_intent)}/capture"
        answer = self._post(path, body, device_key)
        return self._read(lambda: _payment_intent(answer))

    # -- the wire --------------------------------------------------------------------------

    def _post(
        self, path: str, body: Mapping[str, Any], device_key: str | None = None
    ) -> Mapping[str, Any]:
        return self._send("POST", path, body, device_key)

    def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        device_key: str | None = None,
    ) -> Mapping[str, Any]:
        headers = {"Authorization": f"Bearer {device_key}"} if device_key is not None else {}
        content = None
        if body is not None:
            # A batch of records is large, and the cloud waits while it is written and while
            # its answer is read: orjson does both several times faster than httpx's own.
            content = jsontext.dumps_bytes(body)
            headers["Content-Type"] = "application/json"
        try:
            response = self._client.request(method, path, content=content, headers=headers)
        except httpx.RequestError as exc:
            # Connection refused, reset, timed out: the call may or may not have arrived.
            raise CloudUnreachable(
                f"the cloud could not be reached ({type(exc).__name__})"
            ) from exc
        status = response.status_code
        if status == 429 or status >= 500:
            raise CloudUnreachable(f"the cloud answered {status}")
        if 400 <= status < 500:
            raise _refusal(response)
        if not 200 <= status < 300:
            raise CloudUnreachable(f"the cloud answered {status}")
        try:
            answer = jsontext.loads(response.content)
        except ValueError as exc:
            raise CloudUnreachable("the cloud's answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise CloudUnreachable("the cloud's answer is not a JSON object")
        return answer

    @staticmethod
    def _read(make: Callable[[], T]) -> T:
        """`make()`, with an answer of the wrong shape reported as an unknown outcome."""
        try:
            return make()
        except (_Malformed, KeyError, TypeError, ValueError) as exc:
            raise CloudUnreachable(f"the cloud's answer is malformed: {exc}") from exc


def forward_document(record: StoredPayment) -> dict[str, Any]:
    """A stored payment as a forwarded record (`docs/reader-protocol.md`, "Forwarding")."""
    return {
        "sequence": record.sequence,
        "stored_at": record.stored_at,
        "amount": record.amount,
        "currency": record.currency,
        "capture_method": record.capture_method,
        "metadata": dict(record.metadata),
        "description": record.description,
        "local_id": record.local_id,
        "account": record.account,
        "sealed": base64.b64encode(record.sealed).decode("ascii"),
        "display": record.display.as_dict(),
        "forward_key": record.forward_key,
    }


def _refusal(response: httpx.Response) -> CloudRefused:
    code, message = "", f"the cloud refused the call ({response.status_code})"
    error: dict[str, Any] = {}
    try:
        found = response.json()["error"]
        code = str(found.get("code") or found.get("type") or "")
        message = str(found.get("message") or message)
        error = dict(found)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # a refusal without Stripe's error body is still a refusal
    if response.status_code == 402 and error.get("type") == "card_error":
        return CloudDeclined(response.status_code, code, message, error)
    return CloudRefused(response.status_code, code, message, error)


def _path_id(value: str) -> str:
    """An id as a path segment: only id characters, so nothing else can be named."""
    if not value or not all(c.isascii() and (c.isalnum() or c in "_-") for c in value):
        raise CloudRefused(400, "parameter_invalid", f"not an id: {value[:40]!r}")
    return value


def _payment_intent(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    if doc.get("object") != "payment_intent" or not isinstance(doc.get("id"), str):
        raise _Malformed("expected a PaymentIntent")
    _str(doc["status"])
    return doc


def _outcome(doc: Any) -> ForwardOutcome:
    status = doc["status"]
    if status not in ("approved", "declined", "rejected"):
        raise _Malformed(f"unknown outcome status {status!r}")
    pi, error = doc["payment_intent"], doc["error"]
    return ForwardOutcome(
        sequence=_int(doc["sequence"]),
        status=status,
        payment_intent=None if pi is None else _map(pi),
        error=None if error is None else _map(error),
        replayed=doc["replayed"] is True,
    )


def _map(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed("expected an object")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Malformed("expected a string")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed("expected an integer")
    return value


def _optional_sequence(value: Any) -> int | None:
    if value is None:
        return None
    sequence = _int(value)
    if sequence < 0:
        raise _Malformed("a sequence is not negative")
    return sequence


def _num(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Malformed("expected a number")
    return float(value)
