"""`/v1/charges` (read-only: charges are made by confirming PaymentIntents)."""

from __future__ import annotations

from typing import Any

from ..api import Context, api
from ..domain import receipts
from ..params import Id, ListParams, Params
from .common import fetch, list_object


class ChargeList(ListParams):
    payment_intent: Id | None = None
    customer: Id | None = None


@api.get("/v1/charges/{charge}", returns="charge", summary="Retrieve a Charge", tag="Charges")
def retrieve_charge(ctx: Context, params: Params, charge: str) -> dict[str, Any]:
    found = fetch(ctx, "charge", charge)
    # The charge's email receipts and where each stands (pending while no mail server is set).
    found["receipt_emails"] = receipts.list_emails(ctx, charge_id=found["id"])
    return found


@api.get(
    "/v1/charges", params=ChargeList, returns="list:charge", summary="List Charges", tag="Charges"
)
def list_charges(ctx: Context, params: ChargeList) -> dict[str, Any]:
    return list_object(ctx, "charge", params, "/v1/charges", filters={"ref": params.payment_intent})
