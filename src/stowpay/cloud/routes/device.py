"""`/device/v1/...`: the device API a reader speaks to the cloud (`docs/reader-protocol.md`).

Plain Starlette routes with JSON bodies, outside the Stripe-compatible `/v1` API and its
OpenAPI document. Readers authenticate with their device key (`Authorization: Bearer
rdk_test_...`), except to ask for a registration code and to activate with it. The logic is
in `domain.devices`; this module reads and checks bodies, runs each call in one database
transaction on a worker thread (so a batch of 500 forwarded records does not hold up the
event loop), wakes the webhook dispatcher when events were written, and answers every error
in Stripe's shape with a `Request-Id`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import json
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import structlog
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from ...wire import jsontext
from ...wire.errors import ApiError, InvalidRequestError, StripeError
from ...wire.metadata import (
    MAX_BRAND,
    MAX_CARDHOLDER_NAME,
    MAX_READ_METHOD,
    contains_card_number,
)
from ..api import Context
from ..domain import backlog, devices, terminal
from ..domain.device_payments import LAN_URL_FIELD
from ..storage import retry_races

if TYPE_CHECKING:
    from ..app import Cloud

log = structlog.get_logger("stowpay.cloud.device")

#: Most records one forwarding request may carry.
MAX_RECORDS = 500
#: Largest request body: 500 records with full metadata fit well within it.
MAX_BODY_BYTES = 16 << 20

Model = TypeVar("Model", bound=BaseModel)


# -- bodies --------------------------------------------------------------------------------


class DeviceBody(BaseModel):
    """A device API body: JSON types as sent (no coercion), no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("not an IP address") from None


def _no_card_number(value: str) -> str:
    # Shown text is kept in the clear (on the PaymentMethod, on receipts): a reader never
    # puts a card number there, and the cloud does not store one that arrives there.
    if contains_card_number(value):
        raise ValueError("must not contain a card number")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200)]
ShownText = Annotated[str, AfterValidator(_no_card_number)]
IpAddress = Annotated[str, Field(max_length=64), AfterValidator(_ip)]
Token = Annotated[str, Field(min_length=1, max_length=255)]


class RegistrationCodeBody(DeviceBody):
    device_type: Annotated[str, Field(min_length=1, max_length=100)]
    serial_number: Name
    device_sw_version: Annotated[str, Field(min_length=1, max_length=100)]
    ip_address: IpAddress | None = None


class ActivationBody(DeviceBody):
    registration_code: Annotated[str, Field(min_length=1, max_length=100)]


class BacklogBody(DeviceBody):
    """What the reader holds offline (`domain.backlog`)."""

    stored_count: Annotated[int, Field(ge=0, le=2**31 - 1)]
    amounts: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=10)], Annotated[int, Field(ge=0)]],
        Field(max_length=200),
    ]
    oldest_stored_at: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class HeartbeatBody(DeviceBody):
    status: Literal["online", "offline"]
    ip_address: IpAddress | None = None
    device_sw_version: Annotated[str, Field(min_length=1, max_length=100)]
    #: where the reader serves POSes; kept private for discovery (`domain.device_payments`)
    lan_url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]{1,200}/?$")] | None = None
    #: the reader's offline backlog, for the merchant's dashboard (`domain.backlog`)
    offline: BacklogBody | None = None


class RedeemBody(DeviceBody):
    connection_token: Token


class DisplayBody(DeviceBody):
    brand: Annotated[ShownText, Field(max_length=MAX_BRAND)] | None = None
    last4: Annotated[str, Field(pattern=r"^[0-9]{4}$")] | None = None
    exp_month: Annotated[int, Field(ge=0, le=99)] | None = None
    exp_year: Annotated[int, Field(ge=0, le=9999)] | None = None
    cardholder_name: (
        Annotated[ShownText, Field(min_length=1, max_length=MAX_CARDHOLDER_NAME)] | None
    ) = None
    read_method: Annotated[ShownText, Field(max_length=MAX_READ_METHOD)] | None = None
    receipt: dict[str, Any] = Field(default_factory=dict)


#: 64-bit bounds: these end up in database integers. Like every check of a record, these
#: and the finer ones (a currency the cloud knows, Stripe's amount limits) reject only the
#: record at fault.
Int64 = Annotated[int, Field(ge=0, le=2**63 - 1)]


RecordSequence = Annotated[int, Field(ge=1, le=2**63 - 1)]
StoredAt = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Currency = Annotated[str, Field(min_length=1, max_length=10)]
LocalId = Annotated[Token, AfterValidator(_no_card_number)]


