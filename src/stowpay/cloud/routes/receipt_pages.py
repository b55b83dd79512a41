"""`GET /receipts/{token}`: a charge's receipt page, for whoever holds its address.

No API key: the token in the address (random, 192 bits) is the credential, and only its hash
is stored. The page shows what the printed receipt shows: brand and last four digits, never
a card number, never a key or client secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from .. import receipt_render
from ..domain.receipts import token_hash
from ..storage import receipts as outbox

if TYPE_CHECKING:
    from ..app import Cloud

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}
_NOT_FOUND = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Receipt not found'
    "</title></head><body><p>No receipt at this address.</p></body></html>\n"
)


def receipt_page_routes(cloud: Cloud) -> list[BaseRoute]:
    """The receipt page route, served by `cloud`."""

    async def show(request: Request) -> HTMLResponse:
        token = str(request.path_params["token"])
        if not 16 <= len(token) <= 64 or not token.isalnum():
            return HTMLResponse(_NOT_FOUND, 404, _HEADERS)
        with cloud.store.read() as tx:
            found = outbox.page(tx, token_hash(token))
            if found is None:
                return HTMLResponse(_NOT_FOUND, 404, _HEADERS)
            try:
                body = receipt_render.page(tx, *found)
            except LookupError:
                return HTMLResponse(_NOT_FOUND, 404, _HEADERS)
        return HTMLResponse(body, 200, _HEADERS)

    return [Route("/receipts/{token}", show, methods=["GET"], name="receipt_page")]
