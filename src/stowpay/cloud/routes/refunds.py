"""`/v1/refunds`."""

from __future__ import annotations

from typing import Any, Literal

from ..api import Context, api
from ..domain import refunds as domain
from ..domain.payment_intents import merge_metadata
from ..params import Amount, Id, ListParams, MetadataParam, Params
from .common import fetch, list_object


class RefundCreate(Params):
    charge: Id | None = None
    payment_intent: Id | None = None
    amount: Amount | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: MetadataParam | None = None


class RefundList(ListParams):
    charge: Id | None = None
    payment_intent: Id | None = None


@api.post(
    "/v1/refunds", params=RefundCreate, returns="refund", summary="Create a Refund", tag="Refunds"
)
def create_refund(ctx: Context, params: RefundCreate) -> dict[str, Any]:
    return domain.create(
        ctx,
        charge_id=params.charge,
        payment_intent_id=params.payment_intent,
        amount=params.amount,
        reason=params.reason,
        metadata=merge_metadata({}, params.metadata),
    )


@api.get("/v1/refunds/{refund}", returns="refund", summary="Retrieve a Refund", tag="Refunds")
def retrieve_refund(ctx: Context, params: Params, refund: str) -> dict[str, Any]:
    return fetch(ctx, "refund", refund)


@api.get(
    "/v1/refunds", params=RefundList, returns="list:refund", summary="List Refunds", tag="Refunds"
)
def list_refunds(ctx: Context, params: RefundList) -> dict[str, Any]:
    if params.payment_intent is not None and params.charge is None:
        pi = ctx.tx.get(ctx.account_id, params.payment_intent, "payment_intent")
        charge = (pi or {}).get("latest_charge") or "none"
        return list_object(ctx, "refund", params, "/v1/refunds", filters={"ref": charge})
    return list_object(ctx, "refund", params, "/v1/refunds", filters={"ref": params.charge})
