"""`/v1/payment_methods` (retrieve: methods are made from `pm_card_*` ids or by readers)."""

from __future__ import annotations

from typing import Any

from ..api import Context, api
from ..params import Params
from .common import fetch


@api.get(
    "/v1/payment_methods/{payment_method}",
    returns="payment_method",
    summary="Retrieve a PaymentMethod",
    tag="PaymentMethods",
)
def retrieve_payment_method(ctx: Context, params: Params, payment_method: str) -> dict[str, Any]:
    return fetch(ctx, "payment_method", payment_method, kind="PaymentMethod")
