"""`/v1/payment_intents`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..api import Context, api
from ..domain import payment_intents as domain
from ..params import (
    Amount,
    Bool,
    Currency,
    Email,
    Id,
    ListParams,
    MetadataParam,
    Params,
    ShortText,
)
from ..search import search_object
from .common import list_object

PaymentMethodType = Literal["card", "card_present", "interac_present"]
CaptureMethod = Literal["automatic", "automatic_async", "manual"]
CancellationReason = Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"]


class AutomaticPaymentMethods(Params):
    enabled: Bool
    allow_redirects: Literal["always", "never"] | None = None


class PaymentIntentCreate(Params):
    amount: Amount
    currency: Currency
    capture_method: CaptureMethod | None = None
    confirm: Bool | None = None
    description: ShortText | None = None
    metadata: MetadataParam | None = None
    payment_method: Id | None = None
    payment_method_types: list[PaymentMethodType] | None = Field(None, min_length=1, max_length=3)
    automatic_payment_methods: AutomaticPaymentMethods | None = None
    receipt_email: Email | None = None
    statement_descriptor: str | None = Field(None, max_length=22)
    statement_descriptor_suffix: str | None = Field(None, max_length=22)
    return_url: str | None = Field(None, max_length=2048)
    off_session: Bool | None = None


class PaymentIntentUpdate(Params):
    amount: Amount | None = None
    currency: Currency | None = None
    capture_method: CaptureMethod | None = None
    description: ShortText | None = None
    metadata: MetadataParam | None = None
    payment_method: Id | None = None
    payment_method_types: list[PaymentMethodType] | None = Field(None, min_length=1, max_length=3)
    receipt_email: Email | None = None
    statement_descriptor: str | None = Field(None, max_length=22)
    statement_descriptor_suffix: str | None = Field(None, max_length=22)


class PaymentIntentConfirm(Params):
    payment_method: Id | None = None
    capture_method: CaptureMethod | None = None
    receipt_email: Email | None = None
    return_url: str | None = Field(None, max_length=2048)
    off_session: Bool | None = None


class PaymentIntentCapture(Params):
    amount_to_capture: Amount | None = None
    metadata: MetadataParam | None = None


class PaymentIntentCancel(Params):
    cancellation_reason: CancellationReason | None = None


class PaymentIntentList(ListParams):
    customer: Id | None = None


class SearchParams(Params):
    query: str = Field(
        max_length=1000, examples=["metadata['order_id']:'A-17' AND -status:'canceled'"]
    )
    limit: int = Field(10, ge=1, le=100)
    page: str | None = Field(None, max_length=200)


def _fields(params: Params) -> dict[str, Any]:
    return params.model_dump(exclude_unset=True, exclude={"confirm", "payment_method"})


@api.post(
    "/v1/payment_intents",
    params=PaymentIntentCreate,
    returns="payment_intent",
    summary="Create a PaymentIntent",
    tag="PaymentIntents",
)
def create_payment_intent(ctx: Context, params: PaymentIntentCreate) -> dict[str, Any]:
    fields = _fields(params)
    if params.automatic_payment_methods is not None:
        fields["automatic_payment_methods"] = {
            "allow_redirects": params.automatic_payment_methods.allow_redirects or "always",
            "enabled": params.automatic_payment_methods.enabled,
        }
    return domain.create(
        ctx, fields, payment_method=params.payment_method, confirm=bool(params.confirm)
    )


@api.get(
    "/v1/payment_intents/search",
    params=SearchParams,
    returns="search_result",
    summary="Search PaymentIntents",
    tag="PaymentIntents",
)
def search_payment_intents(ctx: Context, params: SearchParams) -> dict[str, Any]:
    return search_object(
        ctx, "payment_intent", params.query, params.limit, params.page, "/v1/payment_intents/search"
    )


@api.get(
    "/v1/payment_intents/{intent}",
    returns="payment_intent",
    summary="Retrieve a PaymentIntent",
    tag="PaymentIntents",
)
def retrieve_payment_intent(ctx: Context, params: Params, intent: str) -> dict[str, Any]:
    return domain.get(ctx, intent)


@api.post(
    "/v1/payment_intents/{intent}",
    params=PaymentIntentUpdate,
    returns="payment_intent",
    summary="Update a PaymentIntent",
    tag="PaymentIntents",
)
def update_payment_intent(ctx: Context, params: PaymentIntentUpdate, intent: str) -> dict[str, Any]:
    return domain.update(ctx, domain.get(ctx, intent), params.model_dump(exclude_unset=True))


@api.get(
    "/v1/payment_intents",
    params=PaymentIntentList,
    returns="list:payment_intent",
    summary="List PaymentIntents",
    tag="PaymentIntents",
)
def list_payment_intents(ctx: Context, params: PaymentIntentList) -> dict[str, Any]:
    return list_object(ctx, "payment_intent", params, "/v1/payment_intents")


@api.post(
    "/v1/payment_intents/{intent}/confirm",
    params=PaymentIntentConfirm,
    returns="payment_intent",
    summary="Confirm a PaymentIntent",
    tag="PaymentIntents",
)
def confirm_payment_intent(
    ctx: Context, params: PaymentIntentConfirm, intent: str
) -> dict[str, Any]:
    pi = domain.get(ctx, intent)
    return domain.confirm(ctx, pi, params.payment_method, params.model_dump(exclude_unset=True))


@api.post(
    "/v1/payment_intents/{intent}/capture",
    params=PaymentIntentCapture,
    returns="payment_intent",
    summary="Capture a PaymentIntent",
    tag="PaymentIntents",
)
def capture_payment_intent(
    ctx: Context, params: PaymentIntentCapture, intent: str
) -> dict[str, Any]:
    pi = domain.get(ctx, intent)
    if params.metadata is not None:
        pi["metadata"] = domain.merge_metadata(pi["metadata"], params.metadata)
    return domain.capture(ctx, pi, params.amount_to_capture)


@api.post(
    "/v1/payment_intents/{intent}/cancel",
    params=PaymentIntentCancel,
    returns="payment_intent",
    summary="Cancel a PaymentIntent",
    tag="PaymentIntents",
)
def cancel_payment_intent(ctx: Context, params: PaymentIntentCancel, intent: str) -> dict[str, Any]:
    return domain.cancel(ctx, domain.get(ctx, intent), params.cancellation_reason)
