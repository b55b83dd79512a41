"""`/v1/webhook_endpoints`. The signing secret is shown once, in the create answer."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ...wire.ids import random_token
from ..api import Context, api
from ..domain.events import public
from ..domain.payment_intents import merge_metadata
from ..params import Bool, ListParams, MetadataParam, Params, ShortText
from .common import fetch, list_object

Url = Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s]+$")]
EventName = Annotated[str, Field(max_length=100, pattern=r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*)?)$")]


class EndpointCreate(Params):
    url: Url
    enabled_events: list[EventName] = Field(min_length=1, max_length=100)
    description: ShortText | None = None
    metadata: MetadataParam | None = None
    api_version: str | None = Field(None, max_length=50)


class EndpointUpdate(Params):
    url: Url | None = None
    enabled_events: list[EventName] | None = Field(None, min_length=1, max_length=100)
    description: ShortText | None = None
    metadata: MetadataParam | None = None
    disabled: Bool | None = None


@api.post(
    "/v1/webhook_endpoints",
    params=EndpointCreate,
    returns="webhook_endpoint",
    summary="Create a webhook endpoint",
    tag="Webhooks",
)
def create_webhook_endpoint(ctx: Context, params: EndpointCreate) -> dict[str, Any]:
    secret = "whsec_" + random_token(32)
    endpoint = {
        "id": ctx.ids.new("we"),
        "object": "webhook_endpoint",
        "api_version": params.api_version,
        "application": None,
        "created": ctx.now(),
        "description": params.description,
        "enabled_events": params.enabled_events,
        "livemode": False,
        "metadata": merge_metadata({}, params.metadata),
        "status": "enabled",
        "url": params.url,
        "_secret": secret,
    }
    ctx.tx.insert(ctx.account_id, endpoint)
    return {**public(endpoint), "secret": secret}


@api.get(
    "/v1/webhook_endpoints/{webhook_endpoint}",
    returns="webhook_endpoint",
    summary="Retrieve a webhook endpoint",
    tag="Webhooks",
)
def retrieve_webhook_endpoint(
    ctx: Context, params: Params, webhook_endpoint: str
) -> dict[str, Any]:
    return fetch(ctx, "webhook_endpoint", webhook_endpoint)


@api.post(
    "/v1/webhook_endpoints/{webhook_endpoint}",
    params=EndpointUpdate,
    returns="webhook_endpoint",
    summary="Update a webhook endpoint",
    tag="Webhooks",
)
def update_webhook_endpoint(
    ctx: Context, params: EndpointUpdate, webhook_endpoint: str
) -> dict[str, Any]:
    endpoint = fetch(ctx, "webhook_endpoint", webhook_endpoint)
    if params.url is not None:
        endpoint["url"] = params.url
    if params.enabled_events is not None:
        endpoint["enabled_events"] = params.enabled_events
    if "description" in params.model_fields_set:
        endpoint["description"] = params.description
    if params.metadata is not None:
        endpoint["metadata"] = merge_metadata(endpoint["metadata"], params.metadata)
    if params.disabled is not None:
        endpoint["status"] = "disabled" if params.disabled else "enabled"
    ctx.tx.update(ctx.account_id, endpoint)
    return endpoint


@api.get(
    "/v1/webhook_endpoints",
    params=ListParams,
    returns="list:webhook_endpoint",
    summary="List webhook endpoints",
    tag="Webhooks",
)
def list_webhook_endpoints(ctx: Context, params: ListParams) -> dict[str, Any]:
    return list_object(ctx, "webhook_endpoint", params, "/v1/webhook_endpoints")


@api.delete(
    "/v1/webhook_endpoints/{webhook_endpoint}",
    returns="deleted",
    summary="Delete a webhook endpoint",
    tag="Webhooks",
)
def delete_webhook_endpoint(ctx: Context, params: Params, webhook_endpoint: str) -> dict[str, Any]:
    fetch(ctx, "webhook_endpoint", webhook_endpoint)
    ctx.tx.delete(ctx.account_id, webhook_endpoint)
    return {"id": webhook_endpoint, "object": "webhook_endpoint", "deleted": True}
