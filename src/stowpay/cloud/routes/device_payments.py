"""`/device/v1/...` for the SDK and online payments: ping, discover, a reader's PaymentIntents.

The wire format is `docs/reader-protocol.md`; the logic is in `domain.device_payments`. The
calls run like the rest of the device API (`routes.device`): one database transaction each on
the device API's worker thread, errors in Stripe's shape with a `Request-Id`. A decline is an
answer, not a failure: its charge and events are committed, then it is answered as 402
`card_error` with the `payment_intent`, as `/v1` answers it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import structlog
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...wire.errors import CardError, InvalidRequestError
from ...wire.money import MAXIMUM_AMOUNT
from ..api import Context
from ..domain import device_payments as domain
from ..domain import devices
from ..params import Metadata
from .device import (
    Call,
    DeviceApi,
    DeviceBody,
    DisplayBody,
    Token,
    json_response,
    parse,
)

log = structlog.get_logger("stowpay.cloud.device")

#: (HTTP status, answer, webhook deliveries queued)
Answer = tuple[int, dict[str, Any], int]
#: A call's work, given the request and its path parameters; runs on the worker thread.
Work = Callable[[Call, dict[str, str]], Answer]


class CreateBody(DeviceBody):
    amount: Annotated[int, Field(ge=1, le=MAXIMUM_AMOUNT)]
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    capture_method: Literal["automatic", "automatic_async", "manual"] = "automatic"
    metadata: Metadata = Field(default_factory=dict)
    description: Annotated[str, Field(max_length=1000)] | None = None
    local_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,255}$")]


class ConfirmBody(DeviceBody):
    sealed: Annotated[str, Field(min_length=1, max_length=65536)]
    display: DisplayBody


class CaptureBody(DeviceBody):
    amount_to_capture: Annotated[int, Field(ge=1, le=MAXIMUM_AMOUNT)] | None = None


class DiscoverBody(DeviceBody):
    connection_token: Token
    location: Token | None = None


class DevicePayments:
    """The routes of this module, served on the device API's worker."""

    def __init__(self, api: DeviceApi) -> None:
        self.api = api
        self.cloud = api.cloud
        self.settings = api.settings
        self.store = api.store

    def routes(self) -> list[BaseRoute]:
        """The routes (full paths: they go before the device API's `/device/v1` mount)."""
        base = "/device/v1"
        calls: dict[str, Work] = {
            "/discover": self.discover,
            "/payment_intents": self.create,
            "/payment_intents/{intent}/confirm": self.confirm,
            "/payment_intents/{intent}/cancel": self.cancel,
            "/payment_intents/{intent}/capture": self.capture,
        }
        routes: list[BaseRoute] = [Route(base + "/ping", self.ping, methods=["GET"])]
        routes.extend(
            Route(base + path, self._endpoint(work), methods=["POST"])
            for path, work in calls.items()
        )
        return routes

    async def ping(self, request: Request) -> Response:
        """The SDK's light probe: no database, no credential."""
        headers = {"Request-Id": self.settings.ids.new("req")}
        return json_response(200, {"ok": True, "server_time": self.settings.clock.now()}, headers)

    def _endpoint(self, work: Work) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            return await self.serve(request, work)

        return run

    async def serve(self, request: Request, work: Work) -> Response:
        """Run one call off the event loop and answer it (`DeviceApi.answer`)."""
        return await self.api.answer(request, work)

    def _context(self, call: Call, account: dict[str, Any], tx: Any) -> Context:
        return Context(
            account=account,
            tx=tx,
            clock=self.settings.clock,
            ids=self.settings.ids,
            request_id=call.request_id,
            idempotency_key=None,
            settings=self.settings,
        )

    def _reader_call(
        self, call: Call, act: Callable[[Context, dict[str, Any]], dict[str, Any]]
    ) -> Answer:
        """Run `act` for the device key's reader in one transaction; a decline commits."""
        with self.store.write() as tx:
            account, reader = devices.authenticate(tx, call.device_key)
            ctx = self._context(call, account, tx)
            try:
                status, answer = 200, act(ctx, reader)
            except CardError as err:
                # The declined charge and its events are kept, as on /v1.
                status, answer = err.http_status, err.to_body(call.request_id)
            return status, answer, tx.queued_deliveries

    # -- the calls (each runs on the worker thread) ----------------------------------------

    def discover(self, call: Call, path: dict[str, str]) -> Answer:
        body = parse(call.body, DiscoverBody)
        with self.store.write() as tx:
            answer = domain.discover(
                tx, body.connection_token, body.location, now=self.settings.clock.now()
            )
        return 200, answer, 0

    def create(self, call: Call, path: dict[str, str]) -> Answer:
        def act(ctx: Context, reader: dict[str, Any]) -> dict[str, Any]:
            body = parse(call.body, CreateBody)
            new = domain.NewPayment(
                amount=body.amount,
                currency=body.currency,
                capture_method=body.capture_method,
                metadata=body.metadata,
                description=body.description,
                local_id=body.local_id,
            )
            return domain.create(ctx, reader, new)

        return self._reader_call(call, act)

    def confirm(self, call: Call, path: dict[str, str]) -> Answer:
        def act(ctx: Context, reader: dict[str, Any]) -> dict[str, Any]:
            body = parse(call.body, ConfirmBody)
            try:
                sealed = base64.b64decode(body.sealed, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequestError(
                    "Invalid sealed: not base64.", code="parameter_invalid", param="sealed"
                ) from None
            display = body.display.model_dump()
            return domain.confirm(ctx, reader, path["intent"], sealed=sealed, display=display)

        return self._reader_call(call, act)

    def cancel(self, call: Call, path: dict[str, str]) -> Answer:
        def act(ctx: Context, reader: dict[str, Any]) -> dict[str, Any]:
            if call.body.strip():
                parse(call.body, DeviceBody)
            return domain.cancel(ctx, path["intent"])

        return self._reader_call(call, act)

    def capture(self, call: Call, path: dict[str, str]) -> Answer:
        def act(ctx: Context, reader: dict[str, Any]) -> dict[str, Any]:
            body = parse(call.body or b"{}", CaptureBody)
            return domain.capture(ctx, path["intent"], body.amount_to_capture)

        return self._reader_call(call, act)


def payment_routes(api: DeviceApi) -> list[BaseRoute]:
    """This module's routes, served with `api`'s worker."""
    return DevicePayments(api).routes()
