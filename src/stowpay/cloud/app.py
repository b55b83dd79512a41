"""The cloud's ASGI application: auth, idempotency, expansion and errors around each operation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Receive, Scope, Send

from .. import logs
from ..wire import formcodec, jsontext
from ..wire.errors import (
    ApiError,
    AuthenticationError,
    IdempotencyConflictError,
    IdempotencyError,
    InvalidRequestError,
    PermissionDeniedError,
    StripeError,
)
from ..wire.metadata import contains_card_number
from .api import Context, Operation, api
from .domain import terminal as terminal_domain
from .domain.accounts import key_hash
from .domain.events import public_json
from .expand import expand
from .params import validate
from .settings import API_VERSION, Settings
from .storage import IdempotencyRecord, Store, retry_races

log = structlog.get_logger("stowpay.cloud")

MAX_IDEMPOTENCY_KEY = 255


class Cloud:
    """One cloud process: its store, settings and background work."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.db)
        self.in_flight: set[tuple[str, str]] = set()
        self._accounts: dict[str, dict[str, Any]] = {}
        self.dispatcher: Any = None
        self.mailer: Any = None

    # -- auth -------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None, connected: str | None) -> dict[str, Any]:
        """The account an `Authorization` header's secret key belongs to."""
        key = _api_key(authorization)
        if key is None:
            raise AuthenticationError(
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        if key.startswith(("pk_test_", "pk_live_")):
            raise AuthenticationError(
                "This API call cannot be made with a publishable API key. Please use a secret "
                "API key."
            )
        digest = key_hash(key)
        account = self._accounts.get(digest)
        if account is None:
            with self.store.read() as tx:
                account = tx.account_by_key_hash(digest)
            if account is None:
                raise AuthenticationError(
                    f"Invalid API Key provided: {_mask(key)}", code="api_key_invalid"
                )
            if len(self._accounts) > 10_000:
                self._accounts.clear()
            self._accounts[digest] = account
        if connected and connected != account["id"]:
            # Acting on the key's own account when another was named would be a silent mix-up.
            raise PermissionDeniedError(
                "Connected accounts are not supported: the Stripe-Account header may only name "
                "the key's own account.",
                code="stripe_account_not_supported",
            )
        return account

    async def housekeeping(self, interval: float = 3600.0) -> None:
        """Hourly: forget idempotency keys older than their time to live, expired connection
        tokens and old registration codes."""
        while True:
            self.prune()
            await asyncio.sleep(interval)

    async def checkpoints(self) -> None:
        """Checkpoint a SQLite store's WAL on a thread of its own, every
        `Settings.checkpoint_interval` seconds in which something was written.

        Otherwise the commit that fills the WAL copies it into the database file while its
        request waits (milliseconds, every few hundred requests).
        """
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, thread_name_prefix="stowpay-checkpoint") as thread:
            seen = self.store.writes
            while True:
                await asyncio.sleep(self.settings.checkpoint_interval)
                if self.store.writes == seen:
                    continue
                seen = self.store.writes
                try:
                    await loop.run_in_executor(thread, self.store.checkpoint)
                except Exception as exc:  # a commit will checkpoint instead; keep trying
                    log.warning("checkpoint failed", error=str(exc))

    def prune(self) -> int:
        """One round of housekeeping; how many rows went."""
        now = self.settings.clock.now()
        with self.store.write() as tx:
            gone = tx.idempotency_prune(int(now - self.settings.idempotency_ttl))
            return gone + terminal_domain.sweep(tx, now)

    # -- one request ------------------------------------------------------------------------

    async def handle(self, op: Operation, request: Request) -> Response:
        """Answer one request for `op` (the route Starlette matched)."""
        status, body, headers = await self.answer(
            op, request.scope, request.receive, request.path_params
        )
        return Response(body, status, headers, media_type="application/json")

    async def answer(
        self, op: Operation, scope: Scope, receive: Receive, path_params: dict[str, Any]
    ) -> tuple[int, bytes, dict[str, str]]:
        """Answer one request for `op`: its status, JSON body and headers."""
        request_id = self.settings.ids.new("req")
        headers = {"Request-Id": request_id, "Stripe-Version": API_VERSION}
        claim: tuple[str, str] | None = None
        try:
            wanted = _request_headers(scope)
            account = self.authenticate(wanted.get(b"authorization"), wanted.get(b"stripe-account"))
            key = wanted.get(b"idempotency-key") if op.method == "POST" else None
            if key is not None:
                if not key or len(key) > MAX_IDEMPOTENCY_KEY or "\x00" in key:
                    raise InvalidRequestError(
                        f"Idempotency keys must be 1 to {MAX_IDEMPOTENCY_KEY} characters long.",
                        param="Idempotency-Key",
                    )
                if contains_card_number(key):
                    # The key is stored with the answer and quoted in a mismatch's error.
                    raise InvalidRequestError(
                        "Idempotency keys must not contain a card number.",
                        param="Idempotency-Key",
                    )
                claim = (account["id"], key)
                if claim in self.in_flight:
                    claim = None
                    raise IdempotencyConflictError()
                self.in_flight.add(claim)
            raw = await self._params(op, scope, receive, path_params)
            # A transaction that lost a race with another cloud process (the same idempotency
            # key, say) runs again and answers what the winner committed.
            status, body, replayed, queued = retry_races(
                lambda: self._execute(op, scope, path_params, account, dict(raw), key, request_id)
            )
            if replayed is not None:
                headers["Idempotent-Replayed"] = "true"
                headers["Original-Request"] = replayed
            if queued and self.dispatcher is not None:
                # Only a request that queued webhook deliveries wakes the dispatcher; other
                # due deliveries (retries) are found by its poll.
                self.dispatcher.wake()
            return status, body, headers
        except StripeError as err:
            return err.http_status, _dumps(err.to_body(request_id)), headers
        except Exception:
            log.exception("unhandled error", request_id=request_id, path=op.path)
            headers["Stripe-Should-Retry"] = "true"
            unknown = ApiError("An unknown error occurred. Please try again.")
            return unknown.http_status, _dumps(unknown.to_body(request_id)), headers
        finally:
            if claim is not None:
                self.in_flight.discard(claim)

    async def _params(
        self, op: Operation, scope: Scope, receive: Receive, path_params: dict[str, Any]
    ) -> dict[str, Any]:
        if any("\x00" in value for value in path_params.values()):
            raise InvalidRequestError(formcodec.NUL_MESSAGE)
        query = _url_query(scope)
        raw = formcodec.decode(query) if query else {}
        if op.method == "POST":
            body = await _read_body(receive, self.settings.max_body_bytes)
            if body:
                for k, v in formcodec.decode(body).items():
                    raw[k] = v
        return raw

    def _execute(
        self,
        op: Operation,
        scope: Scope,
        path_params: dict[str, Any],
        account: dict[str, Any],
        raw: dict[str, Any],
        key: str | None,
        request_id: str,
    ) -> tuple[int, bytes, str | None, int]:
        """Run the operation in one transaction.

        Returns (status, body, original request id of a replay, webhook deliveries queued).
        """
        expand_paths = raw.pop("expand", None)
        if expand_paths is not None and not (
            isinstance(expand_paths, list) and all(isinstance(p, str) for p in expand_paths)
        ):
            raise InvalidRequestError("Invalid array", param="expand")
        for i, path in enumerate(expand_paths or ()):
            if contains_card_number(path):
                # An unknown path is quoted back in its error; a card number must not be.
                raise InvalidRequestError(
                    f"Invalid expand[{i}]: must not contain a card number.",
                    param=f"expand[{i}]",
                    code="parameter_invalid",
                )
        fingerprint = _fingerprint(op, _url_path(scope), raw, expand_paths)
        writes = op.method != "GET"
        with self.store.write() if writes else self.store.read() as tx:
            if key is not None:
                prior = tx.idempotency_get(account["id"], key)
                if prior is not None and prior.created < self.settings.clock.now() - (
                    self.settings.idempotency_ttl
                ):
                    # Expired: the key is free again (housekeeping deletes such rows anyway).
                    tx.idempotency_forget(account["id"], key)
                    prior = None
                if prior is not None:
                    if prior.fingerprint != fingerprint:
                        raise IdempotencyError(
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{key}' if you meant to execute a different request."
                        )
                    return prior.status_code, prior.body, prior.request_id, 0
            params = validate(op.params, raw)
            ctx = Context(
                account=account,
                tx=tx,
                clock=self.settings.clock,
                ids=self.settings.ids,
                request_id=request_id,
                idempotency_key=key,
                settings=self.settings,
            )
            try:
                result = op.handler(ctx, params, **path_params)
                if expand_paths:
                    result = expand(tx, account["id"], result, expand_paths)
                status, body = 200, _answer_body(ctx, result)
            except StripeError as err:
                if not err.keeps_effects:
                    raise
                # A decline is an answer, not a failure: its records stay and it replays.
                status, body = err.http_status, _dumps(err.to_body(request_id))
            if key is not None:
                tx.idempotency_put(
                    account["id"],
                    key,
                    IdempotencyRecord(fingerprint, ctx.now(), status, request_id, body),
                )
            return status, body, None, tx.queued_deliveries