class RecordBody(DeviceBody):
    sequence: RecordSequence
    stored_at: StoredAt
    amount: Int64
    currency: Currency
    capture_method: Annotated[str, Field(min_length=1, max_length=40)]
    metadata: dict[str, str] = Field(default_factory=dict)
    description: Annotated[ShownText, Field(max_length=5000)] | None = None
    local_id: LocalId
    account: Token
    sealed: Annotated[str, Field(min_length=1, max_length=65536)]
    display: DisplayBody
    forward_key: Token


class ForwardBody(DeviceBody):
    connection_token: Token | None = None
    #: checked one by one (`_record`): a record of the wrong shape is rejected alone
    records: Annotated[list[Any], Field(max_length=MAX_RECORDS)]


def _strict(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation, config=ConfigDict(strict=True))


_SEQUENCE = _strict(RecordSequence)
#: What a malformed record's rejection keeps of it, each field where valid on its own.
_KEPT: dict[str, tuple[TypeAdapter[Any], Any]] = {
    "stored_at": (_strict(StoredAt), 0.0),
    "amount": (_strict(Int64), 0),
    "currency": (_strict(Currency), ""),
    "local_id": (_strict(LocalId), ""),
}


def _invalid(exc: ValidationError, within: tuple[str | int, ...] = ()) -> InvalidRequestError:
    """Stripe's error for the first problem, naming the field as `records[3][amount]`
    (`within` is where the validated value sits in the body)."""
    err = exc.errors(include_url=False)[0]
    # A dict key's own error ends in "[key]": the key is named, as `metadata[note]`.
    parts = [str(p) for p in (*within, *err["loc"]) if p != "[key]"]
    param = parts[0] + "".join(f"[{p}]" for p in parts[1:]) if parts else ""
    kind = err["type"]
    if kind == "missing":
        return InvalidRequestError(
            f"Missing required param: {param}.", code="parameter_missing", param=param
        )
    if kind == "extra_forbidden":
        return InvalidRequestError(
            f"Received unknown parameter: {param}", code="parameter_unknown", param=param
        )
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind == "too_long" and param == "records":
        message = f"A request may carry at most {MAX_RECORDS} records."
    if not param:
        return InvalidRequestError(message, code="parameter_invalid")
    return InvalidRequestError(f"Invalid {param}: {message}", code="parameter_invalid", param=param)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(body: bytes, model: type[Model]) -> Model:
    """A JSON body checked against `model`; Stripe's 400 for anything else."""
    if b"\\u0000" in body:
        # PostgreSQL refuses NUL in text, and no field has a use for one.
        raise InvalidRequestError(
            "NUL characters are not allowed in the request body.", code="parameter_invalid"
        )
    try:
        data = json.loads(body, parse_constant=_no_constant) if body else None
        # A lone surrogate (`"\ud800"`) parses, but no database could store it. It can only
        # come from a `\u` escape, from UTF-8 bytes ED A0-BF, or from a UTF-16 or UTF-32
        # body (every such JSON body has NUL bytes): a body with none of these is not
        # encoded again to look (it would cost as much as the parsing, for 500 records).
        if b"\\u" in body or b"\xed" in body or b"\x00" in body:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        raise InvalidRequestError(
            "The request body is not valid JSON.", code="invalid_json"
        ) from None
    except UnicodeEncodeError:
        raise InvalidRequestError(
            "The request body holds text that is not Unicode.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _record(index: int, raw: Any) -> devices.ArrivedRecord | devices.MalformedRecord:
    """One forwarded record, checked on its own.

    A record of the wrong shape is rejected alone (`MalformedRecord`), so that a rule the
    cloud holds and a reader did not (an older reader, a newer cloud) costs that record, not
    every payment forwarded after it. Only a record whose sequence cannot be read refuses
    the whole batch (400): its outcome could not be named.
    """
    if not isinstance(raw, dict):
        raise InvalidRequestError(
            f"Invalid records[{index}]: must be a JSON object.",
            code="parameter_invalid",
            param=f"records[{index}]",
        )
    if "sequence" not in raw:
        param = f"records[{index}][sequence]"
        raise InvalidRequestError(
            f"Missing required param: {param}.", code="parameter_missing", param=param
        )
    try:
        sequence = _SEQUENCE.validate_python(raw["sequence"])
    except ValidationError as exc:
        raise _invalid(exc, ("records", index, "sequence")) from None
    try:
        return _arrived(RecordBody.model_validate(raw))
    except ValidationError as exc:
        error = _invalid(exc)
    except InvalidRequestError as exc:
        error = exc
    try:
        canonical = json.dumps(raw, sort_keys=True).encode()
    except (ValueError, RecursionError):
        raise error from None
    kept = {
        name: _valid_or(adapter, raw.get(name), empty) for name, (adapter, empty) in _KEPT.items()
    }
    return devices.MalformedRecord(
        sequence=sequence,
        stored_at=kept["stored_at"],
        amount=kept["amount"],
        currency=kept["currency"],
        local_id=kept["local_id"],
        # Its own domain: never the digest of a well-formed record (`digest_of`).
        digest="malformed_" + hashlib.sha256(canonical).hexdigest(),
        error=error.to_body()["error"],
    )


def _valid_or(adapter: TypeAdapter[Any], value: Any, empty: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return empty


def _arrived(record: RecordBody) -> devices.ArrivedRecord:
    try:
        blob = base64.b64decode(record.sealed, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(
            "Invalid sealed: not base64.", code="parameter_invalid", param="sealed"
        ) from None
    return devices.ArrivedRecord(
        sequence=record.sequence,
        stored_at=record.stored_at,
        amount=record.amount,
        currency=record.currency,
        capture_method=record.capture_method,
        metadata=record.metadata,
        description=record.description,
        local_id=record.local_id,
        account=record.account,
        sealed=blob,
        display=record.display.model_dump(),
        forward_key=record.forward_key,
    )


# -- serving -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request, as the worker thread sees it."""

    request_id: str
    body: bytes
    device_key: str | None
    client_host: str | None


#: A call's work: its answer, and how many webhook deliveries it queued.
Work = Callable[[Call], tuple[dict[str, Any], int]]


def _served(value: Any) -> Any:
    """Drop private (`_`-prefixed) keys at every depth, as `/v1` answers do."""
    if isinstance(value, dict):
        return {k: _served(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_served(v) for v in value]
    return value


def json_response(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    """A JSON answer (compact, as on /v1) with private (`_`-prefixed) keys left out."""
    text = jsontext.dumps_bytes(body)
    if b'"_' in text:
        # A private key somewhere (or a string that merely starts with "_"): drop private
        # keys the careful way. Most answers have none, and a batch's 500 PaymentIntents
        # are not copied just to find that out.
        text = jsontext.dumps_bytes(_served(body))
    return Response(text, status, headers, media_type="application/json")


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer ...` header, if there is one."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


async def read_body(request: Request) -> bytes:
    """The request body, refused once it grows past `MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise InvalidRequestError("The request body is too large.", code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidRequestError(
            "The request body did not arrive in full.", code="invalid_json"
        ) from None
    return b"".join(chunks)


class DeviceApi:
    """The device routes of one cloud process."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.settings = cloud.settings
        self.store = cloud.store
        # One worker for SQLite, whose writers queue for one lock anyway (and whose pool
        # keeps a connection per thread); a few for PostgreSQL.
        self.executor = ThreadPoolExecutor(
            max_workers=1 if self.store.is_sqlite else 4, thread_name_prefix="stowpay-device"
        )
        # The worker ends with the app (the finalizer holds the executor, not this object).
        weakref.finalize(self, self.executor.shutdown, wait=False)

    def routes(self) -> list[BaseRoute]:
        """The routes, mounted under `/device/v1`."""
        calls: dict[str, Work] = {
            "/registration_codes": self.registration_code,
            "/activations": self.activation,
            "/heartbeat": self.heartbeat,
            "/connection_tokens/redeem": self.redeem,
            "/offline_payments": self.offline_payments,
        }
        return [
            Mount(
                "/device/v1",
                routes=[
                    Route(path, self._endpoint(work), methods=["POST"])
                    for path, work in calls.items()
                ],
            )
        ]

    def _endpoint(self, work: Work) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            return await self.handle(request, work)

        return run

    async def handle(self, request: Request, work: Work) -> Response:
        """Run one call off the event loop and answer it with a 200."""
        return await self.answer(request, lambda call, _path: (200, *work(call)))

    async def answer(
        self,
        request: Request,
        work: Callable[[Call, dict[str, str]], tuple[int, dict[str, Any], int]],
    ) -> Response:
        """Run `work` (given the call and its path parameters; it returns the status, the
        answer and the webhook deliveries it queued) on the worker thread and answer it."""
        request_id = self.settings.ids.new("req")
        headers = {"Request-Id": request_id}
        try:
            call = Call(
                request_id=request_id,
                body=await read_body(request),
                device_key=bearer_token(request.headers.get("authorization")),
                client_host=request.client.host if request.client else None,
            )
            path = {k: str(v) for k, v in request.path_params.items()}
            loop = asyncio.get_running_loop()
            # A transaction that lost a race with another cloud process (the same record
            # forwarded to two of them) runs again, and then reads the winner's outcome.
            status, answer, queued = await loop.run_in_executor(
                self.executor, retry_races, lambda: work(call, path)
            )
            if queued and self.cloud.dispatcher is not None:
                # As on /v1: events were written, so their webhooks leave now, not at a poll.
                self.cloud.dispatcher.wake()
            return json_response(status, answer, headers)
        except StripeError as err:
            return json_response(err.http_status, err.to_body(request_id), headers)
        except Exception:
            log.exception("unhandled device API error", request_id=request_id)
            headers["Stripe-Should-Retry"] = "true"
            failure = ApiError("An unknown error occurred. Please try again.")
            return json_response(failure.http_status, failure.to_body(request_id), headers)

    # -- the calls (each runs on the worker thread) ----------------------------------------

    def registration_code(self, call: Call) -> tuple[dict[str, Any], int]:
        body = parse(call.body, RegistrationCodeBody)
        device = terminal.DeviceInfo(
            device_type=body.device_type,
            serial_number=body.serial_number,
            device_sw_version=body.device_sw_version,
            ip_address=body.ip_address or call.client_host,
        )
        now = self.settings.clock.now()
        ttl = terminal.REGISTRATION_CODE_TTL
        with self.store.write() as tx:
            code = terminal.issue_registration_code(tx, device, now=now, ttl=ttl)
        return {"registration_code": code, "expires_at": now + ttl}, 0

    def activation(self, call: Call) -> tuple[dict[str, Any], int]:
        body = parse(call.body, ActivationBody)
        with self.store.write() as tx:
            return devices.activate(tx, body.registration_code, now=self.settings.clock.now()), 0

    def heartbeat(self, call: Call) -> tuple[dict[str, Any], int]:
        with self.store.write() as tx:
            account, reader = devices.authenticate(tx, call.device_key)
            body = parse(call.body, HeartbeatBody)
            if body.lan_url is not None:
                reader[LAN_URL_FIELD] = body.lan_url.rstrip("/")
            now = self.settings.clock.now()
            backlog.note_software(reader, body.device_sw_version, now)
            if body.offline is not None:
                held = body.offline
                report = backlog.Backlog(held.stored_count, held.amounts, held.oldest_stored_at)
                backlog.note_backlog(tx, account["id"], reader, report, now)
            answer = devices.heartbeat(
                tx,
                self.settings.clock,
                account["id"],
                reader,
                status=body.status,
                ip_address=body.ip_address or call.client_host,
                device_sw_version=body.device_sw_version,
            )
            return answer, 0

    def redeem(self, call: Call) -> tuple[dict[str, Any], int]:
        with self.store.write() as tx:
            account, reader = devices.authenticate(tx, call.device_key)
            body = parse(call.body, RedeemBody)
            answer = devices.redeem_connection_token(
                tx, account["id"], reader, body.connection_token, now=self.settings.clock.now()
            )
            return answer, 0

    def offline_payments(self, call: Call) -> tuple[dict[str, Any], int]:
        # One transaction for the batch: every outcome commits, or none does (a 5xx, and the
        # reader sends the same records again).
        with self.store.write() as tx:
            account, reader = devices.authenticate(tx, call.device_key)
            body = parse(call.body, ForwardBody)
            records = [_record(i, r) for i, r in enumerate(body.records)]
            ctx = Context(
                account=account,
                tx=tx,
                clock=self.settings.clock,
                ids=self.settings.ids,
                request_id=call.request_id,
                idempotency_key=None,
                settings=self.settings,
            )
            outcomes = devices.forward(ctx, reader, records, connection_token=body.connection_token)
            queued = tx.queued_deliveries
        return {"outcomes": outcomes}, queued


def device_routes(cloud: Cloud) -> list[BaseRoute]:
    """The device API's routes for `cloud`, to add to its app."""
    from .device_payments import payment_routes  # it imports this module

    api = DeviceApi(cloud)
    # Full paths, before the mount (which answers every path under /device/v1).
    return payment_routes(api) + api.routes()
