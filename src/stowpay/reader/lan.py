"""The reader's LAN API: a Starlette app over `ReaderCore` (see docs/reader-protocol.md).

JSON in and out. Every answer to a bad request is `{"error": {"type", "code", "message"}}`
with a Terminal `ErrorCode` as `code` and a 4xx status: never a traceback. Blocking work (the
vault's fsyncs, calls to the cloud) runs in the thread pool, off the event loop.

`GET /v1/events` is a server-sent event stream for the connected POS: `offline_status`,
`payment_intent_forwarded`, `forwarding_failure`, and `connection_token_request` (which the POS
answers with `POST /v1/connection_token`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..wire.metadata import mask_card_numbers
from ..wire.terminal_codes import ErrorCode
from .core import Event, ReaderCore, ReaderError
from .presentment import Presentment, PresentmentError

log = structlog.get_logger("stowpay.reader.lan")

#: The largest request body the reader reads.
MAX_BODY = 64 * 1024
#: A comment line goes down an idle event stream this often, so dead connections show.
KEEPALIVE = 15.0

#: HTTP status by error code; anything not listed is 400.
_STATUS: dict[ErrorCode, int] = {
    ErrorCode.NOT_CONNECTED_TO_READER: 401,
    ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR: 401,
    ErrorCode.OFFLINE_AND_CARD_EXPIRED: 402,
    ErrorCode.OFFLINE_TRANSACTION_DECLINED: 402,
    ErrorCode.DECLINED_BY_STRIPE_API: 402,
    ErrorCode.STRIPE_API_ERROR: 403,
    ErrorCode.OFFLINE_PAYMENT_INTENT_NOT_FOUND: 404,
    ErrorCode.READER_BUSY: 409,
    ErrorCode.MISSING_PREREQUISITE: 409,
    ErrorCode.OFFLINE_PAYMENTS_DATABASE_TOO_LARGE: 409,
    ErrorCode.STRIPE_API_CONNECTION_ERROR: 503,
    ErrorCode.UNEXPECTED_SDK_ERROR: 500,
}

Handler = Callable[[Request], Awaitable[Response]]


def error_response(
    code: ErrorCode | str,
    message: str,
    status: int,
    *,
    type_: str = "terminal_error",
    param: str | None = None,
    api_code: str | None = None,
) -> JSONResponse:
    """The LAN API's error body (a card number in it, as in a parameter's name the POS sent,
    written as asterisks)."""
    error: dict[str, Any] = {
        "type": type_,
        "code": str(code),
        "message": mask_card_numbers(message),
    }
    if param is not None:
        error["param"] = mask_card_numbers(param)
    if api_code is not None:
        error["api_error_code"] = api_code
    return JSONResponse({"error": error}, status_code=status)


def _reader_error(exc: ReaderError) -> JSONResponse:
    if exc.payment_intent is None and exc.decline_code is None:
        return error_response(
            exc.code,
            exc.message,
            _STATUS.get(exc.code, 400),
            param=exc.param,
            api_code=exc.api_code,
        )
    # An online decline carries the decline code and the PaymentIntent as it is now, as
    # Stripe's card errors do.
    error: dict[str, Any] = {
        "type": "terminal_error",
        "code": str(exc.code),
        "message": mask_card_numbers(exc.message),
        "decline_code": exc.decline_code,
        "payment_intent": None if exc.payment_intent is None else dict(exc.payment_intent),
    }
    if exc.api_code is not None:
        error["api_error_code"] = exc.api_code
    return JSONResponse({"error": error}, status_code=_STATUS.get(exc.code, 400))


def _endpoint(handler: Handler) -> Handler:
    """Turn every failure of `handler` into the error shape; no traceback ever leaves."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ReaderError as exc:
            return _reader_error(exc)
        except PresentmentError as exc:
            return error_response(
                ErrorCode.INVALID_REQUIRED_PARAMETER, exc.message, 400, param=exc.param
            )
        except Exception:
            log.error("lan_request_failed", path=request.url.path, exc_info=True)
            return error_response(
                ErrorCode.UNEXPECTED_SDK_ERROR, "The reader failed unexpectedly.", 500
            )

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# --- reading requests -------------------------------------------------------------------------


