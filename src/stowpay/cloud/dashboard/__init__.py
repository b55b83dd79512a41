"""The merchant's dashboard at `/dashboard`, and the reconciliation API it shares with the CLI.

Server-rendered pages (`pages`) over one account's data, signed in with the account's secret
key or a dashboard token (`session`). Every query is scoped to the session's account; a
payment or delivery id of another account answers 404, as the API does.

The API routes (`Authorization: Bearer sk_...`, as `/v1`):

- `GET /v1/stowpay/reconciliation?since=7d` — `reconcile.report` as JSON;
- `GET /v1/stowpay/audit_exports/{day}` — the signed JSON lines of a day's offline payments;
- `GET /v1/stowpay/audit_key` — the public key those exports are signed with.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...wire.errors import InvalidRequestError, StripeError
from .. import reconcile
from . import data, pages
from . import session as sessions

if TYPE_CHECKING:
    from ..app import Cloud

__all__ = ["dashboard_routes"]

_MAX_FORM = 4096


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status, headers=dict(pages.HEADERS))


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


class Dashboard:
    """The dashboard's handlers, over one cloud process."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.store = cloud.store
        self.settings = cloud.settings
        self._key: bytes | None = None

    def now(self) -> float:
        return float(self.settings.clock.now())

    # -- sessions ---------------------------------------------------------------------------

    def _signing_key(self) -> bytes:
        """The sessions' signing key, read (or made) once per process."""
        if self._key is None:
            with self.store.write() as tx:
                self._key = sessions.signing_key(tx, self.now())
        return self._key

    def _session(self, request: Request) -> sessions.Session | None:
        token = request.cookies.get(sessions.COOKIE)
        if not token:
            return None
        key = self._signing_key()
        with self.store.read() as tx:
            return sessions.check(tx, key, token, now=self.now())

    def page(
        self, render: Callable[[Request, sessions.Session], Response]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A page for a signed-in merchant; the sign-in form for anyone else."""

        async def run(request: Request) -> Response:
            def work() -> Response:
                found = self._session(request)
                if found is None:
                    return RedirectResponse("/dashboard/login", 303)
                return render(request, found)

            return await run_in_threadpool(work)

        return run

    def action(
        self, act: Callable[[Request, sessions.Session, dict[str, str]], Response]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST for a signed-in merchant, refused without the session's CSRF token."""

        async def run(request: Request) -> Response:
            form = await _form(request)

            def work() -> Response:
                found = self._session(request)
                if found is None:
                    return RedirectResponse("/dashboard/login", 303)
                given = form.get("csrf", "")
                if not hmac.compare_digest(given.encode(), found.csrf.encode()):
                    return _html(
                        pages.message("Refused", "The form was stale; reload it.", csrf=None),
                        403,
                    )
                return act(request, found, form)

            return await run_in_threadpool(work)

        return run

    async def login_form(self, request: Request) -> Response:
        return _html(pages.login())

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        key = form.get("key", "")

        def work() -> str | None:
            signing = self._signing_key()
            with self.store.read() as tx:
                return sessions.sign_in(tx, signing, key, now=self.now())

        token = await run_in_threadpool(work)
        if token is None:
            return _html(pages.login("That key is not valid."), 401)
        response = RedirectResponse("/dashboard/payments", 303)
        response.headers.update(pages.HEADERS)
        response.set_cookie(
            sessions.COOKIE,
            token,
            max_age=int(sessions.SESSION_TTL),
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def logout(self, request: Request, found: sessions.Session, form: dict[str, str]) -> Response:
        response = RedirectResponse("/dashboard/login", 303)
        response.delete_cookie(sessions.COOKIE, path="/dashboard")
        return response

    # -- pages ------------------------------------------------------------------------------

    def payments(self, request: Request, found: sessions.Session) -> Response:
        q = request.query_params
        filters = {k: q.get(k, "")[:100] for k in ("status", "offline", "reader", "date")}
        refresh = q.get("refresh", "")
        with self.store.read() as tx:
            rows, readers = data.payments(tx, found.account_id, filters, now=self.now())
        return _html(
            pages.payments(
                rows,
                filters,
                readers,
                csrf=found.csrf,
                refresh=int(refresh) if refresh.isdigit() and 0 < int(refresh) < 3600 else None,
            )
        )

    def payment(self, request: Request, found: sessions.Session) -> Response:
        with self.store.read() as tx:
            shown = data.payment(tx, found.account_id, request.path_params["pi"])
        if shown is None:
            return _html(pages.message("Not found", "No such payment.", csrf=found.csrf), 404)
        row, pi, charges, events = shown
        return _html(pages.payment(row, pi, charges, events, csrf=found.csrf))

    def readers(self, request: Request, found: sessions.Session) -> Response:
        now = self.now()
        with self.store.write() as tx:  # a reader's default configuration is made on first use
            rows = data.readers(tx, found.account_id, now=now)
            series = data.backlog_series(tx, found.account_id, now=now)
        return _html(pages.readers(rows, pages.chart(series, now=now), csrf=found.csrf))

    def webhooks(self, request: Request, found: sessions.Session) -> Response:
        with self.store.read() as tx:
            rows = data.deliveries(tx, found.account_id)
        notice = request.query_params.get("resent")
        text = f"Queued again as {notice}." if notice else None
        return _html(pages.webhooks(rows, csrf=found.csrf, notice=text))

    def resend(self, request: Request, found: sessions.Session, form: dict[str, str]) -> Response:
        with self.store.write() as tx:
            new_id = data.resend(
                tx,
                found.account_id,
                request.path_params["delivery"],
                new_id=self.settings.ids.new("whd"),
                now=self.now(),
            )
        if new_id is None:
            return _html(pages.message("Not found", "No such delivery.", csrf=found.csrf), 404)
        if self.cloud.dispatcher is not None:
            self.cloud.dispatcher.wake()
        return RedirectResponse(f"/dashboard/webhooks?resent={new_id}", 303)

    def reconciliation(self, request: Request, found: sessions.Session) -> Response:
        since_text = request.query_params.get("since", "7d")[:64]
        now = self.now()
        try:
            since = reconcile.parse_since(since_text, now)
        except ValueError as exc:
            return _html(pages.message("Reconciliation", str(exc), csrf=found.csrf), 400)
        with self.store.read() as tx:
            found_report = reconcile.report(tx, found.account_id, since=since, now=now)
        return _html(pages.reconciliation(found_report.as_dict(), since_text, csrf=found.csrf))

    # -- the API ----------------------------------------------------------------------------

    def api(
        self, work: Callable[[Request, dict[str, Any]], tuple[bytes, str]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A `/v1/stowpay` route: the account's secret key; errors in Stripe's shape."""

        async def run(request: Request) -> Response:
            request_id = self.settings.ids.new("req")

            def answer() -> Response:
                try:
                    account = self.cloud.authenticate(
                        request.headers.get("authorization"), request.headers.get("stripe-account")
                    )
                    body, media = work(request, account)
                except StripeError as err:
                    return Response(
                        json.dumps(err.to_body(request_id)).encode(),
                        err.http_status,
                        {"Request-Id": request_id},
                        media_type="application/json",
                    )
                return Response(body, 200, {"Request-Id": request_id}, media_type=media)

            return await run_in_threadpool(answer)

        return run

    def api_reconciliation(self, request: Request, account: dict[str, Any]) -> tuple[bytes, str]:
        now = self.now()
        try:
            since = reconcile.parse_since(request.query_params.get("since"), now)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="since") from None
        key = request.query_params.get("metadata_key") or "order_id"
        with self.store.read() as tx:
            found = reconcile.report(tx, account["id"], since=since, now=now, metadata_key=key)
        return json.dumps(found.as_dict()).encode(), "application/json"

    def api_export(self, request: Request, account: dict[str, Any]) -> tuple[bytes, str]:
        day = request.path_params["day"]
        try:
            reconcile.parse_day(day)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="day") from None
        with self.store.write() as tx:
            body = reconcile.audit_export(tx, account["id"], day, now=self.now())
        return body, "application/x-ndjson"

    def api_key(self, request: Request, account: dict[str, Any]) -> tuple[bytes, str]:
        with self.store.write() as tx:
            key = reconcile.audit_public_key(tx, self.now())
        answer = {"object": "stowpay.audit_key", "algorithm": "ed25519", "public_key": key}
        return json.dumps(answer).encode(), "application/json"


def dashboard_routes(cloud: Cloud) -> list[BaseRoute]:
    """The dashboard's pages and the reconciliation API, for `create_app`."""
    d = Dashboard(cloud)

    async def home(request: Request) -> Response:
        return RedirectResponse("/dashboard/payments", 303)

    return [
        Route("/dashboard", home, methods=["GET"]),
        Route("/dashboard/", home, methods=["GET"]),
        Route("/dashboard/login", d.login_form, methods=["GET"]),
        Route("/dashboard/login", d.login, methods=["POST"]),
        Route("/dashboard/logout", d.action(d.logout), methods=["POST"]),
        Route("/dashboard/payments", d.page(d.payments), methods=["GET"]),
        Route("/dashboard/payments/{pi}", d.page(d.payment), methods=["GET"]),
        Route("/dashboard/readers", d.page(d.readers), methods=["GET"]),
        Route("/dashboard/webhooks", d.page(d.webhooks), methods=["GET"]),
        Route("/dashboard/webhooks/{delivery}/resend", d.action(d.resend), methods=["POST"]),
        Route("/dashboard/reconciliation", d.page(d.reconciliation), methods=["GET"]),
        Route("/v1/stowpay/reconciliation", d.api(d.api_reconciliation), methods=["GET"]),
        Route("/v1/stowpay/audit_exports/{day}", d.api(d.api_export), methods=["GET"]),
        Route("/v1/stowpay/audit_key", d.api(d.api_key), methods=["GET"]),
    ]