#: The request headers an API call reads.
_WANTED = frozenset((b"authorization", b"idempotency-key", b"stripe-account"))


def _request_headers(scope: Scope) -> dict[bytes, str]:
    """The headers an API call reads, each at its first occurrence (as Starlette reads them)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value.decode("latin-1")
    return found


def _url_path(scope: Scope) -> str:
    """The request's path as `request.url.path` gives it (the idempotency fingerprint uses it)."""
    path: str = scope["path"]
    if "?" in path or "#" in path or "\\" in path:
        return URL(scope=scope).path
    return path


def _url_query(scope: Scope) -> str:
    """The query string as `request.url.query` gives it."""
    query: str = scope["query_string"].decode()
    if "#" in query or "\t" in query or "\n" in query or "\r" in query:
        return URL(scope=scope).query
    return query


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, as `Request.body()` reads it; refused once past `limit` bytes
    (without reading the rest)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise InvalidRequestError(
                    f"The request body is too large: at most {limit} bytes are accepted.",
                    code="body_too_large",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def _api_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def _mask(key: str) -> str:
    prefix = key[:8] if key.startswith(("sk_test_", "sk_live_")) else ""
    return f"{prefix}****{key[-4:]}" if len(key) > 12 else "****"


#: Built once: `json.dumps` with non-default options builds an encoder on every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _fingerprint(op: Operation, path: str, raw: dict[str, Any], expand_paths: Any) -> str:
    canonical = _CANONICAL.encode([op.method, path, raw, expand_paths])
    return hashlib.sha256(canonical.encode()).hexdigest()


def _answer_body(ctx: Context, result: dict[str, Any]) -> bytes:
    """The JSON answer for a handler's result: the text it was stored as, when the handler
    said so (`Context.answered`) and it has no private keys, or else serialized now."""
    if ctx.answer is not None and ctx.answer[0] is result:
        served = public_json(result, ctx.answer[1])
        if served is not None:
            return served.encode()
    return _dumps(result)


def _dumps(obj: dict[str, Any]) -> bytes:
    # Answers are in the layout objects are stored in (`jsontext`), so a stored object's text
    # can be the answer.
    body = jsontext.dumps_bytes(obj)
    # A private key is written `"_...`, so an answer without that sequence has none to drop
    # (a string value starting with `_` only sends it down the slower path).
    if b'"_' in body:
        body = jsontext.dumps_bytes(_served(obj))
    return body


def _served(value: Any) -> Any:
    """Drop private (`_`-prefixed) keys at every depth: they never leave the cloud."""
    if isinstance(value, dict):
        return {k: _served(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_served(v) for v in value]
    return value


class CloudApp(Starlette):
    """The cloud's Starlette app, with a direct path to the API operations.

    A request for a registered operation goes from here to `Cloud.answer`, skipping
    Starlette's middleware, router and request and response objects: per request they cost
    about as much as the operation's own SQL. Which operation answers is decided exactly as
    Starlette's router decides it (routes in order, the first full match wins), and anything
    else (other routes, HEAD, a `root_path`, lifespan) goes through Starlette itself.
    """

    def __init__(self, cloud: Cloud, operations: dict[int, Operation], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cloud = cloud
        self._operations = operations
        self._dispatch: _Dispatch | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            dispatch = self._dispatch
            if dispatch is None or dispatch.size != len(self.router.routes):
                dispatch = self._dispatch = _Dispatch(self.router.routes, self._operations)
            found = dispatch.match(scope)
            if found is not None:
                op, path_params = found
                scope["app"] = self
                scope["path_params"] = path_params
                status, body, headers = await self.cloud.answer(op, scope, receive, path_params)
                raw = [
                    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
                ]
                # The headers Starlette's `Response(body, status, headers, media_type=...)` adds.
                raw.append((b"content-length", str(len(body)).encode("latin-1")))
                raw.append((b"content-type", b"application/json"))
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": body})
                return
        await super().__call__(scope, receive, send)


class _Dispatch:
    """The app's routes by method, to find an operation as Starlette's router would."""

    def __init__(self, routes: list[BaseRoute], operations: dict[int, Operation]) -> None:
        self.size = len(routes)
        self._by_method: dict[str, list[tuple[Operation | None, Any]]] = {}
        for method in {op.method for op in operations.values()}:
            entries: list[tuple[Operation | None, Any]] = []
            for route in routes:
                op = operations.get(id(route))
                if op is None:
                    entries.append((None, route))  # not an operation: it is asked itself
                elif op.method == method:
                    entries.append((op, route))
            self._by_method[method] = entries

    def match(self, scope: Scope) -> tuple[Operation, dict[str, Any]] | None:
        """The operation that answers this request, with its path parameters; None when
        another route (or none) would answer it."""
        entries = self._by_method.get(scope["method"])
        if entries is None:
            return None
        path = scope["path"]
        for op, route in entries:
            if op is None:
                if route.matches(scope)[0] is Match.FULL:
                    return None
                continue
            m = route.path_regex.match(path)
            if m is not None:
                params = m.groupdict()
                for name, value in params.items():
                    params[name] = route.param_convertors[name].convert(value)
                return op, params
        return None


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> CloudApp:
    """Build the cloud's ASGI app. Its database is migrated on start-up."""
    from . import routes  # noqa: F401  (registers the operations)

    settings = settings or Settings()
    logs.configure()
    cloud = Cloud(settings, store)

    def endpoint(op: Operation) -> Any:
        async def run(request: Request) -> Response:
            return await cloud.handle(op, request)

        return run

    route_list: list[BaseRoute] = [
        Route(op.path, endpoint(op), methods=[op.method], name=op.operation_id)
        for op in api.operations
    ]
    operations = {id(route): op for route, op in zip(route_list, api.operations, strict=True)}
    from .openapi import openapi_route

    route_list.append(openapi_route(api))
    from .routes.device import device_routes  # the reader's API (`docs/reader-protocol.md`)

    route_list.extend(device_routes(cloud))
    from .routes.receipt_pages import receipt_page_routes  # `receipt_url`: no key, a token

    route_list.extend(receipt_page_routes(cloud))
    from .dashboard import dashboard_routes  # the merchant's pages and reconciliation API

    route_list.extend(dashboard_routes(cloud))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        cloud.store.migrate()
        tasks: list[asyncio.Task[None]] = []
        if settings.background:
            tasks.append(asyncio.create_task(cloud.housekeeping()))
            if cloud.store.is_sqlite:
                tasks.append(asyncio.create_task(cloud.checkpoints()))
            from .webhooks import Dispatcher

            cloud.dispatcher = Dispatcher(cloud.store, settings)
            tasks.append(asyncio.create_task(cloud.dispatcher.run()))
            if settings.smtp_url is not None:
                from .mailer import Mailer

                cloud.mailer = Mailer(cloud.store, settings)
                tasks.append(asyncio.create_task(cloud.mailer.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if cloud.dispatcher is not None:
                await cloud.dispatcher.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        rid = settings.ids.new("req")
        err = InvalidRequestError(
            f"Unrecognized request URL ({request.method}: {request.url.path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/."
        )
        return Response(
            _dumps(err.to_body(rid)),
            404,
            {"Request-Id": rid, "Stripe-Version": API_VERSION},
            media_type="application/json",
        )

    app = CloudApp(
        cloud,
        operations,
        routes=route_list,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found, HTTPException: not_found},
    )
    app.state.cloud = cloud
    return app