def _invalid(message: str, param: str | None = None) -> ReaderError:
    return ReaderError(ErrorCode.INVALID_REQUIRED_PARAMETER, message, param=param)


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object in the request body ({} when empty)."""
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
        raise _invalid(f"The request body must be at most {MAX_BODY} bytes of JSON.")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise _invalid(f"The request body must be at most {MAX_BODY} bytes of JSON.")
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise _invalid("The request body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise _invalid("The request body must be a JSON object.")
    return doc


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _str(body: Mapping[str, Any], name: str, *, required: bool = False, limit: int = 500) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise _invalid(f"Missing required parameter: {name}.", name)
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise _invalid(f"{name} must be a string of at most {limit} characters.", name)
    if required and not value:
        raise _invalid(f"Missing required parameter: {name}.", name)
    return value


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be true or false.", name)
    return value


def _metadata(body: Mapping[str, Any]) -> dict[str, str]:
    value = body.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 50:
        raise _invalid("metadata must be an object of at most 50 keys.", "metadata")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not 0 < len(key) <= 40 or "[" in key or "]" in key:
            raise _invalid("metadata keys are 1-40 characters, without brackets.", "metadata")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _invalid(f"metadata[{key}] must be a string.", f"metadata[{key}]")
        text = str(item)
        if len(text) > 500:
            raise _invalid(f"metadata[{key}] is over 500 characters.", f"metadata[{key}]")
        out[key] = text
    return out


def _only(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    extra = sorted(k for k in body if k not in allowed)
    if extra:
        raise _invalid(f"Received unknown parameter: {extra[0]}.", extra[0])


# --- the app ----------------------------------------------------------------------------------


def create_lan_app(core: ReaderCore, *, keepalive: float = KEEPALIVE) -> Starlette:
    """The LAN API app for `core`."""

    async def _session_call(
        request: Request, allowed: frozenset[str]
    ) -> tuple[str | None, dict[str, Any]]:
        """A call of the connected POS: its session checked, its body read with only `allowed`."""
        token = _bearer(request)
        core.session(token)
        body = await _body(request)
        _only(body, allowed)
        return token, body

    @_endpoint
    async def status(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(core.status))

    @_endpoint
    async def connect(request: Request) -> Response:
        body = await _body(request)
        _only(
            body,
            frozenset(
                {"connection_token", "pairing_secret", "pos_id", "fail_if_in_use", "network_id"}
            ),
        )
        kwargs = {
            "pos_id": _str(body, "pos_id", required=True, limit=200),
            "connection_token": _str(body, "connection_token", limit=2000),
            "pairing_secret": _str(body, "pairing_secret", limit=200),
            "fail_if_in_use": _bool(body, "fail_if_in_use"),
            "network_id": _str(body, "network_id", limit=200),
        }
        return JSONResponse(await run_in_threadpool(lambda: core.connect(**kwargs)))

    @_endpoint
    async def disconnect(request: Request) -> Response:
        token = _bearer(request)
        await _body(request)
        await run_in_threadpool(core.disconnect, token)
        return JSONResponse({})

    @_endpoint
    async def create_intent(request: Request) -> Response:
        token = _bearer(request)
        core.session(token)
        body = await _body(request)
        _only(
            body,
            frozenset(
                {
                    "amount",
                    "currency",
                    "capture_method",
                    "metadata",
                    "description",
                    "offline_behavior",
                }
            ),
        )
        amount = body.get("amount")
        if type(amount) is not int:
            raise _invalid("amount must be an integer in minor units.", "amount")
        currency = _str(body, "currency", required=True, limit=3)
        capture_method = _str(body, "capture_method", limit=40) or "automatic"
        behavior = _str(body, "offline_behavior", limit=40) or "prefer_online"
        metadata = _metadata(body)
        description = _str(body, "description", limit=1000)
        answer = await run_in_threadpool(
            lambda: core.create_payment_intent(
                token,
                amount=amount,
                currency=currency,
                capture_method=capture_method,
                metadata=metadata,
                description=description,
                offline_behavior=behavior,
            )
        )
        return JSONResponse(answer)

    @_endpoint
    async def collect(request: Request) -> Response:
        token, body = await _session_call(request, frozenset({"card"}))
        if "card" not in body:
            raise _invalid("Missing required parameter: card.", "card")
        card = Presentment.from_request(body["card"])
        local_id = request.path_params["local_id"]
        return JSONResponse(await run_in_threadpool(core.collect, token, local_id, card))

    @_endpoint
    async def confirm(request: Request) -> Response:
        token, _ = await _session_call(request, frozenset())
        local_id = request.path_params["local_id"]
        return JSONResponse(await run_in_threadpool(core.confirm, token, local_id))

    @_endpoint
    async def cancel(request: Request) -> Response:
        token, _ = await _session_call(request, frozenset())
        intent = request.path_params["local_id"]
        return JSONResponse(await run_in_threadpool(core.cancel_payment_intent, token, intent))

    @_endpoint
    async def capture(request: Request) -> Response:
        token, body = await _session_call(request, frozenset({"amount_to_capture"}))
        amount = body.get("amount_to_capture")
        if amount is not None and (type(amount) is not int or amount < 1):
            raise _invalid("amount_to_capture must be a positive integer.", "amount_to_capture")
        intent = request.path_params["local_id"]
        return JSONResponse(
            await run_in_threadpool(
                lambda: core.capture_payment_intent(token, intent, amount_to_capture=amount)
            )
        )

    @_endpoint
    async def forward_now(request: Request) -> Response:
        # Harmless without a session (it only wakes the forwarder), so the operator's
        # `stowpay reader forward-now` works with a POS connected; a session given must be valid.
        token = _bearer(request)
        if token is not None:
            core.session(token)
        await _body(request)
        return JSONResponse(core.forward_now())

    @_endpoint
    async def connection_token(request: Request) -> Response:
        token, body = await _session_call(
            request, frozenset({"request_id", "connection_token", "error"})
        )
        request_id = _str(body, "request_id", required=True, limit=100)
        core.answer_token_request(
            token,
            request_id,
            connection_token=_str(body, "connection_token", limit=2000),
            error=_str(body, "error", limit=500),
        )
        return JSONResponse({})

    @_endpoint
    async def events(request: Request) -> Response:
        token = _bearer(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | None] = asyncio.Queue()

        def deliver(event: Event | None) -> None:
            # Called from the forwarder's and monitor's threads: only hand the event over.
            # RuntimeError: the loop is closed, the server is gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, event)

        unsubscribe = await run_in_threadpool(core.subscribe, token, deliver)
        return StreamingResponse(
            _stream(queue, unsubscribe, keepalive),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return error_response(
            "resource_missing" if status == 404 else "method_not_allowed",
            f"Unrecognized request URL ({request.method}: {request.url.path}).",
            status,
            type_="invalid_request_error",
        )

    routes = [
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/connect", connect, methods=["POST"]),
        Route("/v1/disconnect", disconnect, methods=["POST"]),
        Route("/v1/payment_intents", create_intent, methods=["POST"]),
        Route("/v1/payment_intents/{local_id}/collect", collect, methods=["POST"]),
        Route("/v1/payment_intents/{local_id}/confirm", confirm, methods=["POST"]),
        Route("/v1/payment_intents/{local_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/payment_intents/{local_id}/capture", capture, methods=["POST"]),
        Route("/v1/forward_now", forward_now, methods=["POST"]),
        Route("/v1/connection_token", connection_token, methods=["POST"]),
        Route("/v1/events", events, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


async def _stream(
    queue: asyncio.Queue[Event | None], unsubscribe: Callable[[], None], keepalive: float
) -> AsyncIterator[bytes]:
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if event is None:
                return
            name, data = event
            yield f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
    finally:
        unsubscribe()
